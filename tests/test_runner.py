"""Per-file jobs and the local runner: results against the written files, progress ticks,
streaming with a bounded queue, cancellation, and picklable jobs and results."""

from __future__ import annotations

import os
import pickle
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import mrcfile
import numpy as np
import pytest

from e2compress import pipeline
from e2compress.batch import Inputs
from e2compress.executor import Cancel
from e2compress.options import Options
from e2compress.runner import FileResult, Job, LocalRunner, Tick, make_jobs, run_job
from helpers import DATA, eman_decode, write_mrc

F32 = np.float32


def movie(path: Path, frames: int = 3, ny: int = 700, nx: int = 640, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.normal(10.0, 3.0, (frames, ny, nx)).astype(F32)
    write_mrc(path, data)
    return data


def job(src: Path, dst: Path, **kw: object) -> Job:
    return Job(str(src), str(src), str(dst), kw.pop("options", Options(bits=8)), **kw)  # type: ignore[arg-type]


def stored_mapping(path: Path) -> list[tuple[int, float, float, int]]:
    maps = [m for _, m in eman_decode(path)]
    assert all(m is not None for m in maps)
    return maps  # type: ignore[return-value]


def test_done_result_matches_the_written_file(tmp_path: Path) -> None:
    src = DATA / "EMD-3001.map"
    dst = tmp_path / "EMD-3001.hdf"
    result = run_job(job(src, dst, size=src.stat().st_size))
    assert result.status == "done", result.message
    assert result.worker == "local"
    assert result.bytes_in == src.stat().st_size
    assert result.bytes_out == dst.stat().st_size
    assert result.ratio == pytest.approx(src.stat().st_size / dst.stat().st_size)
    ((_bits, rmin, rmax, truncated),) = stored_mapping(dst)
    assert (result.bits, result.rmin, result.rmax, result.truncated) == (8, rmin, rmax, truncated)
    with mrcfile.open(src, permissive=True) as m:
        original = np.asarray(m.data, dtype=F32)
    assert result.rmin <= original.min() < original.max() <= result.rmax  # nothing clamped
    assert result.seconds > 0


def test_stack_range_spans_every_image(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    data = np.stack([rng.normal(k * 10.0, 1.0, (32, 32)) for k in range(4)]).astype(F32)
    src = write_mrc(tmp_path / "s.mrcs", data)
    result = run_job(job(src, tmp_path / "s.hdf"))
    maps = stored_mapping(tmp_path / "s.hdf")
    assert len(maps) == 4
    assert result.rmin == min(m[1] for m in maps)
    assert result.rmax == max(m[2] for m in maps)
    assert result.truncated == sum(m[3] for m in maps) == 0


def test_lossless_has_no_range(tmp_path: Path) -> None:
    result = run_job(job(DATA / "EMD-3001.map", tmp_path / "o.hdf", options=Options(bits=0)))
    assert (result.status, result.bits, result.rmin, result.rmax) == ("done", 0, None, None)


def test_problems_are_results_not_exceptions(tmp_path: Path) -> None:
    missing = run_job(job(tmp_path / "nope.mrc", tmp_path / "nope.hdf"))
    assert missing.status == "failed"
    assert missing.message.startswith(f"{tmp_path / 'nope.mrc'}:")
    bad = tmp_path / "bad.mrc"
    bad.write_bytes(b"\0" * 100)
    assert run_job(job(bad, tmp_path / "bad.hdf")).status == "failed"
    conflict = run_job(job(DATA / "EMD-3001.map", tmp_path / "c.hdf", problem="x: clash"))
    assert (conflict.status, conflict.message) == ("failed", "x: clash")
    repeat = run_job(job(DATA / "EMD-3001.map", tmp_path / "c.hdf", skip="c: given twice"))
    assert (repeat.status, repeat.message) == ("skipped", "c: given twice")
    assert not (tmp_path / "c.hdf").exists()
    assert sorted(os.listdir(tmp_path)) == ["bad.mrc"]


def test_skip_existing_and_mirrored_directories(tmp_path: Path) -> None:
    src = DATA / "EMD-3001.map"
    dst = tmp_path / "a" / "b" / "EMD-3001.hdf"
    assert run_job(job(src, dst)).status == "failed"  # no directory, none made
    assert run_job(job(src, dst, make_dirs=True)).status == "done"
    first = dst.stat().st_mtime_ns
    again = run_job(job(src, dst, skip_existing=True))
    assert again.status == "skipped"
    assert again.message.endswith("is complete")
    assert dst.stat().st_mtime_ns == first


def test_ticks_count_every_pixel_once_in_order(tmp_path: Path) -> None:
    """The compress_file progress hook: monotonic, ending at the file's pixel count."""
    data = movie(tmp_path / "m.mrc", frames=2, ny=4100, nx=2100)  # blocks of 16 MB: > 1 tick
    ticks: list[Tick] = []
    threads: set[int] = set()

    def on_tick(t: Tick) -> None:
        ticks.append(t)
        threads.add(threading.get_ident())

    result = run_job(job(tmp_path / "m.mrc", tmp_path / "m.hdf"), threads=2, on_tick=on_tick)
    assert result.status == "done"
    assert (ticks[0].done, ticks[0].total) == (0, 0)
    counts = [t.done for t in ticks[1:]]
    assert len(counts) > 2
    assert counts == sorted(counts)
    assert len(set(counts)) == len(counts)
    assert counts[-1] == ticks[-1].total == data.size
    assert threads == {threading.get_ident()}  # the thread that called compress_file


def test_jobs_and_results_pickle(tmp_path: Path) -> None:
    j = job(DATA / "EMD-3001.map", tmp_path / "o.hdf", size=3)
    assert pickle.loads(pickle.dumps(j)) == j
    r = run_job(j)
    assert pickle.loads(pickle.dumps(r)) == r


def test_local_runner_streams_with_a_bounded_queue(tmp_path: Path) -> None:
    srcs = [write_mrc(tmp_path / f"f{k}.mrc", np.full((8, 8), k, F32)) for k in range(12)]
    pulled = []

    def jobs() -> Iterator[Job]:
        for s in srcs:
            pulled.append(s)
            yield job(s, s.with_suffix(".hdf"))

    runner = LocalRunner(threads=2)
    results: list[FileResult] = []
    for r in runner.run(jobs(), Cancel()):
        if not results:
            assert len(pulled) <= 2 * runner.files_at_once + 1
        results.append(r)
    assert sorted(r.given for r in results) == sorted(str(s) for s in srcs)
    assert all(r.status == "done" for r in results)
    for k, s in enumerate(srcs):
        ((values, _),) = eman_decode(s.with_suffix(".hdf"))
        assert np.array_equal(values, np.full((8, 8), k, F32))


def test_cancel_stops_the_running_file_and_the_rest_do_not_start(tmp_path: Path) -> None:
    big = tmp_path / "big.mrc"
    movie(big, frames=2, ny=4100, nx=2100)
    small = [write_mrc(tmp_path / f"s{k}.mrc", np.ones((8, 8), F32)) for k in range(3)]
    cancel = Cancel()

    def on_tick(t: Tick) -> None:
        if t.done:  # the first block is written: stop
            cancel.set(15)

    jobs = [job(big, tmp_path / "big.hdf")] + [job(s, s.with_suffix(".hdf")) for s in small]
    runner = LocalRunner(threads=2, files_at_once=1)
    results = {r.given: r for r in runner.run(jobs, cancel, on_tick)}
    assert results[str(big)].status == "stopped"
    assert [results[str(s)].status for s in small] == ["unstarted"] * 3
    leftovers = [p.name for p in tmp_path.iterdir() if p.suffix != ".mrc"]
    assert leftovers == []
    assert not any(p.name.endswith(pipeline.TMP_SUFFIX) for p in tmp_path.iterdir())


def test_make_jobs_from_inputs(tmp_path: Path) -> None:
    root = tmp_path / "in"
    (root / "g").mkdir(parents=True)
    write_mrc(root / "g" / "a.mrc", np.ones((4, 4), F32))
    out = tmp_path / "out"
    out.mkdir()
    with Inputs(recursive=[root], outpath=out) as inputs:
        (only,) = list(make_jobs(inputs, Options(bits=4), verify=True, skip_existing=True))
    assert (only.source, only.target, only.make_dirs) == (
        str(root / "g" / "a.mrc"),
        str(out / "g" / "a.hdf"),
        True,
    )
    assert (only.verify, only.skip_existing, only.options.bits) == (True, True, 4)
    assert only.size == (root / "g" / "a.mrc").stat().st_size
    result = run_job(only)
    assert result.status == "done"
    with h5py.File(out / "g" / "a.hdf", "r") as f:
        assert f["MDF/images/0/image"].shape == (4, 4)


def test_heartbeats_hand_back_finished_files(tmp_path: Path) -> None:
    """A None from the job source (watch mode: nothing new) returns the finished results
    at once; the source here waits for the first one before giving the second job."""
    a = write_mrc(tmp_path / "a.mrc", np.ones((8, 8), F32))
    b = write_mrc(tmp_path / "b.mrc", np.ones((8, 8), F32))
    got: list[FileResult] = []

    def jobs() -> Iterator[Job | None]:
        yield job(a, tmp_path / "a.hdf")
        end = time.monotonic() + 60
        while not got and time.monotonic() < end:
            yield None
            time.sleep(0.01)
        assert got, "no result came back on a heartbeat"
        yield job(b, tmp_path / "b.hdf")

    for r in LocalRunner(threads=2).run(jobs(), Cancel()):
        got.append(r)
    assert [(r.given, r.status) for r in got] == [(str(a), "done"), (str(b), "done")]
