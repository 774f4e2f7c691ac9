"""The gain image of a counts archive, stored beside EMAN2's images.

An archive written with ``counts`` holds the movie's integer counts as its EMAN2 images
(``/MDF/images``, stored exactly) and the gain in the dataset :data:`GAIN` (float32,
ny x nx, deflate + shuffle + Fletcher-32, filters built into every HDF5 library),
outside ``/MDF``: EMAN2 reads the movie as its count images only. The movie's values
are ``float32(count) * gain`` (a float32 multiply), bit for bit. The dataset's
attributes record that (``images = "counts"``, ``values``), the source's element type
(``source_dtype``) and the gain given to pixels that are 0 in every frame
(``unexposed_gain``); the file's attribute ``e2compress.gain`` names the dataset.
"""

from __future__ import annotations

import os

import h5py
import numpy as np

from . import checksum, codecs
from .counts import UNEXPOSED_GAIN
from .errors import InputError

PathLike = str | os.PathLike[str]
GAIN = "e2compress/gain"
GAIN_ATTR = "e2compress.gain"  # root attribute naming the gain dataset
_CHUNK_BYTES = 1 << 20


def write_gain(path: PathLike, gain: np.ndarray, source_dtype: np.dtype) -> None:
    """Store ``gain`` in the output ``path`` (a temporary file, locked by the caller).

    Its chunks are shuffled and deflated here with the pipeline's fastest engine
    (HDF5's own deflate takes seconds on a K2 gain) and written as they are: what the
    dataset's shuffle + deflate + Fletcher-32 filters decode.

    Args:
        path: the EMAN2 HDF output being written (its images are the counts).
        gain: float32 (ny, nx).
        source_dtype: the source's element type (byte order included).
    """
    data = np.ascontiguousarray(gain, dtype="<f4")
    ny, nx = data.shape
    rows = max(1, min(ny, _CHUNK_BYTES // max(1, 4 * nx)))
    engine: codecs.Engine | None = None
    with h5py.File(path, "r+", locking=False) as f:
        ds = f.create_dataset(
            GAIN,
            shape=(ny, nx),
            dtype="<f4",
            chunks=(rows, nx),
            compression="gzip",
            compression_opts=1,
            shuffle=True,
            fletcher32=True,
        )
        chunk = np.zeros((rows, nx), dtype="<f4")  # the last one zero-padded
        for y in range(0, ny, rows):
            n = min(rows, ny - y)
            chunk[:n] = data[y : y + n]
            chunk[n:] = 0
            planes = codecs.shuffle(chunk).data.cast("B")
            if engine is None:
                engine, stream = codecs.choose(codecs.candidates(1), planes)
            else:
                stream = engine.compress(planes)
            ds.id.write_direct_chunk((y, 0), checksum.append(stream), filter_mask=0)
        ds.attrs["images"] = np.bytes_(b"counts")
        ds.attrs["values"] = np.bytes_(b"float32(count) * gain")
        ds.attrs["source_dtype"] = np.bytes_(source_dtype.str.encode("ascii"))
        ds.attrs["unexposed_gain"] = np.float32(UNEXPOSED_GAIN)
        f.attrs[GAIN_ATTR] = np.bytes_(GAIN.encode("ascii"))  # where the gain is


def gain_of(f: h5py.File) -> np.ndarray | None:
    """The gain of an open archive (float32, ny x nx); None when it holds none.

    Raises:
        ValueError: the gain dataset is not a float32 image.
    """
    ds = f.get(GAIN)
    if ds is None:
        return None
    if not isinstance(ds, h5py.Dataset) or ds.ndim != 2 or ds.dtype != np.float32:
        raise ValueError("its gain is not a float32 image")
    return np.asarray(ds[()], dtype=np.float32)


def _open(path: PathLike) -> h5py.File:
    """Open read-only; without HDF5 file locking where the file is open already with
    other locking flags, or locks are refused."""
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        if "lock" not in str(exc).lower():
            raise
        return h5py.File(path, "r", locking=False)


def has_gain(path: PathLike) -> bool:
    """True when ``path`` is an HDF5 file holding a gain (an archive of counts)."""
    try:
        with _open(path) as f:
            return GAIN in f
    except (OSError, ValueError):
        return False


def read_gain(path: PathLike | h5py.File) -> np.ndarray | None:
    """The gain image of a counts archive (float32, ny x nx), None when it holds none.

    The archive's images (``read_images``, ``open``, EMAN2) are the counts; the movie
    is ``np.float32(count) * gain``.

    Args:
        path: the archive, or the open h5py file.

    Raises:
        InputError: the file cannot be read, or its gain is damaged.
    """
    try:
        if isinstance(path, h5py.File):
            return gain_of(path)
        with _open(path) as f:
            return gain_of(f)
    except (OSError, ValueError, KeyError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        name = path.filename if isinstance(path, h5py.File) else path
        raise InputError(f"cannot read the gain ({text})", name) from None
