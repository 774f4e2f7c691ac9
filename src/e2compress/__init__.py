"""e2compress: bit-truncated, deflate-compressed EMAN2 HDF5 for cryo-EM images.

Library API::

    import e2compress
    report = e2compress.compress_file("movie.mrc", bits=5)
    images = e2compress.read_images("movie.hdf")
    e2compress.write_images("stack.hdf", [a, b], bits=8)  # numpy arrays
    with e2compress.open("stack.hdf") as f:
        first = f[0]
        header = f.header(0)
"""

from __future__ import annotations

import os

import numpy as np

from .archive import EmanHdfFile
from .errors import E2CompressError, InputError, Interrupted, OutputError, VerificationError
from .executor import Cancel
from .gain_io import read_gain
from .options import Options
from .outputs import output_path
from .pipeline import compress_file, write_images
from .quantize import RenderRange, inexact_in_float32
from .readers import ImageSource, is_hdf5, open_source
from .report import CompressReport, ImageReport

__version__ = "0.1.0"

__all__ = [
    "Cancel",
    "CompressReport",
    "E2CompressError",
    "EmanHdfFile",
    "ImageReport",
    "ImageSource",
    "InputError",
    "Interrupted",
    "Options",
    "OutputError",
    "RenderRange",
    "VerificationError",
    "__version__",
    "compress_file",
    "open",
    "open_source",
    "output_path",
    "read_gain",
    "read_images",
    "write_images",
]


def open(path: str | os.PathLike[str], *, threads: int | None = None) -> EmanHdfFile:
    """Open an EMAN2 HDF file lazily: ``len(f)``, ``f[i]`` (decoded float32; float64
    where float32 cannot hold the stored values), ``f.header(i)``."""
    return EmanHdfFile(path, threads=threads)


def read_images(path: str | os.PathLike[str]) -> list[np.ndarray]:
    """Every image of ``path`` as float32 arrays, like EMAN2's ``EMData.read_images``,
    but float64 where float32 cannot hold the values (integers past 2**24, float64
    data; see docs/precision.md).

    EMAN2 HDF values are rescaled with the stored mapping (exact 0.0 and integers);
    MRC and TIFF files are read as EMAN2 sees them (``.mrcs`` sections and TIFF pages
    are separate images, TIFF rows flipped).

    Each image is 2-D ``(ny, nx)`` or 3-D ``(nz, ny, nx)``, whatever the source: a
    one-row image is ``(1, nx)``, though EMAN2 HDF stores it as a 1-D dataset.

    A file written with ``counts`` gives its counts, as EMAN2 does; the movie is
    ``np.float32(count) * read_gain(path)``.
    """
    if is_hdf5(path):
        with EmanHdfFile(path) as f:
            return [np.atleast_2d(f[i]) for i in range(len(f))]
    with open_source(path) as src:
        out = []
        for i in range(len(src)):
            image = np.asarray(src.image(i))
            wide = inexact_in_float32(image) > 0
            out.append(image.astype(np.float64 if wide else np.float32, copy=False))
        return out
