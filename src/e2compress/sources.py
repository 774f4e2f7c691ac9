"""Input images, one reader per format, all read a block of rows at a time.

An :class:`ImageSource` presents a file as EMAN2 sees it: a list of images, each
(nz, ny, nx) with nz == 1 for 2-D images, and the header keys EMAN2 carries over.
"""

from __future__ import annotations

import abc
import bz2
import gzip
import logging
import os
import threading
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .eman_hdf import NEVER_COPIED, EmanHdfFile, decode
from .errors import InputError

PathLike = str | os.PathLike[str]
MRC_SUFFIXES = (".mrc", ".mrcs", ".map", ".st", ".ali", ".rec", ".ccp4", ".mrcz", ".preali")
TIFF_SUFFIXES = (".tif", ".tiff")
HDF_SUFFIXES = (".hdf", ".h5", ".hdf5", ".hd5")
COMPRESSED_SUFFIXES = (".gz", ".bz2")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# tifffile logs problems with damaged tags; we report them ourselves, on one line.
logging.getLogger("tifffile").addHandler(logging.NullHandler())


class ImageSource(abc.ABC):
    """A readable image file: ``len()`` images, each read a block of rows at a time."""

    path: Path
    kind: str = ""

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def shape(self, index: int) -> tuple[int, int, int]:
        """(nz, ny, nx) of image ``index``."""

    @abc.abstractmethod
    def read(self, index: int, z: int, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` of section ``z`` of image ``index`` (native dtype, 2-D)."""

    def header(self, index: int) -> dict[str, Any]:
        """EMAN2 header keys this format carries (apix, origin, format keys)."""
        return {}

    def raw_attrs(self, index: int) -> dict[str, Any]:
        """Attributes to copy verbatim (HDF inputs only)."""
        return {}

    def shared_keys(self) -> frozenset[str]:
        """Keys of :meth:`header` that have the same value for every image."""
        return frozenset()

    def group_attrs(self) -> dict[str, Any]:
        """Attributes the file stores once for all images (EMAN2 HDF: ``Group.*``)."""
        return {}

    def dtype(self, index: int) -> np.dtype:
        """Element type :meth:`read` returns."""
        return np.dtype(np.float32)

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release the file."""

    def image(self, index: int) -> np.ndarray:
        """Image ``index`` in full, (ny, nx) or (nz, ny, nx)."""
        nz, ny, _ = self.shape(index)
        data = np.stack([self.read(index, z, 0, ny) for z in range(nz)])
        return data[0] if nz == 1 else data

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self.image(i)


def strip_compression(name: str) -> str:
    """``x.mrc.bz2`` -> ``x.mrc``."""
    lower = name.lower()
    for suffix in COMPRESSED_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_hdf5(path: PathLike) -> bool:
    """True when ``path`` is a readable file starting with the HDF5 signature."""
    try:
        return _magic(Path(path)) == _HDF5_MAGIC
    except OSError:
        return False


def _magic(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(8)


class MrcSource(ImageSource):
    """MRC/CCP4 files via mrcfile: ``.mrcs`` are stacks of 2-D images, others one image."""

    kind = "mrc"

    def __init__(self, path: Path, magic: bytes) -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self._open(path, magic)
        self.warnings = [str(w.message) for w in caught]

    def _open(self, path: Path, magic: bytes) -> None:
        import mrcfile
        import mrcfile.utils

        self.path = path
        self._fd: int | None = None
        self._data: np.ndarray | None = None
        self._header_keys: dict[str, Any] | None = None
        compressed = magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh"
        try:
            mrc = mrcfile.open(path, permissive=True, header_only=not compressed)
        except (OSError, EOFError, ValueError, MemoryError, zlib.error) as exc:
            raise InputError(f"cannot read MRC file: {_reason(exc)}", path) from None
        try:
            header = mrc.header
            self._header = header
            self._ext_type = bytes(header.exttyp).decode("ascii", "replace").strip("\0 ")
            self._fei = _fei_keys(mrc) if self._ext_type in ("FEI1", "FEI2") else {}
            mode = int(header.mode)
            if mode in (3, 4):
                raise InputError("complex MRC data (mode 3/4) is not supported", path)
            try:
                dtype = mrcfile.utils.data_dtype_from_header(header)
            except ValueError:
                raise InputError(f"unsupported MRC mode {mode}", path) from None
            nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
            if min(nx, ny, nz) < 1:
                raise InputError(f"invalid MRC dimensions nx={nx} ny={ny} nz={nz}", path)
            nsymbt = int(header.nsymbt)
            if nsymbt < 0:
                raise InputError(f"invalid extended header size {nsymbt}", path)
            self._offset = 1024 + nsymbt
            nbytes = nx * ny * nz * dtype.itemsize
            if compressed:
                data = mrc.data
                if data is None or data.size != nx * ny * nz:
                    raise InputError("compressed MRC data is shorter than its header says", path)
                self._data = np.asarray(data).reshape(nz, ny, nx)
            else:
                size = path.stat().st_size
                if size < self._offset + nbytes:
                    raise InputError(
                        f"file is truncated: header says {self._offset + nbytes} bytes "
                        f"(nx={nx} ny={ny} nz={nz} mode {mode}), file has {size}",
                        path,
                    )
            self._dtype = dtype
            self._file_shape = (nz, ny, nx)
        finally:
            mrc.close()
        axes = (int(header.mapc), int(header.mapr), int(header.maps))
        self._perm: tuple[int, ...] | None = None
        if axes != (1, 2, 3) and sorted(axes) == [1, 2, 3]:
            file_axes = [axes[2], axes[1], axes[0]]  # numpy axis 0 = sections
            self._perm = tuple(file_axes.index(t) for t in (3, 2, 1))
        if not compressed:
            try:
                self._fd = os.open(path, os.O_RDONLY)
            except OSError as exc:
                raise InputError(f"cannot open: {_reason(exc)}", path) from None
        if self._perm is not None:
            whole = self._data
            if whole is None:
                whole = self._read_file_rows(0, nz * ny).reshape(nz, ny, nx)
            self._data = np.ascontiguousarray(whole.transpose(self._perm))
        shape = self._data.shape if self._data is not None else self._file_shape
        self._stack = strip_compression(path.name).lower().endswith(".mrcs")
        self._image_shape = (1, shape[1], shape[2]) if self._stack else tuple(shape)
        self._count = shape[0] if self._stack else 1

    def _read_file_rows(self, row0: int, row1: int) -> np.ndarray:
        assert self._fd is not None
        nx = self._file_shape[2]
        size = (row1 - row0) * nx * self._dtype.itemsize
        buf = os.pread(self._fd, size, self._offset + row0 * nx * self._dtype.itemsize)
        if len(buf) != size:
            raise InputError("file ended while reading pixel data", self.path)
        arr = np.frombuffer(buf, dtype=self._dtype).reshape(row1 - row0, nx)
        return arr.astype(self._dtype.newbyteorder("="), copy=False)

    def __len__(self) -> int:
        return self._count

    def shape(self, index: int) -> tuple[int, int, int]:
        nz, ny, nx = self._image_shape
        return int(nz), int(ny), int(nx)

    def dtype(self, index: int) -> np.dtype:
        native: np.dtype = self._dtype.newbyteorder("=")
        return native

    def read(self, index: int, z: int, y0: int, y1: int) -> np.ndarray:
        section = index if self._stack else z
        if self._data is not None:
            return self._data[section, y0:y1]
        ny = self._file_shape[1]
        return self._read_file_rows(section * ny + y0, section * ny + y1)

    def header(self, index: int) -> dict[str, Any]:
        if self._header_keys is None:
            self._header_keys = self._mrc_keys()
        return dict(self._header_keys)

    def shared_keys(self) -> frozenset[str]:
        """All of them: an MRC file has one header for all its images."""
        return frozenset(self.header(0))

    def _mrc_keys(self) -> dict[str, Any]:
        h = self._header
        f32 = np.float32
        cella = [float(h.cella[k]) for k in ("x", "y", "z")]
        grid = [int(h.mx), int(h.my), int(h.mz)]
        out: dict[str, Any] = {}
        for axis, length, m in zip("xyz", cella, grid, strict=True):
            apix = length / m if m > 0 else 0.0
            out[f"apix_{axis}"] = f32(apix if 0.01 < apix < 1000 else 1.0)
        for axis in "xyz":
            out[f"origin_{axis}"] = f32(h.origin[axis])
        ints = {
            "nx": h.nx,
            "ny": h.ny,
            "nz": h.nz,
            "nxstart": h.nxstart,
            "nystart": h.nystart,
            "nzstart": h.nzstart,
            "mx": h.mx,
            "my": h.my,
            "mz": h.mz,
            "mode": h.mode,
            "mapc": h.mapc,
            "mapr": h.mapr,
            "maps": h.maps,
            "ispg": h.ispg,
            "nsymbt": h.nsymbt,
            "nversion": h.nversion,
            "nlabels": h.nlabl,
        }
        for key, value in ints.items():
            out[f"MRC.{key}"] = int(value)
        out["MRC.machinestamp"] = int(np.frombuffer(bytes(h.machst), dtype="<u2")[0])
        floats = {
            "xlen": h.cella.x,
            "ylen": h.cella.y,
            "zlen": h.cella.z,
            "alpha": h.cellb.alpha,
            "beta": h.cellb.beta,
            "gamma": h.cellb.gamma,
            "minimum": h.dmin,
            "maximum": h.dmax,
            "mean": h.dmean,
            "rms": h.rms,
        }
        for key, value in floats.items():
            out[f"MRC.{key}"] = f32(value)
        out["MRC.map"] = _text(bytes(h.map))
        out["MRC.exttyp"] = self._ext_type
        for k in range(max(0, min(int(h.nlabl), 10))):
            out[f"MRC.label{k}"] = _text(bytes(h.label[k]))
        out.update(self._fei)
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


def _fei_keys(mrc: Any) -> dict[str, Any]:
    """Scalar fields of the first FEI extended-header record as ``FEIMRC.<name>``."""
    try:
        records = mrc.indexed_extended_header
    except (AttributeError, ValueError):
        return {}
    if records is None or len(records) == 0:
        return {}
    first = records[0]
    out: dict[str, Any] = {}
    for name in first.dtype.names or ():
        value = first[name]
        if isinstance(value, np.bytes_):
            out[f"FEIMRC.{name}"] = _text(bytes(value))
        elif isinstance(value, np.bool_):
            out[f"FEIMRC.{name}"] = int(value)
        elif isinstance(value, np.floating):
            out[f"FEIMRC.{name}"] = np.float64(value) if value.dtype.itemsize == 8 else value
        elif isinstance(value, np.integer):
            out[f"FEIMRC.{name}"] = int(value) if -(2**31) <= int(value) < 2**31 else float(value)
    return out


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class TiffSource(ImageSource):
    """TIFF via tifffile: one 2-D image per page, rows flipped as EMAN2's reader does."""

    kind = "tiff"

    def __init__(self, path: Path) -> None:
        import tifffile

        self.path = path
        try:
            self._tif = tifffile.TiffFile(path)
        except Exception as exc:  # tifffile raises many types on corrupt files
            raise InputError(f"cannot read TIFF file: {_reason(exc)}", path) from None
        try:
            self._pages = self._check_pages()
        except BaseException:
            self._tif.close()
            raise
        self._lock = threading.Lock()
        self._cache: tuple[int, np.ndarray] | None = None

    def _check_pages(self) -> list[Any]:
        try:
            pages = list(self._tif.pages)
            shapes = [tuple(getattr(page, "shape", ())) for page in pages]
            dtypes = [np.dtype(page.dtype) if page.dtype is not None else None for page in pages]
        except Exception as exc:
            raise InputError(f"cannot read TIFF file: {_reason(exc)}", self.path) from None
        if not pages:
            raise InputError("TIFF file has no images", self.path)
        for k, (shape, dtype) in enumerate(zip(shapes, dtypes, strict=True)):
            if len(shape) != 2 or not all(isinstance(d, int) and d >= 1 for d in shape):
                raise InputError(
                    f"TIFF page {k} is not a single-channel 2-D image (shape {shape})", self.path
                )
            if dtype is None or dtype.kind not in "uif":
                raise InputError(f"TIFF page {k} has unsupported pixel type {dtype}", self.path)
        return pages

    def __len__(self) -> int:
        return len(self._pages)

    def shape(self, index: int) -> tuple[int, int, int]:
        ny, nx = self._pages[index].shape
        return 1, int(ny), int(nx)

    def dtype(self, index: int) -> np.dtype:
        native: np.dtype = np.dtype(self._pages[index].dtype).newbyteorder("=")
        return native

    def _page(self, index: int) -> np.ndarray:
        with self._lock:
            if self._cache is None or self._cache[0] != index:
                try:
                    data = self._pages[index].asarray()
                except Exception as exc:
                    raise InputError(
                        f"cannot decode TIFF page {index}: {_reason(exc)}", self.path
                    ) from None
                self._cache = (index, data[::-1])
            return self._cache[1]

    def read(self, index: int, z: int, y0: int, y1: int) -> np.ndarray:
        return np.ascontiguousarray(self._page(index)[y0:y1]).astype(self.dtype(index), copy=False)

    def header(self, index: int) -> dict[str, Any]:
        page: Any = self._pages[index].keyframe or self._pages[0]
        bps = page.bitspersample
        out: dict[str, Any] = {"TIFF.bitspersample": int(bps[0] if isinstance(bps, tuple) else bps)}
        for tag, key in ((282, "TIFF.resolution_x"), (283, "TIFF.resolution_y")):
            t = page.tags.get(tag)
            try:
                num, den = t.value if t is not None else (0, 0)
                if den:
                    out[key] = np.float32(num / den)
            except (TypeError, ValueError):
                pass
        return out

    def close(self) -> None:
        self._tif.close()


class HdfSource(ImageSource):
    """An EMAN2 HDF file (compressed or not), decoded to float values."""

    kind = "hdf"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = EmanHdfFile(path, threads=1)
        try:
            for i in range(len(self._file)):
                shape = self._file.shape(i)
                if not 1 <= len(shape) <= 3 or 0 in shape:
                    raise InputError(f"image {i} has unsupported shape {shape}", path)
        except BaseException:
            self._file.close()
            raise

    def __len__(self) -> int:
        return len(self._file)

    def shape(self, index: int) -> tuple[int, int, int]:
        shape = self._file.shape(index)
        full = (1,) * (3 - len(shape)) + tuple(shape)
        return int(full[0]), int(full[1]), int(full[2])

    def dtype(self, index: int) -> np.dtype:
        return np.dtype(np.float32)

    def read(self, index: int, z: int, y0: int, y1: int) -> np.ndarray:
        ds = self._file.dataset(index)
        region: tuple[Any, ...]
        if ds.ndim == 3:
            region = (z, slice(y0, y1))
        elif ds.ndim == 2:
            region = (slice(y0, y1),)
        else:
            region = (slice(None),)
        try:
            data = np.asarray(ds[region])
        except (OSError, RuntimeError, ValueError) as exc:
            raise InputError(f"cannot read image {index}: {_reason(exc)}", self.path) from None
        return decode(data.reshape(y1 - y0, -1), self._file.render_range(index))

    def raw_attrs(self, index: int) -> dict[str, Any]:
        out = {}
        for name, value in self._file.raw_attrs(index).items():
            key = name[5:] if name.startswith("EMAN.") else None
            if key is not None and key in NEVER_COPIED:
                continue
            out[name] = value
        return out

    def group_attrs(self) -> dict[str, Any]:
        return self._file.group_attrs()

    def close(self) -> None:
        self._file.close()


def open_source(path: PathLike) -> ImageSource:
    """Open ``path`` as an image source, choosing the reader by content and name."""
    p = Path(path)
    if not p.exists():
        raise InputError("no such file", p)
    if p.is_dir():
        raise InputError("is a directory, not an image file", p)
    try:
        magic = _magic(p)
    except OSError as exc:
        raise InputError(f"cannot read: {_reason(exc)}", p) from None
    if not magic:
        raise InputError("file is empty", p)
    name = strip_compression(p.name).lower()
    if magic == _HDF5_MAGIC:
        return HdfSource(p)
    if magic[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        return TiffSource(p)
    if magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or name.endswith(MRC_SUFFIXES):
        if magic[:2] == b"\x1f\x8b":
            _check_stream(p, gzip.open)
        elif magic[:3] == b"BZh":
            _check_stream(p, bz2.open)
        return MrcSource(p, magic)
    if name.endswith(HDF_SUFFIXES):
        raise InputError("not an HDF5 file (bad signature)", p)
    if name.endswith(TIFF_SUFFIXES):
        raise InputError("not a TIFF file (bad signature)", p)
    raise InputError("unrecognised file type (expected MRC, TIFF or EMAN2 HDF)", p)


def _check_stream(path: Path, opener: Any) -> None:
    try:
        with opener(path, "rb") as fh:
            if not fh.read(1024):
                raise InputError("compressed file holds no data", path)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise InputError(f"corrupt compressed file: {_reason(exc)}", path) from None
