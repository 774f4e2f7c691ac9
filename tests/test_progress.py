"""Batch progress: byte accounting, log lines off a terminal (by -v level), bars on one."""

from __future__ import annotations

import io

from e2compress.progress import Progress, human_size
from e2compress.runner import FileResult, Tick


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
