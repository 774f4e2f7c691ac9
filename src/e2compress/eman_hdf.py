"""EMAN2's HDF5 image layout (spec §1): writer, lazy reader and decoder.

Layout: ``/MDF/images/<i>/image`` datasets, per-image attributes ``EMAN.<key>`` on the
image group, ``imageid_max`` (int32, shape (1,)) on ``/MDF/images``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import h5py
import numpy as np

from . import codecs
from .errors import InputError
from .quantize import RenderRange, decode_table, dequantize, storage_dtype

PathLike = str | os.PathLike[str]
STORED_KEYS = ("stored_rendermin", "stored_rendermax", "stored_renderbits", "stored_truncated")
NEVER_COPIED = frozenset(
    (*STORED_KEYS, "render_min", "render_max", "render_bits", "render_compress_level", "datatype")
)
DATATYPE = {0: 7, 1: 2, 2: 4}  # EMAN2 EMDataType for float / uchar / ushort storage
_DEFLATE, _SHUFFLE = h5py.h5z.FILTER_DEFLATE, h5py.h5z.FILTER_SHUFFLE


def _string_attr(gid: h5py.h5g.GroupID, name: str, text: str | bytes) -> None:
    raw = text if isinstance(text, bytes) else text.encode("ascii", "replace")
    raw = raw.split(b"\0", 1)[0]
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(len(raw) + 1)
    tid.set_strpad(h5py.h5t.STR_NULLTERM)
    space = h5py.h5s.create(h5py.h5s.SCALAR)
    attr = h5py.h5a.create(gid, name.encode(), tid, space)
    attr.write(np.array(raw, dtype=f"S{len(raw) + 1}"))


def _attr_array(value: Any) -> np.ndarray | None:
    """The numpy array EMAN2 would store for a header value (None for strings)."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "SU":
            return None
        return value.reshape(1) if value.ndim == 0 else value
    if isinstance(value, (bool, np.bool_)):
        return np.array([ord("T" if value else "F")], dtype=np.int8)
    if isinstance(value, np.floating):
        return np.array([value], dtype=value.dtype)
    if isinstance(value, float):
        return np.array([value], dtype=np.float32)
    if isinstance(value, np.integer):
        dt = np.uint32 if value.dtype == np.uint32 else np.int32
        return np.array([value], dtype=dt)
    if isinstance(value, int):
        return np.array([value], dtype=np.int32)
    if isinstance(value, (list, tuple)):
        arr = np.asarray(value)
        return arr.astype(np.float32 if arr.dtype.kind == "f" else np.int32)
    return None


def write_attr(group: h5py.Group, name: str, value: Any) -> None:
    """Write one attribute with the HDF5 type EMAN2 uses for it (spec §1.5)."""
    if name in group.attrs:
        del group.attrs[name]
    _create_attr(group.id, name, value)


_SPACES: dict[tuple[int, ...], Any] = {}
_TYPES: dict[np.dtype, Any] = {}


def _create_attr(gid: Any, name: str, value: Any) -> None:
    """Create attribute ``name`` (which must not exist) with the low-level API (fast)."""
    arr = _attr_array(value)
    if arr is None:
        if isinstance(value, np.ndarray):
            value = value.reshape(-1)[0]
        if not isinstance(value, (str, bytes)):
            raise TypeError(f"cannot store header value {name}={value!r}")
        _string_attr(gid, name, value)
        return
    arr = np.ascontiguousarray(arr)
    space = _SPACES.get(arr.shape)
    if space is None:
        space = _SPACES.setdefault(arr.shape, h5py.h5s.create_simple(arr.shape))
    tid = _TYPES.get(arr.dtype)
    if tid is None:
        tid = _TYPES.setdefault(arr.dtype, h5py.h5t.py_create(arr.dtype))
    h5py.h5a.create(gid, name.encode(), tid, space).write(arr)


class EmanHdfWriter:
    """Writes images into a new file in EMAN2's layout."""

    def __init__(self, path: PathLike) -> None:
        self._file = h5py.File(path, "w", libver="earliest", locking=False)
        self._images = self._file.create_group("MDF").create_group("images")
        self._max_id = -1
        write_attr(self._images, "imageid_max", np.array([-1], dtype=np.int32))

    def __enter__(self) -> EmanHdfWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create_image(
        self,
        index: int,
        shape: tuple[int, ...],
        bits: int,
        *,
        level: int = 1,
        chunks: tuple[int, ...] | None = None,
        shuffle: bool = False,
    ) -> h5py.Dataset:
        """Create ``/MDF/images/<index>/image``, chunked with deflate (and shuffle)."""
        group = self._images.create_group(str(index))
        ds = group.create_dataset(
            "image",
            shape=shape,
            dtype=storage_dtype(bits),
            chunks=chunks,
            compression="gzip",
            compression_opts=level,
            shuffle=shuffle,
        )
        self._max_id = max(self._max_id, index)
        return ds

    def write_header(self, index: int, header: Mapping[str, Any]) -> None:
        """Write ``EMAN.<key>`` attributes on image ``index``'s group."""
        gid = self._images[str(index)].id  # created empty by create_image
        for key, value in header.items():
            _create_attr(gid, f"EMAN.{key}", value)

    def close(self) -> None:
        """Record ``imageid_max`` and close the file."""
        if self._file.id.valid:
            write_attr(self._images, "imageid_max", np.array([self._max_id], dtype=np.int32))
            self._file.close()


