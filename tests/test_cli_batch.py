"""The command line at scale: @lists, stdin, --recursive trees, --dry-run, --report, the
progress bar on a terminal, --scheduler on a 2-process LocalCluster, and watch mode."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from e2compress.batchreport import read_report
from helpers import (
    CORE_FILES,
    REAL_FILES,
    assert_file_within_half_step,
    eman_decode,
    run_cli,
    write_mrc,
)

F32 = np.float32
SUMMARY = re.compile(r"^(\d+) compressed, (\d+) failed, (\d+) skipped$", re.M)
TOTALS = re.compile(r"^total: .+ saved \((\d+\.\d\d)x\), .+ MB/s, (\d+) failed$", re.M)
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def image(seed: int, shape: tuple[int, ...] = (48, 40)) -> np.ndarray:
    return np.random.default_rng(seed).normal(3.0, 1.0, shape).astype(F32)


def test_list_file_and_stdin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    imgs = {f"f{k}.mrc": image(k) for k in range(4)}
    for name, data in imgs.items():
        write_mrc(tmp_path / name, data)
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "list.txt").write_text(
        f"# movies\n{tmp_path / 'f0.mrc'}\n\n{tmp_path / 'f1.mrc'}\n"
    )
    monkeypatch.setattr(
        sys, "stdin", io.StringIO(f"{tmp_path / 'f2.mrc'}\n{tmp_path / 'f3.mrc'}\n")
    )
    rc, stdout, err = run_cli(
        capsys, "--bits", "6", "--outpath", out, f"@{tmp_path / 'list.txt'}", "-"
    )
    assert (rc, err) == (0, "")
    assert SUMMARY.search(stdout).groups() == ("4", "0", "0")  # type: ignore[union-attr]
    for name, data in imgs.items():
        assert_file_within_half_step(out / name.replace(".mrc", ".hdf"), [data])


def test_recursive_tree_is_mirrored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = tmp_path / "session"
    data = {
        "a.mrc": image(1),
        "grid1/b.mrc": image(2),
        "grid1/sq2/c.mrc": image(3),
        "grid1/gain.mrc": image(4),
    }
    for rel, arr in data.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        write_mrc(tree / rel, arr)
    (tree / "grid1" / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    out.mkdir()
    rc, stdout, err = run_cli(
        capsys, "--recursive", tree, "--exclude", "gain*", "--outpath", out, "-v", "1"
    )
    assert (rc, err) == (0, "")
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a.hdf", "grid1/b.hdf", "grid1/sq2/c.hdf"]
    for rel in ("a", "grid1/b", "grid1/sq2/c"):
        assert_file_within_half_step(out / f"{rel}.hdf", [data[f"{rel}.mrc"]])
    assert f"Processing {tree / 'grid1/sq2/c.mrc'} -> {out / 'grid1/sq2/c.hdf'}" in stdout
    assert TOTALS.search(stdout) is not None  # -v prints the totals
    assert SUMMARY.search(stdout).groups() == ("3", "0", "0")  # type: ignore[union-attr]


def test_dry_run_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("a.mrc", "b.mrc", "b.tif"):
        write_mrc(tmp_path / name, image(5))
    before = sorted(os.listdir(tmp_path))
    rc, stdout, err = run_cli(capsys, "--dry-run", tmp_path / "a.mrc")
    assert (rc, err) == (0, "")
    assert stdout.splitlines()[0] == f"{tmp_path / 'a.mrc'} -> {tmp_path / 'a.hdf'}"
    assert stdout.splitlines()[-1].startswith("dry run: 1 inputs, ")
    rc, stdout, _ = run_cli(capsys, "--dry-run", "--recursive", tmp_path, "--include", "*")
    assert rc == 1  # b.mrc and b.tif would both write b.hdf
    assert f"ERROR: {tmp_path / 'b.mrc'}: {tmp_path / 'b.tif'} would also be written" in stdout
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("kind", [".csv", ".json"])
def test_report(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    good = write_mrc(tmp_path / "good.mrc", image(6))
    bad = tmp_path / "bad.mrc"
    bad.write_bytes(b"\0" * 100)
    report = tmp_path / f"report{kind}"
    rc, stdout, _ = run_cli(capsys, "--bits", "5", "--report", report, good, bad)
    assert rc == 1
    rows, totals = read_report(report)
    if kind == ".json":
        (total,) = totals
        assert total["compressed"] == total["failed"] == 1
    by = {Path(r["source"]).name: r for r in rows}
    assert by["good.mrc"]["status"] == "done"
    assert int(by["good.mrc"]["bytes_out"]) == (tmp_path / "good.hdf").stat().st_size
    assert int(by["good.mrc"]["bytes_in"]) == good.stat().st_size
    assert int(by["good.mrc"]["bits"]) == 5
    assert by["bad.mrc"]["status"] == "failed"
    assert str(by["bad.mrc"]["message"]).startswith(str(bad))
    assert TOTALS.search(stdout).groups()[1] == "1"  # type: ignore[union-attr]
    # a rerun appends: the first run's rows stay as they were, the rerun adds its own
    rc, _, _ = run_cli(capsys, "--bits", "5", "--skip-existing", "--report", report, good)
    assert rc == 0
    again, _ = read_report(report)
    assert again[: len(rows)] == rows
    (last,) = again[len(rows) :]
    assert (Path(last["source"]).name, last["status"]) == ("good.mrc", "skipped")
    assert int(last["bytes_out"]) == (tmp_path / "good.hdf").stat().st_size


def test_bad_batch_options_do_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_mrc(tmp_path / "a.mrc", image(7))
    cases = [
        (["@" + str(tmp_path / "missing.txt")], "cannot read the list file"),
        (["--recursive", tmp_path / "a.mrc"], "--recursive needs a readable directory"),
        (["--report", tmp_path / "r.txt", tmp_path / "a.mrc"], ".csv or a .json"),
        (["--scheduler", "x:1", "--cluster", "slurm", tmp_path / "a.mrc"], "not both"),
    ]
    for argv, message in cases:
        rc, _, err = run_cli(capsys, *argv)
        assert rc == 2
        assert message in err
        assert len(err.splitlines()) == 1, err
    assert sorted(os.listdir(tmp_path)) == ["a.mrc"]


def test_cluster_without_its_batch_system_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("distributed")
    monkeypatch.setenv("PATH", str(tmp_path))
    write_mrc(tmp_path / "a.mrc", image(8))
    rc, _, err = run_cli(capsys, "--cluster", "slurm", "--cores", "4", tmp_path / "a.mrc")
    assert rc == 2
    assert err == (
        "e2compress: error: --cluster slurm: sbatch is not on PATH (run on a SLURM submit host)\n"
    )


def test_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    """stderr a pseudo-terminal: a bar with files, bytes and rate; a pipe: no bar."""
    for k in range(3):
        write_mrc(tmp_path / f"m{k}.mrc", image(k, (3, 300, 200)))
    argv = [sys.executable, "-m", "e2compress", "--bits", "5", *(f"m{k}.mrc" for k in range(3))]
    main_fd, term_fd = pty.openpty()
    fcntl.ioctl(term_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(argv, cwd=tmp_path, env=ENV, stderr=term_fd, stdout=subprocess.DEVNULL)
    os.close(term_fd)
    seen = b""
    while True:
        ready, _, _ = select.select([main_fd], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(main_fd, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        seen += chunk
    os.close(main_fd)
    assert proc.wait(60) == 0
    text = seen.decode()
    assert "3/3 files" in text
    assert re.search(r"\d+(\.\d+)?[kM]?B/s", text), text
    piped = subprocess.run(argv, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0
    assert piped.stderr == ""


# --------------------------------------------------------------------------- Dask


@pytest.fixture
def scheduler() -> Iterator[str]:
    """A LocalCluster of two worker processes, one thread each."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=50
    ) as cluster:
        yield cluster.scheduler_address


