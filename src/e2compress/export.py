"""``e2compress export``: decode an EMAN2 HDF file back to MRC or TIFF (RELION, cryoSPARC, Chimera).

Values are the decoded float32 values (an archive of counts: the movie, count times
gain, bit for bit), or the original integer type when every image was stored exactly
(integer data on a unit step, nothing clamped, or float storage of integers). Pixel
size and origin come back, axes are in standard order (x fastest, mapc/mapr/maps =
1, 2, 3), TIFF rows are flipped back (so TIFF -> HDF -> TIFF is the
identity for integer data stored at enough bits), a stack stays a stack and a movie a
movie. Output appears atomically and never replaces an existing file unless asked.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .archive import EmanHdfFile
from .atomic import TMP_SUFFIX, AtomicOutput, check_output_dir, os_error
from .counts_source import GainedSource
from .errors import E2CompressError, InputError, OutputError
from .gain_io import read_gain
from .quantize import inexact_in_float32, integer_step
from .readers import ImageSource, is_hdf5, open_source
from .readers.base import MRC_SUFFIXES, TIFF_SUFFIXES

PathLike = str | os.PathLike[str]
MRC_MODES = {np.dtype(np.int8): 0, np.dtype(np.int16): 1, np.dtype(np.uint16): 6}
MRC_INTS = (np.int8, np.int16, np.uint16)  # uint8 is written by mrcfile as uint16
TIFF_INTS = (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32)
_MRC_MODE_DTYPE = {0: np.int8, 1: np.int16, 6: np.uint16, 101: np.uint8}
_F32_EXACT = 1 << 24


@dataclass
class ExportReport:
    """What ``export_file`` wrote."""

    source: str
    output: str
    format: str  # "mrc" or "tiff"
    shape: tuple[int, ...]  # as written (numpy order)
    dtype: str
    exact: bool  # every image stored without loss
    apix: tuple[float, float, float] | None


@dataclass
class _Scan:
    """What the pre-pass learnt about all images."""

    minimum: float = math.inf
    maximum: float = -math.inf
    integer: bool = True
    exact: bool = True
    mapped: bool = True  # every image integer-mapped (bits > 0), none float storage
    total: float = 0.0
    sumsq: float = 0.0
    count: int = 0
    inexact: int = 0  # values float32 cannot hold (decoded in float64)


def output_format(path: PathLike) -> str:
    """``mrc`` or ``tiff`` from the file name; OutputError for anything else."""
    name = Path(path).name.lower()
    if name.endswith(MRC_SUFFIXES):
        return "mrc"
    if name.endswith(TIFF_SUFFIXES):
        return "tiff"
    raise OutputError("unknown output format (name it .mrc, .mrcs, .map or .tif, .tiff)", path)


def export_file(
    src: PathLike,
    dst: PathLike,
    *,
    force: bool = False,
    as_float: bool = False,
    tiff_compression: str | None = None,
) -> ExportReport:
    """Write the images of ``src`` (EMAN2 HDF, or any input e2compress reads) to ``dst``.

    ``dst``'s suffix picks the format: ``.mrc``/``.mrcs``/``.map`` (mrcfile) or
    ``.tif``/``.tiff`` (tifffile). ``force`` allows replacing an existing ``dst``;
    ``as_float`` writes float32 even when integers would be exact; ``tiff_compression``
    is a tifffile compression name (``zlib``, ``lzw``; default none). Raises
    :class:`~e2compress.errors.InputError` / :class:`~e2compress.errors.OutputError`
    with a one-line message; nothing is left behind on failure.
    """
    fmt = output_format(dst)
    target = Path(dst)
    if target.exists() and not force:
        raise OutputError("exists; pass force=True to replace it", target)
    if Path(src).exists() and target.exists() and os.path.samefile(src, target):
        raise OutputError("output is the input file", target)
    check_output_dir(target)
    with open_source(src) as source:
        hdf = EmanHdfFile(src, threads=1) if is_hdf5(src) else None
        gain = read_gain(hdf.h5file) if hdf is not None else None
        values = source if gain is None else GainedSource(source, gain)  # counts * gain
        try:
            return _export(values, hdf, Path(src), target, fmt, force, as_float, tiff_compression)
        finally:
            if hdf is not None:
                hdf.close()


def _export(
    source: ImageSource,
    hdf: EmanHdfFile | None,
    src: Path,
    target: Path,
    fmt: str,
    force: bool,
    as_float: bool,
    compression: str | None,
) -> ExportReport:
    n = len(source)
    shapes = {source.shape(i) for i in range(n)}
    if len(shapes) != 1:
        raise InputError(
            f"images have different shapes ({len(shapes)} kinds); one {fmt.upper()} file "
            "needs images of one shape",
            src,
        )
    nz, ny, nx = shapes.pop()
    if n > 1 and nz > 1 and fmt == "tiff":
        raise InputError("a stack of 3-D images cannot be written as one TIFF; use .mrc", src)
    headers = [hdf.header(i) if hdf is not None else source.header(i) for i in range(n)]
    scan = _scan(source, hdf, n, (nz, ny, nx))
    dtype: np.dtype = np.dtype(np.float32)
    if scan.exact and scan.integer and not as_float and scan.count:
        dtype = _integer_dtype(source, hdf, headers[0], fmt, scan)
    if fmt == "tiff" and dtype.kind == "f" and scan.inexact and not as_float:
        dtype = np.dtype(np.float64)  # values float32 cannot hold (decoded in float64)
    exact = scan.exact and _holds(dtype, scan, hdf)
    apix = _apix(headers[0])
    with AtomicOutput(target) as out:
        if fmt == "mrc":
            shape = _write_mrc(out.path, source, headers[0], n, (nz, ny, nx), dtype, apix, scan)
        else:
            shape = _write_tiff(out.path, source, n, (nz, ny, nx), dtype, apix, compression)
        _commit(out, target, force)
    return ExportReport(
        str(src),
        str(target),
        fmt,
        shape,
        str(dtype),
        exact,
        apix,
    )


def _holds(dtype: np.dtype, scan: _Scan, hdf: EmanHdfFile | None) -> bool:
    """Whether writing the decoded values as ``dtype`` keeps them exactly, in the
    original's precision: float32 cannot hold integers past 2**24 or float64 values,
    and float32 storage of integers past 2**24 may already have rounded them."""
    if dtype.kind == "f":
        return scan.inexact == 0 or dtype.itemsize == 8
    big = max(abs(scan.minimum), abs(scan.maximum)) > _F32_EXACT
    return not (hdf is not None and not scan.mapped and big)


def _commit(out: AtomicOutput, target: Path, force: bool) -> None:
    """Flush, then rename onto ``target``; without ``force`` never replace a file that
    appeared meanwhile (hard link, which fails if the name exists)."""
    if force:
        out.commit()
        return
    with open(out.path, "rb+") as fh:
        os.fsync(fh.fileno())
    try:
        os.link(out.path, target)
    except FileExistsError:
        raise OutputError("exists; pass force=True to replace it", target) from None
    except OSError:  # no hard links on this file system: check, then rename
        if target.exists():
            raise OutputError("exists; pass force=True to replace it", target) from None
        os.replace(out.path, target)
        return
    os.unlink(out.path)


# --------------------------------------------------------------------------- values


def _sections(source: ImageSource, n: int, shape3: tuple[int, int, int]) -> Iterator[np.ndarray]:
    nz, ny, _ = shape3
    for i in range(n):
        for z in range(nz):
            yield source.read(i, z, 0, ny)


def _scan(
    source: ImageSource, hdf: EmanHdfFile | None, n: int, shape3: tuple[int, int, int]
) -> _Scan:
    """Range, integrality, exactness and moments of every image (one streaming pass)."""
    scan = _Scan()
    for i in range(n):
        if hdf is not None:
            rng = hdf.render_range(i)
            truncated = int(hdf.header(i).get("stored_truncated", 0) or 0)
            if rng is None:
                scan.mapped = False
            elif integer_step(rng) != 1 or truncated:
                scan.exact = False
        else:
            scan.mapped = source.dtype(i).kind in "iu"
    for section in _sections(source, n, shape3):
        if section.size == 0:
            continue
        scan.minimum = min(scan.minimum, float(section.min()))
        scan.maximum = max(scan.maximum, float(section.max()))
        if scan.integer and section.dtype.kind == "f":
            scan.integer = bool(np.all(np.trunc(section) == section))
        scan.inexact += inexact_in_float32(section)
        scan.total += float(np.sum(section, dtype=np.float64))
        scan.sumsq += float(np.sum(np.square(section, dtype=np.float64)))
        scan.count += section.size
    if not (math.isfinite(scan.minimum) and math.isfinite(scan.maximum)):
        scan.integer = False
    return scan


def _hint(source: ImageSource, hdf: EmanHdfFile | None, header: dict[str, Any]) -> np.dtype | None:
    """The original element type, from the source itself or the EMAN2 header (None: unknown)."""
    if hdf is None:
        return source.dtype(0)
    mode = header.get("MRC.mode")
    if isinstance(mode, int):
        return np.dtype(_MRC_MODE_DTYPE.get(mode, np.float32))
    bps = header.get("TIFF.bitspersample")
    if isinstance(bps, int) and bps in (8, 16, 32, 64):
        fmt = header.get("TIFF.sampleformat")
        if fmt == 3:
            return np.dtype(np.float32)
        kind = "i" if fmt == 2 or (fmt is None and header.get("minimum", 0) < 0) else "u"
        return np.dtype(f"{kind}{bps // 8}")
    return None


def _fits(dtype: np.dtype, lo: float, hi: float) -> bool:
    info = np.iinfo(dtype)
    return info.min <= lo and hi <= info.max


def _integer_dtype(
    source: ImageSource, hdf: EmanHdfFile | None, header: dict[str, Any], fmt: str, scan: _Scan
) -> np.dtype:
    allowed = [np.dtype(t) for t in (MRC_INTS if fmt == "mrc" else TIFF_INTS)]
    hint = _hint(source, hdf, header)
    if (hint is not None and hint.kind == "f") or (hint is None and not scan.mapped):
        return np.dtype(np.float32)  # integer values, but the original was float
    if hint is not None and hint.kind in "iu" and not _fits(hint, scan.minimum, scan.maximum):
        other = np.dtype(f"{'u' if hint.kind == 'i' else 'i'}{hint.itemsize}")
        hint = other if _fits(other, scan.minimum, scan.maximum) else None  # signedness unsure
    if hint is not None and fmt == "mrc" and hint == np.dtype(np.uint8):
        hint = np.dtype(np.uint16)  # MRC has no unambiguous unsigned 8-bit mode
    if hint is not None and hint in allowed:
        return hint
    for candidate in allowed:
        if _fits(candidate, scan.minimum, scan.maximum):
            return candidate
    return np.dtype(np.float32)


def _apix(header: dict[str, Any]) -> tuple[float, float, float] | None:
    """The stored pixel size (x, y, z in Angstrom), 1.0 included; None when absent."""
    try:
        values = [float(np.float32(header.get(f"apix_{a}", header["apix_x"]))) for a in "xyz"]
    except (KeyError, TypeError, ValueError):
        return None
    if not all(math.isfinite(v) and v > 0 for v in values):
        return None
    return values[0], values[1], values[2]


def target_of(tmp: Path) -> Path:
    """The output a temporary file stands for (errors name the file the user asked for)."""
    name = tmp.name.removeprefix(".").removesuffix(TMP_SUFFIX)
    return tmp.with_name(name)


# --------------------------------------------------------------------------- MRC


def _starts(header: dict[str, Any]) -> tuple[int, int, int]:
    """nxstart/nystart/nzstart in standard axis order (the file's follow mapc/mapr/maps)."""
    raw = [header.get(f"MRC.n{a}start", 0) for a in "xyz"]
    axes = [header.get(k, d) for k, d in (("MRC.mapc", 1), ("MRC.mapr", 2), ("MRC.maps", 3))]
    if sorted(axes) != [1, 2, 3]:
        axes = [1, 2, 3]
    by_axis = {int(a): int(s) for a, s in zip(axes, raw, strict=True)}
    return by_axis[1], by_axis[2], by_axis[3]


def _write_mrc(
    path: Path,
    source: ImageSource,
    header: dict[str, Any],
    n: int,
    shape3: tuple[int, int, int],
    dtype: np.dtype,
    apix: tuple[float, float, float] | None,
    scan: _Scan,
) -> tuple[int, ...]:
    import mrcfile

    nz, ny, nx = shape3
    if n == 1:
        shape: tuple[int, ...] = (ny, nx) if nz == 1 else (nz, ny, nx)
    elif nz == 1:
        shape = (n, ny, nx)
    else:
        shape = (n, nz, ny, nx)
    mode = MRC_MODES.get(dtype, 2)
    try:
        with mrcfile.new_mmap(path, shape, mrc_mode=mode, overwrite=True) as mrc:
            data = mrc.data.reshape(n * nz, ny, nx)
            for k, section in enumerate(_sections(source, n, shape3)):
                data[k] = section
            h = mrc.header
            if n > 1 and nz == 1:
                mrc.set_image_stack()
            elif n == 1 and nz > 1:
                ispg = header.get("MRC.ispg")
                if ispg == 0:  # a movie (or a stack read as one image) stays one
                    mrc.set_image_stack()
                else:
                    mrc.set_volume()
                    if isinstance(ispg, int) and 1 <= ispg <= 230:
                        h.ispg = ispg
            if apix is not None:
                mrc.voxel_size = apix
            h.origin.x, h.origin.y, h.origin.z = (
                float(header.get(f"origin_{a}", 0.0)) for a in "xyz"
            )
            h.nxstart, h.nystart, h.nzstart = _starts(header)
            _set_stats(h, scan)
            labels = [str(header[k]) for k in sorted(header) if k.startswith("MRC.label")]
            labels = [t for t in labels if t.strip()][:9]
            for k, text in enumerate(labels):
                h.label[k] = text.encode("ascii", "replace")[:80]
            h.label[len(labels)] = f"e2compress export of {source.path.name}".encode(
                "ascii", "replace"
            )[:80]
            h.nlabl = len(labels) + 1
            mrc.flush()
    except OSError as exc:
        raise os_error(exc, target_of(path)) from None
    except ValueError as exc:
        raise OutputError(f"cannot write MRC: {exc}", target_of(path)) from None
    return shape


def _set_stats(h: Any, scan: _Scan) -> None:
    if not scan.count:
        return
    mean = scan.total / scan.count
    var = max(scan.sumsq / scan.count - mean * mean, 0.0)
    h.dmin, h.dmax, h.dmean, h.rms = scan.minimum, scan.maximum, mean, math.sqrt(var)


# --------------------------------------------------------------------------- TIFF

_IMAGEJ_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


def _write_tiff(
    path: Path,
    source: ImageSource,
    n: int,
    shape3: tuple[int, int, int],
    dtype: np.dtype,
    apix: tuple[float, float, float] | None,
    compression: str | None,
) -> tuple[int, ...]:
    import tifffile

    nz, ny, nx = shape3
    pages = n * nz
    shape = (pages, ny, nx) if pages > 1 else (ny, nx)
    imagej = dtype in _IMAGEJ_DTYPES
    kwargs: dict[str, Any] = {}
    if apix is not None:
        if imagej:  # ImageJ's convention: pixels per unit, unit in the description
            kwargs["resolution"] = (10.0 / apix[0], 10.0 / apix[1])
            kwargs["metadata"] = {"unit": "nm"}
            if pages > 1:
                kwargs["metadata"]["spacing"] = apix[2] / 10.0
        else:
            kwargs["resolution"] = (1e8 / apix[0], 1e8 / apix[1])
            kwargs["resolutionunit"] = "CENTIMETER"
    if compression:
        kwargs["compression"] = compression

    def flipped() -> Iterator[np.ndarray]:
        for section in _sections(source, n, shape3):
            yield np.ascontiguousarray(section[::-1]).astype(dtype, copy=False)

    try:
        tifffile.imwrite(
            path,
            data=flipped(),
            shape=shape,
            dtype=dtype,
            imagej=imagej,
            photometric="minisblack",
            **kwargs,
        )
    except E2CompressError:
        raise
    except OSError as exc:
        raise os_error(exc, target_of(path)) from None
    except (ValueError, TypeError, KeyError) as exc:
        raise OutputError(f"cannot write TIFF: {exc}", target_of(path)) from None
    return shape
