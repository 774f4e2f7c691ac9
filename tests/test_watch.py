"""Watch mode: files written piece by piece are compressed only once complete, a file
that changes is taken again, and a restart redoes nothing.

Event-driven: the watcher's clock and sleep are the test's (time moves only when the test
says), its file events are fed by the test (``notify``, as watchdog would), and the
writers write between the watcher's looks. Real waits are hang guards only.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("watchdog")

from e2compress.batch import Item
from e2compress.deletion import Deletion
from e2compress.drive import Settings, drive
from e2compress.executor import Cancel
from e2compress.options import Options
from e2compress.runner import FileResult, LocalRunner, Tick
from e2compress.watch import Watcher, incomplete
from helpers import assert_within_half_step, eman_decode, write_mrc

F32 = np.float32
HANG_SECONDS = 120.0
SETTLE = 30.0  # test time: it passes only when the test moves the clock


class Clock:
    """A monotonic clock that moves only when told (``sleep`` moves it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Results:
    """A printer (see :class:`e2compress.drive.Printer`) that keeps the results."""

    def __init__(self) -> None:
        self.results: list[FileResult] = []

    def tick(self, t: Tick) -> None:
        pass

    def result(self, r: FileResult) -> None:
        self.results.append(r)

    def deletion(self, d: Deletion) -> None:
        raise AssertionError("nothing is deleted in watch mode")


def frames(seed: int, n: int = 4, shape: tuple[int, int] = (96, 80)) -> np.ndarray:
    return np.random.default_rng(seed).normal(100.0, 10.0, (n, *shape)).astype(F32)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    watched, out = tmp_path / "microscope", tmp_path / "out"
    (watched / "grid1").mkdir(parents=True)
    out.mkdir()
    return watched, out


def outputs(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file())


def watcher(watched: Path, out: Path, clock: Clock, options: Options, **kw: object) -> Watcher:
    return Watcher(
        watched, outpath=out, settle=SETTLE, options=options, clock=clock, observe=False, **kw
    )


def run(w: Watcher, items: Iterator[Item | None], options: Options) -> list[FileResult]:
    """Drive ``items`` to their end with one local file thread; the results."""
    printer = Results()
    with w:
        drive(
            items,
            Settings(options=options),
            LocalRunner(threads=1),
            Cancel(),
            printer=printer,
            finished=w.finished,
        )
    return printer.results


def pages_within_half_step(path: Path, originals: np.ndarray) -> None:
    decoded = eman_decode(path)
    assert len(decoded) == len(originals)  # every page, not those written when first seen
    for (values, m), orig in zip(decoded, originals, strict=True):
        assert m is not None
        assert_within_half_step(orig, values, m)


def test_pieces_are_not_taken_until_complete_and_a_restart_redoes_nothing(
    dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    """An MRC copied header first, then frame by frame (as a camera does), and a TIFF
    appended page by page (valid but short until the end): while either grows, with the
    settle time passing between pieces but never since the last change, nothing is taken;
    once both stay unchanged for the settle time, both are compressed whole."""
    watched, out = dirs
    movie, pages = frames(1), frames(2, 5)
    data = write_mrc(tmp_path / "full.mrc", movie).read_bytes()
    mrc, tif = watched / "grid1" / "movie.mrc", watched / "grid1" / "stack.tif"
    options = Options(bits=8)
    clock = Clock()
    w = watcher(watched, out, clock, options, rescan=float("inf"))

    def growing(path: Path) -> bool:
        """Whether anything was written for ``path`` (its output or temporary file)."""
        return any(p.name.lstrip(".").startswith(path.stem + ".") for p in outputs(out))

    def look(path: Path) -> list[Item]:
        """The writer changed ``path``; time passes, but less than the settle time: what
        is ready now is not ``path``."""
        w.notify(path)
        ready = w.ready()  # the change is seen at once
        clock.sleep(SETTLE * 0.6)
        ready += w.ready()
        assert all(item.source != path for item in ready)
        assert not growing(path)
        return ready

    def stream() -> Iterator[Item | None]:
        frame = (len(data) - 1024) // 4
        with open(mrc, "wb") as fh:
            for start in [0, 1024] + [1024 + k * frame for k in range(1, 4)]:
                fh.write(data[start : 1024 if start == 0 else start + frame])
                fh.flush()
                yield from look(mrc)
        with tifffile.TiffWriter(tif) as tw:
            for page in pages:
                tw.write(page, contiguous=False)
                tw._fh.flush()
                yield from look(tif)
        w.notify(tif)  # closing may have written more
        yield from w.ready()
        clock.sleep(SETTLE)
        yield from w.ready()

    done = run(w, stream(), options)
    assert sorted((r.given, r.status) for r in done) == [(str(mrc), "done"), (str(tif), "done")]
    assert outputs(out) == [out / "grid1" / "movie.hdf", out / "grid1" / "stack.hdf"]
    ((values, m),) = eman_decode(out / "grid1" / "movie.hdf")  # one volume
    assert values.shape == movie.shape
    assert m is not None
    assert_within_half_step(movie, values, m)
    pages_within_half_step(out / "grid1" / "stack.hdf", pages[:, ::-1])  # TIFF rows flipped

    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in outputs(out)}
    again = watcher(watched, out, clock, options)

    def restart() -> Iterator[Item | None]:
        assert again.ready() == []  # found by the first scan, not settled yet
        clock.sleep(SETTLE)
        yield from again.ready()

    skipped = run(again, restart(), options)
    assert sorted((r.given, r.status) for r in skipped) == [
        (str(mrc), "skipped"),
        (str(tif), "skipped"),
    ]
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in outputs(out)} == before