def _plain(value: Any) -> Any:
    """Attribute value as EMAN2's reader presents it (spec §1.5)."""
    if isinstance(value, bytes):
        return value.split(b"\0", 1)[0].decode("ascii", "replace")
    if isinstance(value, np.bytes_):
        return _plain(bytes(value))
    if isinstance(value, np.ndarray):
        if value.dtype.names:
            return np.array([value[n] for n in value.dtype.names], dtype=np.float32).reshape(3, 4)
        if value.dtype.kind == "S":
            return _plain(value.reshape(-1)[0])
        if value.size == 1:
            item = value.reshape(-1)[0]
            if value.dtype.kind in "iu" and value.dtype.itemsize == 1:
                return bool(item == ord("T"))
            return item.item()
        return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def render_range(attrs: Mapping[str, Any]) -> RenderRange | None:
    """The stored quantisation mapping of an image group, or None for plain values."""
    try:
        bits = int(np.asarray(attrs["EMAN.stored_renderbits"]).reshape(-1)[0])
        rmin = float(np.asarray(attrs["EMAN.stored_rendermin"]).reshape(-1)[0])
        rmax = float(np.asarray(attrs["EMAN.stored_rendermax"]).reshape(-1)[0])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    if bits <= 0 or bits > 16:
        return None
    return RenderRange(bits, rmin, rmax)


def decode(codes: np.ndarray, rng: RenderRange | None) -> np.ndarray:
    """Stored dataset values to float32 image values (EMAN2 §2.4, exact 0 and integers)."""
    if rng is None:
        return codes.astype(np.float32, copy=False)
    if codes.dtype.kind == "u" and codes.dtype.itemsize <= 2:
        return dequantize(codes, rng)
    c = codes.astype(np.float64)
    return (c / ((1 << rng.bits) - 1) * (rng.rmax - rng.rmin) + rng.rmin).astype(np.float32)


def _filters(ds: h5py.Dataset) -> list[int]:
    plist = ds.id.get_create_plist()
    return [plist.get_filter(k)[0] for k in range(plist.get_nfilters())]


def _decode_chunk(
    raw: bytes, mask: int, filters: list[int], nbytes: int, dtype: np.dtype
) -> np.ndarray:
    data: bytes = raw
    for k in reversed(range(len(filters))):
        if mask & (1 << k):
            continue
        if filters[k] == _DEFLATE:
            data = codecs.inflate(data, nbytes)
        else:
            data = codecs.unshuffle(data, dtype).tobytes()
    return np.frombuffer(data, dtype=dtype)