def test_scheduler_batch_of_real_and_synthetic_files(
    scheduler: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--scheduler: every output has the same content as the local run's, and the report
    has a row per file naming one of the two workers."""
    syn = [write_mrc(tmp_path / f"syn{k}.mrc", image(20 + k, (2, 400, 300))) for k in range(3)]
    real = [p for p in CORE_FILES if not p.name.endswith(".bz2")]  # its .map twin: one output
    shared = [p for p in REAL_FILES if p.stat().st_size < 2_000_000][:4]
    by_name: dict[str, Path] = {}
    for p in [*real, *shared, *syn]:  # one file per name: one output each
        by_name.setdefault(p.name, p)
    sources = list(by_name.values())
    dask_out, local_out = tmp_path / "dask", tmp_path / "local"
    dask_out.mkdir()
    local_out.mkdir()
    report = tmp_path / "report.json"
    common = ["--bits", "6", "--nooutliers"]
    rc, stdout, err = run_cli(
        capsys,
        *common,
        "--outpath",
        dask_out,
        "--scheduler",
        scheduler,
        "--report",
        report,
        *sources,
    )
    assert rc == 0, err
    rc, _, err = run_cli(capsys, *common, "--outpath", local_out, *sources)
    assert rc == 0, err
    files, (totals,) = read_report(report)
    assert len(files) == len(sources)
    workers = {row["worker"] for row in files}
    assert len(workers) == 2
    assert all(w.startswith("tcp://") for w in workers)
    for row in files:
        out = Path(row["output"])
        assert out.parent == dask_out
        assert row["status"] == "done"
        assert row["bytes_out"] == out.stat().st_size
        twin = local_out / out.name
        a, b = eman_decode(out), eman_decode(twin)
        assert [m for _, m in a] == [m for _, m in b]
        for (va, _), (vb, _) in zip(a, b, strict=True):
            assert np.array_equal(va, vb, equal_nan=True)
        ((_, m0), *_) = a
        assert m0 is not None
        assert (row["bits"], row["rmin"]) == (6, min(m[1] for _, m in a if m))
    assert totals["compressed"] == len(sources)
    assert totals["bytes_out"] == sum(Path(r["output"]).stat().st_size for r in files)
    assert TOTALS.search(stdout) is not None


# --------------------------------------------------------------------------- watch


HANG_SECONDS = 120.0


def wait_until(check: object, what: str, seconds: float = HANG_SECONDS) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {seconds} s")


class Lines:
    """A process's stdout, line by line, read by a thread (so a test can wait for a line)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.proc = proc
        assert proc.stdout is not None
        self.thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self.thread.start()

    def _read(self, stream: io.TextIOBase) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str) -> None:
        wait_until(lambda: text in self.lines or self.proc.poll() is not None, repr(text))
        assert text in self.lines, (text, self.lines)

    def rest(self) -> list[str]:
        """Every line, once the process has exited."""
        self.thread.join(HANG_SECONDS)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return self.lines


