"""Dask execution: a 2-process LocalCluster compresses real and synthetic files exactly as a
local run does, survives a worker killed mid-file, and dask-jobqueue gets our settings."""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("distributed")

import dask.config
from distributed import Client, LocalCluster

from e2compress import pipeline
from e2compress.cluster import DaskRunner, jobqueue_cluster, load_config
from e2compress.errors import E2CompressError
from e2compress.executor import Cancel
from e2compress.options import Options
from e2compress.runner import FileResult, Job, Tick, run_job
from helpers import (
    CORE_FILES,
    assert_file_within_half_step,
    eman_decode,
    run_cli,
    temporaries,
    write_mrc,
)

F32 = np.float32
HANG_SECONDS = 180


@pytest.fixture
def client() -> Iterator[Client]:
    """Two worker processes with one thread each (the CI machine has two cores)."""
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # a free port: never clash with another cluster
            silence_logs=50,
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


def run_guarded(runner: DaskRunner, jobs: list[Job], on_tick: Any = None) -> list[FileResult]:
    """runner.run with a hang guard: the batch is cancelled after HANG_SECONDS."""
    cancel = Cancel()
    guard = threading.Timer(HANG_SECONDS, cancel.set)
    guard.start()
    try:
        results = list(runner.run(jobs, cancel, on_tick))
    finally:
        guard.cancel()
    assert not cancel.is_set(), "the batch hung"
    return results


def synthetic(tmp_path: Path, n: int, shape: tuple[int, ...]) -> list[tuple[Path, np.ndarray]]:
    out = []
    for k in range(n):
        data = np.random.default_rng(k).normal(5.0 * k, 2.0, shape).astype(F32)
        out.append((write_mrc(tmp_path / f"syn{k}.mrc", data), data))
    return out


def assert_same_content(a: Path, b: Path) -> None:
    """Decoded images and stored mappings equal (HDF5 files differ in their mtimes)."""
    da, db = eman_decode(a), eman_decode(b)
    assert len(da) == len(db)
    for (va, ma), (vb, mb) in zip(da, db, strict=True):
        assert ma == mb
        assert np.array_equal(va, vb, equal_nan=True)


def test_batch_on_a_local_cluster_matches_the_local_run(client: Client, tmp_path: Path) -> None:
    out, ref = tmp_path / "out", tmp_path / "ref"
    out.mkdir()
    ref.mkdir()
    sources = list(CORE_FILES) + [p for p, _ in synthetic(tmp_path, 4, (2, 600, 500))]
    options = Options(bits=5, nooutliers=True)
    jobs = [
        Job(p.name, str(p), str(out / f"{p.name}.hdf"), options, size=p.stat().st_size)
        for p in sources
    ]
    jobs.append(Job("gone.mrc", str(tmp_path / "gone.mrc"), str(out / "gone.hdf"), options))
    ticks: list[Tick] = []
    lock = threading.Lock()

    def on_tick(t: Tick) -> None:
        with lock:
            ticks.append(t)

    results = {r.given: r for r in run_guarded(DaskRunner(client), jobs, on_tick)}
    workers = set(client.scheduler_info()["workers"])
    assert len(results) == len(jobs)
    gone = results.pop("gone.mrc")
    assert gone.status == "failed"
    assert gone.message.startswith(f"{tmp_path / 'gone.mrc'}: ")
    assert gone.worker in workers
    for job in jobs[:-1]:
        r = results[job.given]
        assert r.status == "done", r.message
        assert r.worker in workers
        local = run_job(Job(job.given, job.source, str(ref / Path(job.target).name), options))
        assert_same_content(Path(job.target), Path(local.target))
        assert (r.bytes_in, r.bits, r.rmin, r.rmax, r.truncated) == (
            local.bytes_in,
            local.bits,
            local.rmin,
            local.rmax,
            local.truncated,
        )
        assert r.bytes_out == Path(job.target).stat().st_size
    assert {r.worker for r in results.values()} == workers  # both workers had files
    finished = {t.given for t in ticks if t.total and t.done == t.total}
    assert finished <= set(results)
    assert finished  # per-file progress came back from the workers
    assert not [p for p in os.listdir(out) if p.endswith(pipeline.TMP_SUFFIX)]