def test_an_incomplete_file_is_failed_then_taken_again_when_it_changes(
    dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    """A writer that pauses longer than the settle time: the MRC opens short, so it is
    reported (not compressed); when the rest arrives it is taken again."""
    watched, out = dirs
    movie = frames(6, 3)
    data = write_mrc(tmp_path / "full.mrc", movie).read_bytes()
    src = watched / "m.mrc"
    options = Options(bits=8)
    clock = Clock()
    w = watcher(watched, out, clock, options, rescan=float("inf"))

    def stream() -> Iterator[Item | None]:
        src.write_bytes(data[: len(data) // 2])
        w.notify(src)
        assert w.ready() == []
        clock.sleep(SETTLE)
        (early,) = w.ready()
        assert "not complete yet" in early.problem
        yield early
        yield None
        with open(src, "ab") as fh:
            fh.write(data[len(data) // 2 :])
        w.notify(src)
        assert w.ready() == []
        clock.sleep(SETTLE)
        yield from w.ready()

    first, second = run(w, stream(), options)
    assert (first.status, second.status) == ("failed", "done")
    assert first.message.startswith(str(src))
    ((values, m),) = eman_decode(out / "m.hdf")
    assert values.shape == movie.shape
    assert m is not None
    assert_within_half_step(movie, values, m)


def test_a_file_that_changes_is_taken_again(dirs: tuple[Path, Path]) -> None:
    """The watch loop itself (``items``) with the test's clock: the watcher sleeps by
    moving it; the file is replaced once the first result is in, and the run is stopped
    after the second."""
    watched, out = dirs
    src = write_mrc(watched / "a.mrc", frames(3, 1)[0])
    newer = frames(4, 1)[0] * 3
    clock = Clock()
    options = Options(bits=6)

    def nap(seconds: float) -> None:
        """The watcher's sleep: the test's time moves on; a real millisecond lets the file
        thread run (nothing depends on its length)."""
        clock.sleep(seconds)
        time.sleep(0.001)

    w = watcher(watched, out, clock, options, sleep=nap)
    cancel = Cancel()
    guard = threading.Timer(HANG_SECONDS, cancel.set)

    class Replace(Results):
        def result(self, r: FileResult) -> None:
            super().result(r)
            if len(self.results) == 1:
                write_mrc(watched / "tmp.mrc", newer)
                os.replace(watched / "tmp.mrc", src)
                w.notify(src)
            else:
                cancel.set()

    printer = Replace()
    guard.start()
    try:
        with w:
            drive(
                w.items(cancel),
                Settings(options=options),
                LocalRunner(threads=1),
                cancel,
                printer=printer,
                finished=w.finished,
            )
    finally:
        guard.cancel()
    assert [r.status for r in printer.results] == ["done", "done"]
    ((values, m),) = eman_decode(out / "a.hdf")
    assert m is not None
    assert_within_half_step(newer, values, m)


def test_files_are_found_by_events_or_by_the_rescan(dirs: tuple[Path, Path]) -> None:
    """A file made after the start is seen through an event, or else by the next full
    rescan, never otherwise."""
    watched, out = dirs
    clock = Clock()
    w = watcher(watched, out, clock, Options(), rescan=600.0)
    with w:
        a = write_mrc(watched / "a.mrc", np.ones((4, 4), F32))
        b = write_mrc(watched / "b.mrc", np.ones((4, 4), F32))
        w.notify(a)
        assert w.ready() == []
        clock.sleep(SETTLE)
        assert [item.source for item in w.ready()] == [a]  # b: no event, no rescan yet
        clock.sleep(600.0 - SETTLE)
        assert w.ready() == []  # the rescan found b just now
        clock.sleep(SETTLE)
        assert [item.source for item in w.ready()] == [b]


def test_what_is_not_taken(dirs: tuple[Path, Path]) -> None:
    """Hidden and temporary files, other suffixes, excluded names and the output tree."""
    watched, out_inside = dirs[0], dirs[0] / "out"
    out_inside.mkdir()
    for name in (".partial.mrc", "x.hdf.e2compress.tmp", "notes.txt", "gain.mrc", "out/o.mrc"):
        write_mrc(watched / name, np.ones((4, 4), F32))
    write_mrc(watched / "grid1" / "ok.mrc", np.ones((4, 4), F32))
    clock = [0.0]
    w = Watcher(watched, outpath=out_inside, exclude=("gain*",), settle=1, clock=lambda: clock[0])
    with w:
        assert w.ready() == []  # not settled yet
        clock[0] = 2.0
        (item,) = w.ready()
    assert (item.source, item.target, item.make_dirs) == (
        watched / "grid1" / "ok.mrc",
        out_inside / "grid1" / "ok.hdf",
        True,
    )


def test_incomplete_files_are_recognised(tmp_path: Path) -> None:
    full = write_mrc(tmp_path / "f.mrc", frames(5))
    data = full.read_bytes()
    part = tmp_path / "part.mrc"
    part.write_bytes(data[: len(data) - 100])
    assert incomplete(str(full)) == ""
    assert incomplete(str(part)).startswith(str(part))
    head = tmp_path / "head.mrc"
    head.write_bytes(data[:500])
    assert incomplete(str(head))