def read_dataset(
    ds: h5py.Dataset, pool: Executor | None = None, table: np.ndarray | None = None
) -> np.ndarray:
    """The dataset's values, or ``table[values]`` when a decode table is given.

    Chunks are read raw (``read_direct_chunk``) in this thread and inflated and
    decoded in ``pool``; anything other than deflate/shuffle falls back to h5py.
    """
    filters = _filters(ds) if ds.chunks is not None else []
    chunks = ds.chunks
    grid = [-(-s // c) for s, c in zip(ds.shape, chunks or ds.shape, strict=True)]
    if (
        chunks is None
        or ds.size == 0
        or not all(f in (_DEFLATE, _SHUFFLE) for f in filters)
        or ds.dtype.byteorder == ">"
        or (table is not None and ds.dtype.kind != "u")
        or ds.id.get_num_chunks() != int(np.prod(grid))  # unwritten chunks: fill value
    ):
        data = np.asarray(ds[...])
        return data if table is None else np.asarray(table[data])
    dtype = ds.dtype
    nbytes = int(np.prod(chunks)) * dtype.itemsize
    out = np.empty(ds.shape, dtype=dtype if table is None else table.dtype)

    def work(offset: tuple[int, ...], mask: int, raw: bytes) -> None:
        block = _decode_chunk(raw, mask, filters, nbytes, dtype).reshape(chunks)
        region = tuple(
            slice(o, min(o + c, s)) for o, c, s in zip(offset, chunks, ds.shape, strict=True)
        )
        part = block[tuple(slice(0, r.stop - r.start) for r in region)]
        target = out[region]
        if table is None:
            target[...] = part
        elif target.flags.c_contiguous:
            np.take(table, part, out=target)
        else:
            target[...] = np.take(table, part)

    futures = []
    for index in np.ndindex(*grid):
        offset = tuple(i * c for i, c in zip(index, chunks, strict=True))
        mask, raw = ds.id.read_direct_chunk(offset)
        if pool is None:
            work(offset, mask, raw)
        else:
            futures.append(pool.submit(work, offset, mask, raw))
    for fut in futures:
        fut.result()
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _open_h5(path: str, locking: bool | None) -> h5py.File:
    """Open read-only; retry without HDF5 file locking where locks are refused."""
    if locking is not None:
        return h5py.File(path, "r", locking=locking)
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        if "lock" not in str(exc).lower():
            raise
        return h5py.File(path, "r", locking=False)


class EmanHdfFile:
    """A lazily read EMAN2 HDF file: ``len()``, ``f[i]`` (decoded), ``f.header(i)``."""

    def __init__(
        self, path: PathLike, *, threads: int | None = None, locking: bool | None = None
    ) -> None:
        self.path = os.fspath(path)
        try:
            self._file = _open_h5(self.path, locking)
        except OSError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"not a readable HDF5 file ({reason})", self.path) from None
        try:
            self._images, self._count = self._layout()
        except InputError:
            self._file.close()
            raise
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
            self._file.close()
            raise InputError(
                f"damaged EMAN2 HDF structure ({_first_line(exc)})", self.path
            ) from None
        self._threads = threads or os.cpu_count() or 1
        self._pool: ThreadPoolExecutor | None = None

    def _layout(self) -> tuple[h5py.Group, int]:
        if "num_dataset" in self._file.attrs:
            raise InputError("legacy pre-2006 EMAN HDF layout is not supported", self.path)
        images = self._file.get("MDF/images")
        if not isinstance(images, h5py.Group):
            raise InputError("HDF5 file has no EMAN2 image data (no /MDF/images group)", self.path)
        if "imageid_max" in images.attrs:
            count = int(np.asarray(images.attrs["imageid_max"]).reshape(-1)[0]) + 1
        else:
            count = len([k for k in images if k.isdigit()])
        if count < 0:
            raise InputError(f"invalid imageid_max {count - 1}", self.path)
        if count > len(images):
            raise InputError(
                f"imageid_max says {count} images, the file has {len(images)} groups", self.path
            )
        return images, count

    def __enter__(self) -> EmanHdfFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file and the decode threads."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._file.id.valid:
            self._file.close()

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    def _group(self, index: int) -> h5py.Group:
        if not 0 <= index < self._count:
            raise IndexError(f"image {index} out of range (file has {self._count})")
        try:
            group = self._images.get(str(index))
            ds = group.get("image") if isinstance(group, h5py.Group) else None
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise InputError(f"image {index} is damaged ({_first_line(exc)})", self.path) from None
        if not isinstance(ds, h5py.Dataset):
            raise InputError(f"image {index} does not exist", self.path)
        return group

    def dataset(self, index: int) -> h5py.Dataset:
        """The raw h5py dataset of image ``index``."""
        return self._group(index)["image"]

    def render_range(self, index: int) -> RenderRange | None:
        """The stored quantisation mapping of image ``index`` (None for float data)."""
        return render_range(self._group(index).attrs)

    def shape(self, index: int) -> tuple[int, ...]:
        """Shape of image ``index``: (ny, nx) or (nz, ny, nx)."""
        return tuple(self.dataset(index).shape)

    def raw_attrs(self, index: int) -> dict[str, Any]:
        """Attributes of image ``index`` as stored (names with their ``EMAN.`` prefix)."""
        group = self._group(index)
        out: dict[str, Any] = {}
        try:
            names = list(group.attrs)
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise InputError(
                f"image {index} has damaged attributes ({_first_line(exc)})", self.path
            ) from None
        for name in names:
            if not isinstance(name, str):
                continue  # a damaged, non-UTF-8 name: not an EMAN2 key
            try:
                out[name] = group.attrs[name]
            except (OSError, RuntimeError, TypeError, ValueError):
                continue
        return out

    def header(self, index: int) -> dict[str, Any]:
        """Header of image ``index`` as EMAN2 reports it (prefix stripped, ``Group.*``)."""
        out: dict[str, Any] = {}
        for name in self._images.attrs:
            if isinstance(name, str) and name != "imageid_max":
                out[f"Group.{name}"] = _plain(self._images.attrs[name])
        for name, value in self.raw_attrs(index).items():
            key = name[5:] if name.startswith("EMAN.") else name
            out[key] = _plain(value)
        shape = self.shape(index)
        out["nx"], out["ny"], out["nz"] = [*shape[::-1], 1, 1][:3]
        return out

    def read_codes(self, index: int) -> np.ndarray:
        """The stored values of image ``index`` without rescaling."""
        return read_dataset(self.dataset(index), self._executor())

    def _executor(self) -> Executor | None:
        if self._pool is None and self._threads > 1:
            self._pool = ThreadPoolExecutor(max_workers=self._threads)
        return self._pool

    def __getitem__(self, index: int) -> np.ndarray:
        if index < 0:
            index += self._count
        rng = self.render_range(index)
        ds = self.dataset(index)
        if rng is not None and ds.dtype.kind == "u" and ds.dtype.itemsize <= 2:
            return read_dataset(ds, self._executor(), decode_table(rng))
        return decode(read_dataset(ds, self._executor()), rng)

    def read_region(self, index: int, region: tuple[int | slice, ...]) -> np.ndarray:
        """Decoded values of a slice of image ``index`` (reads only the chunks needed)."""
        ds = self.dataset(index)
        return decode(np.asarray(ds[region]), self.render_range(index))
