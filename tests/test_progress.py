"""Batch progress: byte accounting, log lines off a terminal (by -v level), bars on one."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from e2compress import compress_file
from e2compress.options import Options
from e2compress.progress import Progress, human_size
from e2compress.runner import FileResult, Job, Tick
from helpers import write_mrc


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def result(given: str, nbytes: int, status: str = "done") -> FileResult:
    return FileResult(given, given, given + ".hdf", status, bytes_in=nbytes)


def test_bytes_are_credited_from_ticks_then_results() -> None:
    p = Progress(2, 3000, stream=io.StringIO(), bar=False)
    p.tick(Tick("a", "a.hdf", 0, 0, size=1000))
    assert p.credited == 0
    p.tick(Tick("a", "a.hdf", 25, 100, size=1000))
    assert p.credited == 250
    p.tick(Tick("a", "a.hdf", 100, 100, size=1000))
    p.done(result("a", 1000))
    assert (p.credited, p.finished) == (1000, 1)
    p.done(result("b", 2000, "failed"))  # a file that never ticked
    assert (p.credited, p.finished) == (3000, 2)


def test_log_lines_every_interval_at_verbose_1() -> None:
    clock = Clock()
    out = io.StringIO()
    p = Progress(4, 4_000_000_000, stream=out, bar=False, verbose=1, interval=30, clock=clock)
    clock.now += 10
    p.tick(Tick("a", "a.hdf", 1, 2, size=1_000_000_000))
    assert out.getvalue() == ""  # not yet 30 s
    clock.now += 30  # 40 s, 2 GB of 4 done: 50 MB/s, 2 GB left: 40 s
    p.tick(Tick("a", "a.hdf", 2, 2, size=2_000_000_000))
    assert out.getvalue() == ("progress: 0/4 files, 2.0 GB/4.0 GB (50%), 50.0 MB/s, ETA 0:00:40\n")
    clock.now += 5
    p.done(result("a", 2_000_000_000))
    assert out.getvalue().count("\n") == 1


def test_quiet_at_verbose_0_off_a_terminal() -> None:
    clock = Clock()
    out = io.StringIO()
    p = Progress(1, 10, stream=out, verbose=0, interval=1, clock=clock)
    assert p.bar is None  # StringIO is not a terminal
    clock.now += 100
    p.tick(Tick("a", "a.hdf", 1, 2, size=10))
    p.done(result("a", 10))
    p.close()
    assert out.getvalue() == ""


def test_bars_on_a_terminal() -> None:
    out = io.StringIO()
    p = Progress(2, 300_000_000, stream=out, bar=True, big=100_000_000)
    p.tick(Tick("big.mrc", "big.hdf", 0, 0, size=250_000_000))
    p.tick(Tick("big.mrc", "big.hdf", 50, 100, size=250_000_000))
    assert set(p._bars) == {"big.mrc"}  # a bar of its own
    assert p.bar.n == 125_000_000
    p.tick(Tick("small.mrc", "small.hdf", 1, 2, size=50_000_000))
    assert set(p._bars) == {"big.mrc"}
    p.done(result("big.mrc", 250_000_000))
    p.done(result("small.mrc", 50_000_000))
    assert p._bars == {}
    assert p.bar.n == p.bar.total == 300_000_000
    with p.writing():
        out.write("a line\n")
    p.close()
    text = out.getvalue()
    assert "2/2 files" in text
    assert "300M/300M" in text
    assert "a line\n" in text


def test_human_size() -> None:
    assert [human_size(n) for n in (0, 999, 1000, 1_234_567, 5e12, 7e15)] == [
        "0 B",
        "999 B",
        "1.0 kB",
        "1.2 MB",
        "5.0 TB",
        "7000.0 TB",
    ]


def test_a_stack_reports_progress_image_by_image(tmp_path: Path) -> None:
    """A stack of small images (a particle stack) counts its pixels as images are
    written, not only at the end (the bar stayed at 0 % for a whole 50k stack)."""
    data = np.random.default_rng(1).normal(0.0, 1.0, (300, 16, 16)).astype(np.float32)
    src = write_mrc(tmp_path / "s.mrcs", data)
    seen: list[tuple[int, int]] = []
    compress_file(src, tmp_path / "s.hdf", bits=5, progress=lambda d, t: seen.append((d, t)))
    total = data.size
    assert {t for _, t in seen} == {total}
    done = [d for d, _ in seen]
    assert done == sorted(done)
    assert done[-1] == total
    assert len({d for d in done if 0 < d < total}) >= 100  # many steps along the way


def test_watch_mode_counts_the_files_as_they_come() -> None:
    """In watch mode the batch's size is not known in advance: each job handed out adds
    to it (it used to print 'progress: 3/0 files')."""
    clock = Clock()
    out = io.StringIO()
    p = Progress(0, 0, stream=out, bar=False, verbose=1, interval=1, clock=clock)
    jobs = [
        Job("a", "a", "a.hdf", Options(), size=100),
        None,
        Job("b", "b", "b.hdf", Options(), size=100),
    ]
    for job in p.counting(jobs):
        if job is not None:
            p.done(result(job.given, 100))
            clock.now += 2
    p.tick(Tick("c", "c.hdf", 0, 0))
    assert out.getvalue().splitlines()[-1].startswith("progress: 2/2 files, 200 B/200 B (100%)")


def test_a_stopped_file_is_not_work_done() -> None:
    p = Progress(2, 3000, stream=io.StringIO(), bar=False)
    p.tick(Tick("a", "a.hdf", 50, 100, size=1000))
    p.done(result("a", 1000, "stopped"))
    p.done(result("b", 2000, "unstarted"))
    assert (p.credited, p.finished) == (0, 2)
    assert "(0%)" in p.line()