def test_a_worker_killed_mid_file_is_retried_elsewhere(client: Client, tmp_path: Path) -> None:
    """SIGKILL the worker writing a file: Dask reruns that task on another worker; the
    deterministic temporary file is reused and every output is complete and right."""
    out = tmp_path / "out"
    out.mkdir()
    files = synthetic(tmp_path, 6, (3, 2600, 2000))  # ~62 MB each: seconds on one thread
    options = Options(bits=6)
    jobs = [Job(p.name, str(p), str(out / f"{p.stem}.hdf"), options, verify=True) for p, _ in files]
    runner = DaskRunner(client)
    results: list[FileResult] = []
    worker = threading.Thread(target=lambda: results.extend(run_guarded(runner, jobs)))
    worker.start()
    killed: tuple[str, str] | None = None
    deadline = time.monotonic() + 120
    while killed is None and time.monotonic() < deadline:
        for tmp in temporaries(out):
            if tmp.stat().st_size == 0:
                continue
            name = tmp.name[1:].removesuffix(pipeline.TMP_SUFFIX).removesuffix(".hdf")
            for address, keys in client.processing().items():
                if any(str(k).startswith(f"e2compress-{name}.mrc-") for k in keys):
                    pid = client.run(os.getpid, workers=[address])[address]
                    os.kill(pid, signal.SIGKILL)
                    killed = (address, f"{name}.mrc")
                    break
            if killed:
                break
        time.sleep(0.02)
    worker.join(HANG_SECONDS + 30)
    assert killed is not None, "no file was seen being written"
    assert not worker.is_alive()
    by_name = {r.given: r for r in results}
    assert sorted(by_name) == sorted(p.name for p, _ in files)
    assert all(r.status == "done" for r in results), [r.message for r in results]
    assert by_name[killed[1]].worker != killed[0]  # finished by another worker
    for p, data in files:
        assert_file_within_half_step(out / f"{p.stem}.hdf", [data])
    assert temporaries(out) == []


def test_cancel_before_the_batch_submits_nothing(client: Client, tmp_path: Path) -> None:
    cancel = Cancel()
    cancel.set(2)
    jobs = [Job("a", "a", str(tmp_path / "a.hdf"), Options())]
    (r,) = DaskRunner(client).run(jobs, cancel)
    assert r.status == "unstarted"
    assert all(not keys for keys in client.processing().values())


def tifffile_quiet() -> bool:
    """Whether tifffile's logger has a NullHandler (run on a worker)."""
    return any(isinstance(h, logging.NullHandler) for h in logging.getLogger("tifffile").handlers)


def test_workers_quiet_tifffile_as_the_command_line_does(client: Client) -> None:
    """The chunk-pool plugin gives each worker process tifffile's NullHandler (the
    library installs none at import)."""
    client.run(importlib.import_module, "e2compress.cluster")
    assert not any(client.run(tifffile_quiet).values())
    DaskRunner(client)
    quiet = client.run(tifffile_quiet)
    assert len(quiet) == 2
    assert all(quiet.values())


# --------------------------------------------------------------------------- dask-jobqueue


def need_jobqueue() -> None:
    """Skip without dask-jobqueue (found, not imported: importing it sets a SIGINT handler,
    which e2compress.cluster undoes)."""
    if importlib.util.find_spec("dask_jobqueue") is None:
        pytest.skip("dask-jobqueue is not installed")


def fake_batch_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for cmd in ("sbatch", "squeue", "scancel"):
        exe = bin_dir / cmd
        exe.write_text("#!/bin/sh\necho 'Submitted batch job 1'\n")
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")


