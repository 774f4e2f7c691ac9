"""Watch mode: files written slowly by another process are compressed only once complete,
a file that changes is taken again, and a restart redoes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("watchdog")

from e2compress.batch import Item
from e2compress.executor import Cancel
from e2compress.options import Options
from e2compress.runner import FileResult, Job, LocalRunner, make_jobs
from e2compress.watch import Watcher, incomplete, watch
from helpers import assert_file_within_half_step, eman_decode, write_mrc

F32 = np.float32
HANG_SECONDS = 60.0
SETTLE = 1.5  # the writer pauses 0.3 s between pieces: well within it

# Writes an MRC (copying a finished one piece by piece: header first, then frames, as a
# camera does) and a TIFF (tifffile appending pages: valid but short until the end); after
# each, a marker file (outside the watched tree) says it is complete.
WRITER = r"""
import sys, time
import numpy as np, tifffile
mrc_src, mrc_dst, tif_dst, pause = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
marks = sys.argv[6]
data = open(mrc_src, "rb").read()
head, frame = 1024, (len(data) - 1024) // 4
with open(mrc_dst, "wb") as out:
    for start in [0, head] + [head + k * frame for k in range(1, 4)]:
        end = head if start == 0 else min(start + frame, len(data))
        out.write(data[start:end]); out.flush(); time.sleep(pause)
open(marks + "/movie.complete", "w").close()
pages = np.load(sys.argv[5])
with tifffile.TiffWriter(tif_dst) as tw:
    for page in pages:
        tw.write(page, contiguous=False); tw._fh.flush(); time.sleep(pause)
open(marks + "/stack.complete", "w").close()
"""


def frames(seed: int, n: int = 4, shape: tuple[int, int] = (96, 80)) -> np.ndarray:
    return np.random.default_rng(seed).normal(100.0, 10.0, (n, *shape)).astype(F32)


class Run:
    """watch() in a thread, its results collected; stop() cancels and joins."""

    def __init__(self, watcher: Watcher, options: Options) -> None:
        self.cancel = Cancel()
        self.results: list[FileResult] = []
        self.lock = threading.Lock()

        def make_job(item: Item) -> Job:
            (job,) = make_jobs([item], options)
            return job

        def on_result(r: FileResult) -> None:
            with self.lock:
                self.results.append(r)

        self.thread = threading.Thread(
            target=watch,
            args=(watcher, LocalRunner(threads=1), make_job, self.cancel, on_result),
            kwargs={"tick": 0.05},
        )
        self.thread.start()

    def wait_for(self, count: int) -> list[FileResult]:
        end = time.monotonic() + HANG_SECONDS
        while time.monotonic() < end:
            with self.lock:
                if len(self.results) >= count:
                    return list(self.results)
            time.sleep(0.05)
        raise AssertionError(f"{count} results did not come within {HANG_SECONDS} s")

    def stop(self) -> None:
        self.cancel.set()
        self.thread.join(HANG_SECONDS)
        assert not self.thread.is_alive()


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    watched, out = tmp_path / "microscope", tmp_path / "out"
    (watched / "grid1").mkdir(parents=True)
    out.mkdir()
    return watched, out


def outputs(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file())


def test_slow_writers_restart_and_no_redo(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    watched, out = dirs
    movie, pages = frames(1), frames(2, 5)
    full = write_mrc(tmp_path / "full.mrc", movie)
    np.save(tmp_path / "pages.npy", pages)
    mrc, tif = watched / "grid1" / "movie.mrc", watched / "grid1" / "stack.tif"
    marks = tmp_path / "marks"
    marks.mkdir()
    options = Options(bits=8)
    run = Run(Watcher(watched, outpath=out, settle=SETTLE, options=options), options)
    pages_file = tmp_path / "pages.npy"
    argv = [sys.executable, "-c", WRITER, str(full), str(mrc), str(tif), "0.3", str(pages_file)]
    writer = subprocess.Popen([*argv, str(marks)])
    try:
        while writer.poll() is None:  # nothing for a file may appear while it grows
            for p in outputs(out):  # the output or its temporary file
                stem = p.name.lstrip(".").split(".")[0]
                assert (marks / f"{stem}.complete").exists(), (
                    f"{p.name} before its input was complete"
                )
            time.sleep(0.01)
        assert writer.returncode == 0
        done = run.wait_for(2)
    finally:
        if writer.poll() is None:
            writer.kill()
        run.stop()
    assert sorted((r.given, r.status) for r in done) == [(str(mrc), "done"), (str(tif), "done")]
    assert outputs(out) == [out / "grid1" / "movie.hdf", out / "grid1" / "stack.hdf"]
    ((values, _),) = eman_decode(out / "grid1" / "movie.hdf")
    assert values.shape == movie.shape  # every frame, not the ones written when first seen
    assert_file_within_half_step(out / "grid1" / "movie.hdf", [movie], bits=8)
    # every page, TIFF rows flipped
    flipped = [page[::-1] for page in pages]
    assert_file_within_half_step(out / "grid1" / "stack.hdf", flipped, bits=8)

    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in outputs(out)}
    again = Run(Watcher(watched, outpath=out, settle=SETTLE, poll=0.2, options=options), options)
    try:
        skipped = again.wait_for(2)
    finally:
        again.stop()
    assert sorted((r.given, r.status) for r in skipped) == [
        (str(mrc), "skipped"),
        (str(tif), "skipped"),
    ]
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in outputs(out)} == before


def test_a_file_that_changes_is_taken_again(dirs: tuple[Path, Path]) -> None:
    watched, out = dirs
    src = write_mrc(watched / "a.mrc", frames(3, 1)[0])
    run = Run(Watcher(watched, outpath=out, settle=0.3), Options(bits=6))
    try:
        (first,) = run.wait_for(1)
        assert first.status == "done"
        newer = frames(4, 1)[0] * 3
        write_mrc(watched / "tmp.mrc", newer)
        os.replace(watched / "tmp.mrc", src)
        second = run.wait_for(2)[1]
    finally:
        run.stop()
    assert second.status == "done"
    assert_file_within_half_step(out / "a.hdf", [newer], bits=6)


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