def test_watch_command_stops_on_sigterm_and_restarts_without_redoing(tmp_path: Path) -> None:
    pytest.importorskip("watchdog")
    watched, out = tmp_path / "in", tmp_path / "out"
    watched.mkdir()
    out.mkdir()
    data = image(30)
    argv = [sys.executable, "-m", "e2compress", "watch", str(watched), "--outpath", str(out)]
    argv += ["--settle", "0.5", "--poll", "0.2", "--bits", "6", "-v", "1"]
    first = subprocess.Popen(
        argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        write_mrc(watched / ".a.mrc", data)  # hidden while written: not watched
        os.replace(watched / ".a.mrc", watched / "a.mrc")
        wait_until(lambda: (out / "a.hdf").exists(), "the output")
    finally:
        first.send_signal(signal.SIGTERM)
        stdout, stderr = first.communicate(timeout=HANG_SECONDS)
    assert first.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert (
        stdout.splitlines()[-1]
        == "e2compress watch: interrupted by SIGTERM: 1 compressed, 0 failed, 0 skipped"
    )
    assert_file_within_half_step(out / "a.hdf", [data])
    before = (out / "a.hdf").stat()
    again = subprocess.Popen(
        argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines = Lines(again)
    try:
        lines.wait_for(f"Skipping {watched / 'a.mrc'}: {out / 'a.hdf'} is complete")
    finally:
        again.send_signal(signal.SIGINT)
        again.wait(HANG_SECONDS)
    assert again.stderr is not None
    with again.stderr:
        stderr = again.stderr.read()
    assert again.returncode == 130, stderr
    assert lines.rest()[-1].endswith(": 0 compressed, 0 failed, 1 skipped")
    after = (out / "a.hdf").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_watch_needs_an_outpath(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(capsys, "watch", tmp_path)
    assert rc == 2
    assert err == "e2compress: error: watch needs --outpath (an existing directory)\n"


def run_list(tmp_path: Path, n: int) -> tuple[int, int, int]:
    """The CLI on a list of ``n`` missing files: (exit status, peak RSS in kB, most open
    files seen while it ran), sampled from /proc (``ru_maxrss`` would include the RSS of
    this process, which forked the child)."""
    lst = tmp_path / f"list{n}.txt"
    with open(lst, "w") as fh:
        for k in range(n):
            fh.write(f"{tmp_path}/g{k % 97}/m{k:06d}.mrc\n")
    argv = [sys.executable, "-m", "e2compress", "--outpath", str(tmp_path), f"@{lst}"]
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    most_fds = peak = 0
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            most_fds = max(most_fds, len(os.listdir(f"/proc/{proc.pid}/fd")))
            with open(f"/proc/{proc.pid}/status") as fh:
                hwm = [ln for ln in fh if ln.startswith("VmHWM:")]
            peak = max(peak, int(hwm[0].split()[1]) if hwm else 0)
        except (OSError, IndexError, ValueError):  # it exited between two reads
            pass
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        raise AssertionError("the batch did not finish within 300 s")
    return proc.returncode, peak, most_fds


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_100000_listed_files_keep_memory_and_open_files_flat(tmp_path: Path) -> None:
    """Every one of 100,000 listed inputs is run (each fails: missing), with the peak
    memory and the open files of a 1,000-path run."""
    rc_small, rss_small, fds_small = run_list(tmp_path, 1_000)
    rc, rss, fds = run_list(tmp_path, 100_000)
    assert rc_small == rc == 1
    assert fds <= fds_small + 4
    assert (rss - rss_small) / 1024 < 16, (rss, rss_small)


def test_dask_scheduler_and_worker_started_from_the_venv_bin(tmp_path: Path) -> None:
    """The route in docs/facility.md: ``dask scheduler`` and ``dask worker`` run from the same bin/
    as ``e2compress.py`` (scripts there have bin/ first on sys.path, where the console
    script used to shadow the package), then a batch with --scheduler: every file done."""
    pytest.importorskip("distributed")
    bindir = Path(sys.executable).parent
    dask, exe = bindir / "dask", bindir / "e2compress"
    if not (dask.exists() and exe.exists() and (bindir / "e2compress.py").exists()):
        pytest.skip("needs the dask and e2compress console scripts in the venv's bin/")
    data = {f"m{k}.mrc": image(40 + k, (2, 120, 100)) for k in range(4)}
    for name, arr in data.items():
        write_mrc(tmp_path / name, arr)
    out, info = tmp_path / "out", tmp_path / "scheduler.json"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    logs = open(tmp_path / "dask.log", "w")  # noqa: SIM115 (closed below)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            subprocess.Popen(
                [
                    dask,
                    "scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--no-dashboard",
                    "--scheduler-file",
                    str(info),
                ],
                cwd=tmp_path,
                env=env,
                stdout=logs,
                stderr=logs,
            )
        )
        wait_until(lambda: info.exists() and info.stat().st_size > 0, "the scheduler file")
        address = json.loads(info.read_text())["address"]  # a free port, chosen by the OS
        procs.append(
            subprocess.Popen(
                [dask, "worker", address, "--nworkers", "2", "--nthreads", "1", "--no-dashboard"],
                cwd=tmp_path,
                env=env,
                stdout=logs,
                stderr=logs,
            )
        )
        proc = subprocess.run(
            [
                exe,
                "--scheduler",
                address,
                "--bits",
                "6",
                "--outpath",
                "out",
                "--report",
                "r.csv",
                "--settle",
                "0",
                *data,
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,  # hang guard: a batch that never finishes fails the test
        )
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(60)
        logs.close()
    assert proc.returncode == 0, proc.stderr + (tmp_path / "dask.log").read_text()[-3000:]
    assert "Traceback" not in proc.stderr
    assert SUMMARY.search(proc.stdout).groups() == ("4", "0", "0")  # type: ignore[union-attr]
    with open(tmp_path / "r.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(Path(r["source"]).name for r in rows if r["status"] == "done") == sorted(data)
    assert all(r["worker"].startswith("tcp://127.0.0.1:") for r in rows)
    for name, arr in data.items():
        assert_file_within_half_step(out / name.replace(".mrc", ".hdf"), [arr])


# --------------------------------------------------------------------------- issue 16


def test_dry_run_checks_that_each_input_exists_and_is_readable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_mrc(tmp_path / "good.mrc", image(50))
    locked = write_mrc(tmp_path / "locked.mrc", image(51))
    locked.chmod(0)
    (tmp_path / "dir.mrc").mkdir()
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{tmp_path / n}\n" for n in ("good.mrc", "gone.mrc", "dir.mrc")))
    try:
        rc, stdout, err = run_cli(capsys, "--dry-run", f"@{lst}", locked)
    finally:
        locked.chmod(0o644)
    assert (rc, err) == (1, "")
    lines = stdout.splitlines()
    assert lines[0] == f"{good} -> {tmp_path / 'good.hdf'}"
    assert lines[1] == f"ERROR: {tmp_path / 'gone.mrc'}: no such file"
    assert lines[2] == f"ERROR: {tmp_path / 'dir.mrc'}: not a regular file"
    if os.geteuid() != 0:  # root reads anything
        assert lines[3] == f"ERROR: {locked}: not readable (permission denied)"
    assert lines[-1].startswith("dry run: 4 inputs, ")
    assert " with a problem" in lines[-1]
    rc, stdout, _ = run_cli(capsys, "--dry-run", good)
    assert rc == 0
    assert "problem" not in stdout


def test_mkdir_creates_the_outpath(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = image(52)
    src = write_mrc(tmp_path / "a.mrc", data)
    out = tmp_path / "new" / "deeper"
    rc, _, err = run_cli(capsys, "--outpath", out, src)
    assert rc == 2
    assert "--outpath must be an existing, writable directory" in err
    rc, stdout, _ = run_cli(capsys, "--dry-run", "--mkdir", "--outpath", out, src)
    assert rc == 0
    assert stdout.splitlines()[0] == f"{src} -> {out / 'a.hdf'}"
    assert not (tmp_path / "new").exists()  # a dry run creates nothing
    rc, _, err = run_cli(capsys, "--bits", "6", "--mkdir", "--outpath", out, src)
    assert (rc, err) == (0, "")
    assert_file_within_half_step(out / "a.hdf", [data])


def test_nul_separated_lists_as_from_find_print0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``find -print0 | e2compress -`` and a NUL-separated @LIST: paths taken verbatim
    (a name may hold spaces, a '#' or even a newline), as ``xargs -0`` does."""
    names = ["a b.mrc", "#c.mrc", "new\nline.mrc", "d.mrc"]
    imgs = {n: image(60 + k) for k, n in enumerate(names)}
    for n, arr in imgs.items():
        write_mrc(tmp_path / n, arr)
    out1, out2 = tmp_path / "o1", tmp_path / "o2"
    out1.mkdir()
    out2.mkdir()
    listed = "".join(f"{tmp_path / n}\0" for n in names)
    monkeypatch.setattr(sys, "stdin", io.StringIO(listed))
    rc, stdout, err = run_cli(capsys, "--bits", "6", "--outpath", out1, "-")
    assert (rc, err) == (0, "")
    assert SUMMARY.search(stdout).groups() == ("4", "0", "0")  # type: ignore[union-attr]
    (tmp_path / "list0").write_text(listed)
    rc, _, err = run_cli(capsys, "--bits", "6", "--outpath", out2, f"@{tmp_path / 'list0'}")
    assert (rc, err) == (0, "")
    for n, arr in imgs.items():
        assert_file_within_half_step(out1 / n.replace(".mrc", ".hdf"), [arr])
        assert_file_within_half_step(out2 / n.replace(".mrc", ".hdf"), [arr])


def test_info_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    """``e2compress info ... | head -1``: no traceback, the status SIGPIPE would give."""
    tif = next(p for p in CORE_FILES if p.suffix == ".tif")
    proc = subprocess.Popen(
        [sys.executable, "-m", "e2compress", "info", str(tif), str(tif), str(tif)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader goes away, as head does
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(60) == 128 + signal.SIGPIPE, err
    assert first.startswith(str(tif).encode())
    assert err == ""


def test_a_batch_into_a_closed_pipe_keeps_its_status(tmp_path: Path) -> None:
    """``e2compress -v 2 ... | head -1``: every file is still compressed, exit 0, no
    traceback or 'Exception ignored' (a guard: the 141 of a subcommand whose reader went
    away must not leak into a batch, which goes on without its stdout)."""
    data = {f"p{k}.mrc": image(80 + k) for k in range(3)}
    for name, arr in data.items():
        write_mrc(tmp_path / name, arr)
    proc = subprocess.Popen(
        [sys.executable, "-m", "e2compress", "-v", "2", "--settle", "0", "--bits", "6", *data],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert (proc.wait(60), err) == (0, "")
    for name, arr in data.items():
        assert_file_within_half_step(tmp_path / name.replace(".mrc", ".hdf"), [arr])


def test_report_rows_survive_kill_9_and_a_rerun_appends(tmp_path: Path) -> None:
    """Each row is in the report as soon as its file ends: after ``kill -9`` the finished
    files' rows are there, and the rerun adds its own below them."""
    names = ["a0.mrc", *(f"b{k}.mrc" for k in range(4))]
    write_mrc(tmp_path / names[0], image(90))
    for k, name in enumerate(names[1:]):
        write_mrc(tmp_path / name, image(91 + k, (6, 1024, 1024)))
    report = tmp_path / "r.csv"
    argv = [sys.executable, "-m", "e2compress", "--settle", "0", "--bits", "6"]
    argv += ["--report", str(report), *names]

    def done_rows() -> list[dict[str, str]]:
        rows, _ = read_report(report) if report.exists() else ([], [])
        return [r for r in rows if r["status"] == "done"]

    proc = subprocess.Popen(argv, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: done_rows(), "a row in the report while the batch runs")
    finally:
        proc.kill()
        proc.wait(60)
    before, _ = read_report(report)
    assert before
    assert all(r["status"] == "done" for r in before)
    for r in before:
        assert int(r["bytes_out"]) == (tmp_path / r["output"]).stat().st_size
    rc = subprocess.run(
        [*argv, "--skip-existing"], cwd=tmp_path, env=ENV, capture_output=True, timeout=600
    ).returncode
    assert rc == 0
    after, _ = read_report(report)
    assert after[: len(before)] == before  # the killed run's rows stay as they were
    rerun = {r["source"]: r["status"] for r in after[len(before) :]}
    assert sorted(rerun) == sorted(names)
    for r in before:
        assert rerun[r["source"]] == "skipped"
