"""compress_file is a pure task: run from several threads at once it leaves the process's
warning and logging state as it found it (no ``catch_warnings``, no handler installed).

``warnings.catch_warnings`` swaps module-wide state (the filter list, the function that
shows a warning); two threads inside it at once restore each other's copies, and later
warnings of the whole process are then filtered or recorded into a list no one reads.
"""

from __future__ import annotations

import gzip
import io
import logging
import subprocess
import sys
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import mrcfile
import numpy as np
import pytest
import tifffile

from e2compress import compress_file, read_images
from e2compress.readers.mrc_header import parse_header
from helpers import formula_image, true_images, write_mrc

THREADS = 4
ROUNDS = 4
T = TypeVar("T")
R = TypeVar("R")


def _warning_mrc(path: Path, k: int) -> Path:
    """An MRC that mrcfile opens only with warnings (no map ID, unknown machine stamp)
    and that e2compress reads as little-endian, as mrcfile does."""
    write_mrc(path, formula_image(k, (3, 40, 48)).astype(np.float32))
    raw = bytearray(path.read_bytes())
    raw[208:212] = b"\0\0\0\0"  # map ID
    raw[212:216] = b"\x99\x99\0\0"  # machine stamp
    path.write_bytes(bytes(raw))
    return path


def _inputs(folder: Path) -> list[Path]:
    paths = []
    for k in range(3):
        paths.append(_warning_mrc(folder / f"warn{k}.mrcs", k))
        gz = folder / f"warn{k}.mrc.gz"
        gz.write_bytes(gzip.compress(paths[-1].read_bytes(), compresslevel=1))
        paths.append(gz)
        tif = folder / f"image{k}.tif"
        tifffile.imwrite(tif, formula_image(k + 7, (2, 40, 48)).astype(np.uint16))
        paths.append(tif)
    return paths


def test_mrcfile_warns_on_the_inputs(tmp_path: Path) -> None:
    """The MRC inputs of the thread test are ones mrcfile warns about (else the test
    below would not exercise anything)."""
    src = _warning_mrc(tmp_path / "w.mrcs", 0)
    with pytest.warns(RuntimeWarning, match="machine stamp|Map ID"):
        mrcfile.open(src, permissive=True).close()


class _State:
    """The process's warning and logging state, to compare after the threads ran."""

    def __init__(self) -> None:
        self.filters = list(warnings.filters)
        self.show = warnings.showwarning
        self.show_impl = warnings._showwarnmsg_impl  # type: ignore[attr-defined]
        self.handlers = list(logging.getLogger("tifffile").handlers)

    def assert_kept(self) -> None:
        assert warnings.filters == self.filters
        assert warnings.showwarning is self.show
        assert warnings._showwarnmsg_impl is self.show_impl  # type: ignore[attr-defined]
        assert logging.getLogger("tifffile").handlers == self.handlers
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.warn("after the threads", UserWarning, stacklevel=1)
        assert [str(w.message) for w in caught] == ["after the threads"]


def _in_threads(fn: Callable[[T], R], jobs: list[T]) -> list[R]:
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: overlapping opens are likely
    try:
        with ThreadPoolExecutor(THREADS) as pool:
            return list(pool.map(fn, jobs))
    finally:
        sys.setswitchinterval(interval)


def test_compress_file_from_threads_leaves_warning_state(tmp_path: Path) -> None:
    """4 threads x several MRC (that make mrcfile warn) and TIFF files: every output is
    right, the warning filters and display hooks are the ones from before, and a warning
    raised afterwards still reaches a recorder in this thread."""
    paths = _inputs(tmp_path)
    state = _State()
    jobs = [(src, tmp_path / f"out{r}_{src.name}.hdf") for r in range(ROUNDS) for src in paths]

    def run(job: tuple[Path, Path]) -> int:
        src, dst = job
        return len(compress_file(src, dst, bits=0, threads=1).images)

    counts = _in_threads(run, jobs)
    state.assert_kept()
    for (src, dst), count in zip(jobs, counts, strict=True):
        original = true_images(src)
        assert count == len(original)
        for got, want in zip(read_images(dst), original, strict=True):
            np.testing.assert_array_equal(got.reshape(want.shape), want)  # bits=0: exact


def test_read_images_from_threads_leaves_warning_state(tmp_path: Path) -> None:
    """The readers alone, many times over (opening is where mrcfile warned): the same
    state afterwards, and the images read are the files' own."""
    paths = [p for p in _inputs(tmp_path) if p.suffix != ".gz"] * 100
    state = _State()
    images = _in_threads(read_images, paths)
    state.assert_kept()
    for src, got in zip(paths[:6], images, strict=False):
        want = true_images(src)
        assert [g.reshape(w.shape).tolist() for g, w in zip(got, want, strict=True)] == [
            w.tolist() for w in want
        ]


def test_import_installs_no_logging_handler() -> None:
    """Importing the package (library and CLI module) leaves tifffile's logger alone:
    logging is the application's to configure."""
    code = (
        "import logging, e2compress, e2compress.cli, e2compress.readers\n"
        "print(logging.getLogger('tifffile').handlers)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert proc.stdout.strip() == "[]"


HEADER_CASES = [
    (stamp, mode, order)
    for stamp in (b"\x44\x44\0\0", b"\x44\x41\0\0", b"\x11\x11\0\0", b"\0\0\0\0", b"\x99\x12\0\0")
    for mode in (0, 1, 2, 6, 12, 101, 7)
    for order in "<>"
]


@pytest.mark.parametrize(("stamp", "mode", "order"), HEADER_CASES)
def test_parse_header_byte_order_as_mrcfile(stamp: bytes, mode: int, order: str) -> None:
    """parse_header picks the byte order mrcfile's permissive parser picks, for every
    machine stamp (known, unknown) and mode (known, unknown, either byte order)."""
    raw = bytearray(1024)
    raw[0:16] = np.array([48, 40, 3, mode], dtype=order + "i4").tobytes()
    raw[208:212] = b"MAP "
    raw[212:216] = stamp
    ours = parse_header(bytes(raw))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = mrcfile.mrcinterpreter.MrcInterpreter(permissive=True)
        theirs._iostream = io.BytesIO(bytes(raw))
        theirs._read_header()
    want = theirs.header
    assert ours.dtype == want.dtype
    assert (int(ours.nx), int(ours.mode)) == (int(want.nx), int(want.mode))