def test_slurm_job_script_has_our_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    need_jobqueue()
    fake_batch_system(tmp_path, monkeypatch)
    cluster = jobqueue_cluster("slurm", queue="em", cores=8, memory="32GB", walltime="02:00:00")
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH -p em" in script
    assert "#SBATCH -n 1" in script
    assert "#SBATCH --cpus-per-task=8" in script
    assert "#SBATCH --mem=30G" in script  # 32 GB as GiB, as dask-jobqueue writes it
    assert "#SBATCH -t 02:00:00" in script
    assert "--nthreads 8" in script  # one worker process using the job's 8 cores
    assert "--nworkers" not in script


def test_slurm_settings_from_a_dask_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need_jobqueue()
    fake_batch_system(tmp_path, monkeypatch)
    conf = tmp_path / "jobqueue.yaml"
    conf.write_text(
        "jobqueue:\n  slurm:\n    cores: 4\n    memory: 8GB\n    processes: 2\n"
        "    queue: short\n    account: cryoem\n"
    )
    with dask.config.set(load_config(conf)):
        cluster = jobqueue_cluster("slurm", walltime="00:30:00")
        try:
            script = cluster.job_script()
        finally:
            cluster.close()
    assert "#SBATCH -p short" in script
    assert "#SBATCH -A cryoem" in script
    assert "#SBATCH -t 00:30:00" in script
    assert "--nworkers 2" in script  # the file's processes win over our default of 1
    assert "--nthreads 2" in script


def test_cluster_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    need_jobqueue()
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(E2CompressError, match=r"^cluster='slurm': sbatch is not on PATH"):
        jobqueue_cluster("slurm", cores=2, memory="1GB")
    with pytest.raises(E2CompressError, match="unknown cluster kind"):
        jobqueue_cluster("kubernetes")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(E2CompressError, match="YAML mapping"):
        load_config(bad)
    assert (
        load_config(tmp_path / "empty.yaml" if (tmp_path / "empty.yaml").touch() is None else bad)
        == {}
    )


def test_heartbeats_hand_back_finished_files(client: Client, tmp_path: Path) -> None:
    """A job source with nothing new (watch mode) yields None: the results finished so far
    come back at once, before any further job (the source here waits for them)."""
    (src, data), (src2, _) = synthetic(tmp_path, 2, (64, 64))
    got: list[FileResult] = []

    def jobs() -> Iterator[Job | None]:
        yield Job(src.name, str(src), str(tmp_path / "a.hdf"), Options(bits=8))
        end = time.monotonic() + 60
        while not got and time.monotonic() < end:
            yield None
            time.sleep(0.02)
        assert got, "no result came back on a heartbeat"
        yield Job(src2.name, str(src2), str(tmp_path / "b.hdf"), Options(bits=8))

    for r in DaskRunner(client).run(jobs(), Cancel()):
        got.append(r)
    assert [(r.given, r.status) for r in got] == [(src.name, "done"), (src2.name, "done")]
    assert_file_within_half_step(tmp_path / "a.hdf", [data], bits=8)


def test_no_worker_ever_joining_is_said_and_times_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A scheduler whose workers never start (jobs stuck in the queue): the CLI says it is
    waiting for workers, then gives up with one line and compresses nothing."""
    src = write_mrc(tmp_path / "a.mrc", np.zeros((8, 8), F32))
    with LocalCluster(
        n_workers=0, processes=False, dashboard_address=":0", silence_logs=50
    ) as cluster:
        address = cluster.scheduler_address
        rc, _, err = run_cli(capsys, "--scheduler", address, "--worker-timeout", "1", src)
    assert rc == 2
    lines = err.splitlines()
    assert lines[0] == (
        f"e2compress: waiting for Dask workers to join the scheduler {address} (at most 1 s)"
    )
    assert lines[1].startswith(f"e2compress: error: no Dask worker joined the scheduler {address}")
    assert "within 1 s" in lines[1]
    assert len(lines) == 2
    assert not (tmp_path / "a.hdf").exists()
