"""``e2compress info``: what a file holds and how each image is stored."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import h5py
import numpy as np

from .archive import EmanHdfFile
from .errors import InputError
from .gain_io import GAIN, has_gain
from .kept import recorded_sha256, restorable, restore_note
from .readers import is_hdf5, open_source

PathLike = str | os.PathLike[str]
_FILTER_NAMES = {
    h5py.h5z.FILTER_DEFLATE: "deflate",
    h5py.h5z.FILTER_SHUFFLE: "shuffle",
    h5py.h5z.FILTER_FLETCHER32: "fletcher32",
    h5py.h5z.FILTER_SZIP: "szip",
    h5py.h5z.FILTER_NBIT: "nbit",
    h5py.h5z.FILTER_SCALEOFFSET: "scaleoffset",
}


AXIS_ORDER = "x,y,z"  # shapes in text and JSON: columns, rows, sections


@dataclass
class ImageInfo:
    """How one image is stored (HDF keys are None for MRC/TIFF inputs)."""

    index: int
    shape: list[int]  # (ny, nx) or (nz, ny, nx)
    dtype: str  # stored element type
    bits: int | None  # 0 = float storage; None: not an EMAN2 file
    rmin: float | None
    rmax: float | None
    step: float | None
    truncated: int | None
    filters: list[str] | None
    chunks: list[int] | None
    stored_bytes: int | None
    ratio: float | None  # float32 size over stored bytes
    apix: list[float] | None  # x, y, z in Angstrom as stored (1.0: EMAN2's "unknown")
    # the type e2compress decodes to: "float32" (as EMAN2), or "float64" where float32
    # cannot hold the stored values (EMAN2 then reads them rounded to float32)
    decoded: str | None = None


@dataclass
class FileInfo:
    """One file: format, size and its images."""

    file: str
    format: str
    bytes: int
    ratio: float  # float32 size of all images over the file size
    images: list[ImageInfo] = field(default_factory=list)
    # an archive that keeps its source's bytes: True when ``restore`` rebuilds the source
    # byte for byte, False when only its headers (values quantised); None: keeps none
    restorable: bool | None = None
    restore_note: str | None = None  # why not, in a few words
    source_sha256: str | None = None  # of the source, as recorded
    counts: bool = False  # images are counts; the movie is count * gain (/e2compress/gain)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, one object with an ``images`` list. Shapes and chunks are given x
        first (nx, ny[, nz]), as in the text and in EMAN2 and MRC headers (h5py and numpy
        give them the other way round); ``axis_order`` says so."""
        out = asdict(self)
        out["axis_order"] = AXIS_ORDER
        for im in out["images"]:
            im["shape"] = im["shape"][::-1]
            if im["chunks"] is not None:
                im["chunks"] = im["chunks"][::-1]
        return out


def file_info(path: PathLike) -> FileInfo:
    """Describe ``path`` (EMAN2 HDF in full; MRC and TIFF shape, type and pixel size).

    Raises :class:`~e2compress.errors.InputError` when the file cannot be read.
    """
    size = os.stat(path).st_size if os.path.exists(path) else 0
    sha = note = None
    counts = False
    if is_hdf5(path):
        images = _hdf_images(path)
        counts = has_gain(path)
        fmt = "eman2-hdf"
        exact = restorable(path)
        if exact is not None:
            sha, note = recorded_sha256(path), restore_note(path)
    else:
        images, fmt = _source_images(path)
        exact = None
    floats = sum(4 * math.prod(im.shape) for im in images)
    return FileInfo(
        os.fspath(path),
        fmt,
        size,
        floats / size if size else 0.0,
        images,
        restorable=exact,
        restore_note=note,
        source_sha256=sha,
        counts=counts,
    )


def _apix(header: dict[str, Any]) -> list[float] | None:
    """Pixel size x, y, z as stored (EMAN2 writes 1.0 when it is unknown)."""
    try:
        return [float(np.float32(header.get(f"apix_{a}", header["apix_x"]))) for a in "xyz"]
    except (KeyError, TypeError, ValueError):
        return None


