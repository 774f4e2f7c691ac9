"""Batch mode and files still being written whose headers agree with their current length
(issue 14): a writer thread appends frames while the batch runs. With ``--settle`` the
batch waits until the file has stopped changing and compresses every frame; a file that
keeps changing past the limit is refused, never compressed in part."""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile

from e2compress.errors import InputError, Interrupted
from e2compress.executor import Cancel
from e2compress.runner import wait_settled
from helpers import assert_within_half_step, eman_decode, run_cli

FRAMES, SHAPE = 16, (96, 128)  # a frame: 24 kB of uint16 (written straight through)
PAUSE = 0.1  # seconds between frames


def frames(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).poisson(3.0, (FRAMES, *SHAPE)).astype(np.uint16)


def write_tiff_pages(path: Path, data: np.ndarray, pause: Callable[[], None]) -> None:
    """A TIFF appended page by page, with no frame count anywhere in it."""
    for k, frame in enumerate(data):
        tifffile.imwrite(path, frame, append=k > 0, metadata=None)
        pause()


def write_ome_tiff(path: Path, data: np.ndarray, pause: Callable[[], None]) -> None:
    """An OME-TIFF: its XML (with the frame count) is written only when it is closed."""

    def pages() -> Iterator[np.ndarray]:
        for frame in data:
            yield frame
            tif.filehandle.flush()
            pause()

    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(pages(), shape=data.shape, dtype=data.dtype)


def write_mrc_imod(path: Path, data: np.ndarray, pause: Callable[[], None]) -> None:
    """An MRC whose writer appends a frame, then updates nz (as IMOD does)."""
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data[:1].astype(np.float32))
    pause()
    with open(path, "r+b") as fh:
        for k in range(1, len(data)):
            fh.seek(0, 2)
            fh.write(data[k].astype(np.float32).tobytes())
            fh.seek(8)
            fh.write(struct.pack("<i", k + 1))
            fh.flush()
            pause()


WRITERS = {"pages.tif": write_tiff_pages, "ome.ome.tif": write_ome_tiff, "imod.mrc": write_mrc_imod}


@contextmanager
def writing(path: Path, data: np.ndarray, writer: Callable[..., None]) -> Iterator[threading.Event]:
    """Run ``writer`` in a thread; yields once a few frames are on disk; joins it after.
    The event set stops the writer early (it then stops pausing and finishes)."""
    stop = threading.Event()
    started = threading.Event()
    count = 0

    def pause() -> None:
        nonlocal count
        count += 1
        if count >= 3:
            started.set()
        stop.wait(PAUSE)

    thread = threading.Thread(target=writer, args=(path, data, pause), daemon=True)
    thread.start()
    try:
        assert started.wait(60), "the writer did not start"
        yield stop
    finally:
        stop.set()
        thread.join(60)
        assert not thread.is_alive()


def decoded_frames(path: Path) -> np.ndarray:
    images = eman_decode(path)
    return np.concatenate([v.reshape(-1, *SHAPE) for v, _ in images])


@pytest.mark.parametrize("name", list(WRITERS))
def test_batch_waits_for_a_file_still_being_written(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = frames(len(name))
    src, out = tmp_path / name, tmp_path / "out"
    out.mkdir()
    with writing(src, data, WRITERS[name]):
        rc, stdout, err = run_cli(
            capsys, "--bits", "8", "--settle", "3", "-v", "1", "--outpath", out, src
        )
    assert (rc, err) == (0, "")
    assert f"Waiting for {src}: modified " in stdout
    (hdf,) = out.glob("*.hdf")
    images = eman_decode(hdf)
    got = decoded_frames(hdf)
    assert got.shape == data.shape  # every frame, not the ones written when it started
    for (values, mapping), orig in zip(
        images, np.split(data, len(images)) if len(images) > 1 else [data], strict=True
    ):
        if name.endswith(".tif"):  # TIFF rows are stored flipped, as EMAN2 reads them
            orig = orig[..., ::-1, :]
        assert mapping is not None
        assert_within_half_step(orig.reshape(values.shape).astype(np.float32), values, mapping)


def test_a_file_that_keeps_changing_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "endless.mrc"
    data = np.zeros((400, 8, 8), np.uint16)
    with (
        writing(src, data, write_mrc_imod),
        pytest.raises(InputError, match="still being written") as exc,
    ):
        wait_settled(str(src), 1.0, Cancel(), limit=1.5)
    assert str(exc.value).startswith(f"{src}: still being written: modified ")


def test_the_wait_returns_at_once_for_an_old_or_missing_file(tmp_path: Path) -> None:
    old = tmp_path / "old.mrc"
    old.write_bytes(b"x")
    ages = []
    past = time.time() - 3600
    os.utime(old, (past, past))
    wait_settled(str(old), 60.0, Cancel(), on_wait=ages.append, limit=0.0)
    wait_settled(str(tmp_path / "missing.mrc"), 60.0, Cancel(), limit=0.0)
    assert ages == []


def test_the_wait_stops_when_cancelled(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.mrc"
    fresh.write_bytes(b"x")
    cancel = Cancel()
    ages: list[float] = []

    def on_wait(age: float) -> None:
        ages.append(age)
        cancel.set(15)

    with pytest.raises(Interrupted):
        wait_settled(str(fresh), 60.0, cancel, on_wait=on_wait)
    assert len(ages) == 1
    assert 0 <= ages[0] < 60