def _hdf_images(path: PathLike) -> list[ImageInfo]:
    out = []
    with EmanHdfFile(path, threads=1) as f:
        for i in range(len(f)):
            try:
                ds = f.dataset(i)
                header = f.header(i)
                rng = f.render_range(i)
                plist = ds.id.get_create_plist()
                filters = []
                for k in range(plist.get_nfilters()):
                    code, _, values, _ = plist.get_filter(k)
                    name = _FILTER_NAMES.get(code, f"filter{code}")
                    filters.append(f"{name}({values[0]})" if name == "deflate" else name)
                stored = int(ds.id.get_storage_size())
            except (OSError, RuntimeError, KeyError, ValueError) as exc:
                raise InputError(f"image {i}: {exc}", path) from None
            truncated = header.get("stored_truncated") if rng is not None else None
            out.append(
                ImageInfo(
                    index=i,
                    shape=[int(s) for s in ds.shape],
                    dtype=str(ds.dtype),
                    bits=rng.bits if rng is not None else 0,
                    rmin=float(np.float32(rng.rmin)) if rng is not None else None,
                    rmax=float(np.float32(rng.rmax)) if rng is not None else None,
                    step=rng.step if rng is not None else None,
                    decoded=str(f.value_dtype(i)),
                    truncated=int(truncated) if truncated is not None else None,
                    filters=filters,
                    chunks=[int(c) for c in ds.chunks] if ds.chunks else None,
                    stored_bytes=stored,
                    ratio=4 * ds.size / stored if stored else None,
                    apix=_apix(header),
                )
            )
    return out


def _source_images(path: PathLike) -> tuple[list[ImageInfo], str]:
    out = []
    with open_source(path) as src:
        for i in range(len(src)):
            nz, ny, nx = src.shape(i)
            shape = [nz, ny, nx] if nz > 1 else [ny, nx]
            dtype = src.dtype(i)
            out.append(
                ImageInfo(
                    index=i,
                    shape=shape,
                    dtype=str(dtype),
                    bits=None,
                    rmin=None,
                    rmax=None,
                    step=None,
                    truncated=None,
                    filters=None,
                    chunks=None,
                    stored_bytes=math.prod(shape) * dtype.itemsize,
                    ratio=4 / dtype.itemsize,
                    apix=_apix(src.header(i)),
                )
            )
        return out, src.kind


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.6g}"


def _versus_float32(ratio: float) -> str:
    """``7.31x smaller than float32``, or ``3.57x larger`` when the file is bigger."""
    if ratio >= 1 or ratio <= 0:
        return f"{ratio:.2f}x smaller than float32"
    return f"{1 / ratio:.2f}x larger than float32"


def format_info(info: FileInfo) -> str:
    """The text ``e2compress info`` prints for one file."""
    n = len(info.images)
    lines = [
        f"{info.file}: {info.format}, {n} image{'s' * (n != 1)}, {info.bytes} bytes, "
        + _versus_float32(info.ratio)
    ]
    if info.counts:
        lines[0] += f"; images are counts, the movie is count x gain ({GAIN})"
    if info.restorable is not None:
        lines[0] += f"; restore: {info.restore_note}"
    for im in info.images:
        dims = " x ".join(str(s) for s in im.shape[::-1])
        apix = "-" if im.apix is None else " x ".join(f"{a:.4g}" for a in im.apix) + " A"
        text = f"  [{im.index}] {dims} {im.dtype}"
        if im.bits is not None:
            text += "  float32 (lossless)" if im.bits == 0 else f"  bits {im.bits}"
        if im.rmin is not None:
            text += f"  range {_num(im.rmin)}..{_num(im.rmax)} step {_num(im.step)}"
            text += f"  truncated {im.truncated}"
        if im.filters is not None:
            text += f"  filters {'+'.join(im.filters) or 'none'}"
            text += f"  chunks {'x'.join(map(str, im.chunks[::-1])) if im.chunks else 'none'}"
        if im.stored_bytes is not None:
            text += f"  {im.stored_bytes} bytes"
        if im.ratio is not None:
            text += f" ({im.ratio:.2f}x)" if im.ratio >= 1 else f" ({1 / im.ratio:.2f}x larger)"
        text += f"  apix {apix}"
        if im.decoded == "float64":
            text += "  values float32 cannot hold: e2compress decodes float64, EMAN2 rounds them"
        lines.append(text)
    return "\n".join(lines)
