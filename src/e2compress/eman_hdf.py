"""EMAN2's HDF5 image layout (spec §1): writer, lazy reader and decoder.

Layout: ``/MDF/images/<i>/image`` datasets, per-image attributes ``EMAN.<key>`` on the
image group, ``imageid_max`` (int32, shape (1,)) on ``/MDF/images``.

Files of one image (movies, micrographs, maps) are written as EMAN2 writes them:
the earliest HDF5 file format and the whole header on the image group. Stacks (more
than one image) use the :class:`StackLayout`: the HDF5 1.8 file format (compact
groups, small object headers, one small chunk-index node per image) and, on each image
group, only the keys EMAN2 needs per image; keys that are the same for every image are
stored once, as attributes of ``/MDF/images`` (EMAN2 reads them as ``Group.<key>``).
See docs/format.md, "Stack layout", for the measurements behind each setting.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np
from h5py import h5a, h5d, h5f, h5g, h5p, h5s, h5t

from . import checksum, codecs, h5direct
from .errors import InputError
from .quantize import (
    F32_MAX,
    RenderRange,
    code_max,
    decode_dtype,
    decode_values,
    is_wide,
    storage_dtype,
)

PathLike = str | os.PathLike[str]
STORED_KEYS = ("stored_rendermin", "stored_rendermax", "stored_renderbits", "stored_truncated")
NEVER_COPIED = frozenset(
    (*STORED_KEYS, "render_min", "render_max", "render_bits", "render_compress_level", "datatype")
)
DATATYPE = {0: 7, 1: 2, 2: 4}  # EMAN2 EMDataType for float / uchar / ushort storage
_DEFLATE, _SHUFFLE = h5py.h5z.FILTER_DEFLATE, h5py.h5z.FILTER_SHUFFLE
_FLETCHER32 = h5py.h5z.FILTER_FLETCHER32
_I32, _F32 = np.dtype("<i4"), np.dtype("<f4")
# Images up to this many bytes are decoded in the calling thread (a pool task costs more).
POOL_MIN_BYTES = 1 << 20


def _string_attr(gid: Any, name: bytes, text: str | bytes) -> None:
    raw = text if isinstance(text, bytes) else text.encode("ascii", "replace")
    raw = raw.split(b"\0", 1)[0]
    tid = h5t.C_S1.copy()
    tid.set_size(len(raw) + 1)
    tid.set_strpad(h5t.STR_NULLTERM)
    space = h5s.create(h5s.SCALAR)
    attr = h5a.create(gid, name, tid, space)
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
        return np.array([value], dtype=_float_type(value))
    if isinstance(value, (int, np.integer)):
        dt = np.uint32 if isinstance(value, np.uint32) else np.int32
        if not np.iinfo(dt).min <= int(value) <= np.iinfo(dt).max:
            return np.array([float(value)], dtype=np.float64)
        return np.array([value], dtype=dt)
    if isinstance(value, (list, tuple)):
        arr = np.asarray(value)
        if arr.dtype.kind in "iub" and arr.size:
            return arr.astype(np.int32 if _in_int32(arr) else np.float64)
        as_float = arr.astype(np.float64)
        return as_float.astype(_float_type(*as_float.ravel()))
    return None


def _float_type(*values: float) -> type[np.floating[Any]]:
    """float32 as EMAN2 stores header numbers; float64 (which EMAN2 also reads) for
    finite values past float32's range, e.g. a damaged calibration, instead of inf."""
    big = any(math.isfinite(v) and abs(v) > F32_MAX for v in values)
    return np.float64 if big else np.float32


def _in_int32(arr: np.ndarray) -> bool:
    info = np.iinfo(np.int32)
    return bool(info.min <= int(arr.min()) and int(arr.max()) <= info.max)


class _AttrMaker:
    """Creates attributes with the low-level API, reusing dataspaces and types.

    With ``direct`` (see :mod:`h5direct`), one-number attributes, which are most of an
    image header, are created with direct HDF5 calls (3x faster than through h5py).
    """

    def __init__(self, direct: h5direct.Writer | None = None) -> None:
        self._spaces: dict[tuple[int, ...], Any] = {}
        self._types: dict[np.dtype, Any] = {}
        self._direct = direct
        # per type: buffer, its address, HDF5 type and dataspace ids (kept alive above)
        self._scalars: dict[np.dtype, tuple[np.ndarray, int, int, int]] = {}

    def share_types(self, fid: Any, dtypes: tuple[np.dtype, ...]) -> None:
        """Store ``dtypes`` once in the file (see :func:`h5direct.commit_type`) and
        create attributes of those types with the stored ones (a float32 attribute
        then takes 10 bytes less, measured 86 bytes less per image of a stack)."""
        for dtype in dtypes:
            tid = h5t.py_create(dtype).copy()
            if h5direct.commit_type(fid, tid):
                self._types[dtype] = tid

    def create(self, gid: Any, name: str, value: Any) -> None:
        """Create attribute ``name`` (which must not exist) with EMAN2's type for ``value``."""
        fast = _SCALARS.get(type(value)) if self._direct is not None else None
        if fast is not None:  # most of a stack's image header: no array made
            self._direct_scalar(gid, name, fast, value)
            return
        arr = _attr_array(value)
        if arr is None:
            if isinstance(value, np.ndarray):
                value = value.reshape(-1)[0]
            if not isinstance(value, (str, bytes)):
                raise TypeError(f"cannot store header value {name}={value!r}")
            _string_attr(gid, name.encode(), value)
            return
        arr = np.ascontiguousarray(arr)
        space = self._spaces.get(arr.shape)
        if space is None:
            space = self._spaces.setdefault(arr.shape, h5s.create_simple(arr.shape))
        tid = self._types.get(arr.dtype)
        if tid is None:
            tid = self._types.setdefault(arr.dtype, h5t.py_create(arr.dtype))
        if self._direct is not None and arr.shape == (1,):
            self._direct_scalar(gid, name, arr.dtype, arr[0])
            return
        h5a.create(gid, name.encode(), tid, space).write(arr, mtype=tid)

    def _direct_scalar(self, gid: Any, name: str, dtype: np.dtype, item: Any) -> None:
        """One number of ``dtype`` as a shape-(1,) attribute, with direct HDF5 calls."""
        assert self._direct is not None
        scalar = self._scalars.get(dtype)
        if scalar is None:
            buf = np.zeros(1, dtype=dtype)
            space = self._spaces.get((1,))
            if space is None:
                space = self._spaces.setdefault((1,), h5s.create_simple((1,)))
            tid = self._types.get(dtype)
            if tid is None:
                tid = self._types.setdefault(dtype, h5t.py_create(dtype))
            scalar = self._scalars.setdefault(dtype, (buf, buf.ctypes.data, tid.id, space.id))
        buf, address, tid_id, space_id = scalar
        buf[0] = item
        self._direct.create_attr(gid.id, name.encode(), tid_id, space_id, address)


def write_attr(group: h5py.Group, name: str, value: Any) -> None:
    """Write one attribute with the HDF5 type EMAN2 uses for it (spec §1.5)."""
    if name in group.attrs:
        del group.attrs[name]
    _AttrMaker().create(group.id, name, value)


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class StackLayout:
    """How a stack (many images) is stored; see the module docstring.

    ``chunks_per_image`` sizes each image's chunk-index B-tree node (HDF5's
    ``istore_k``): one node of 2k entries per image instead of the default 64.
    """

    chunks_per_image: int = 1
    images: int = 0  # 0: unknown (many)

    @property
    def istore_k(self) -> int:
        """Half the number of entries of one chunk-index node (HDF5: 1..32 here)."""
        return max(1, min(32, -(-self.chunks_per_image // 2)))

    @property
    def meta_block(self) -> int:
        """HDF5 metadata block size: the largest power of two up to 1/8 of the
        stack's metadata (about 1 KB an image), between 1 KB and _STACK_META_BLOCK.

        Small blocks lose ~100 bytes an image in leftovers, large ones up to a block
        at the end of the file (a 32 KB block made a 4-image stack 4x its pixels).
        """
        if self.images <= 0:
            return _STACK_META_BLOCK
        eighth = (self.images << 10) // 8
        return max(1024, min(_STACK_META_BLOCK, 1 << max(0, eighth.bit_length() - 1)))


# Attribute counts beyond which HDF5 moves attributes into a separate heap and B-tree
# ("dense" storage: ~1.5 KB more per image group; measured). An image header is small.
_IMAGE_MAX_COMPACT, _IMAGE_MIN_DENSE = 64, 48
# Python types of header values stored as one number of EMAN2's type for them
_SCALARS: dict[type, np.dtype] = {np.float32: _F32, np.int32: _I32, int: _I32}
_SHARED_TYPES = (_F32, _I32)  # attribute types stored once in a stack file
_GROUP_MAX_COMPACT = 256  # attributes of /MDF/images kept in its object header
_GROUP_COMPACT_LINKS = (16, 14)  # HDF5's max_compact, min_dense for its links
_ROOT_COMPACT_ATTRS = 48  # attributes kept in the root group's object header
_STACK_MDC_BYTES = 4 << 20  # HDF5 metadata cache of a stack being written
_STACK_META_BLOCK = 32 << 10  # HDF5 metadata aggregation block of a stack
_READ_MDC_BYTES = 256 << 10  # HDF5 metadata cache of a file being read


class EmanHdfWriter:
    """Writes images into a new file in EMAN2's layout.

    ``stack`` selects the stack layout (see the module docstring); without it the file
    is what EMAN2 itself writes.
    """

    def __init__(self, path: PathLike, stack: StackLayout | None = None) -> None:
        self.stack = stack
        self._attrs = _AttrMaker()
        self._direct: h5direct.Writer | None = None
        self._max_id = -1
        self._current: tuple[int, Any] | None = None
        self._dcpls: dict[tuple[Any, ...], Any] = {}
        self._types: dict[np.dtype, Any] = {}
        self._spaces: dict[tuple[int, ...], Any] = {}
        if stack is None:
            self._file = h5py.File(path, "w", libver="earliest", locking=False)
            self._images = self._file.create_group("MDF").create_group("images")
            self._gcpl: Any = None
        else:
            lib = h5direct.library()
            self._direct = h5direct.Writer(lib) if lib is not None else None
            self._attrs = _AttrMaker(self._direct)
            self._file = self._create_stack_file(os.fspath(path), stack)
            gcpl = h5p.create(h5p.GROUP_CREATE)
            # EMAN2 opens /MDF/images attributes by creation order: keep it on record.
            gcpl.set_attr_creation_order(h5p.CRT_ORDER_TRACKED | h5p.CRT_ORDER_INDEXED)
            # the shared keys (an MRC header: ~45) in the object header, not in a
            # separate heap and two B-trees (4.3 KB more, measured)
            gcpl.set_attr_phase_change(_GROUP_MAX_COMPACT, _GROUP_MAX_COMPACT - 1)
            # and the links of up to 16 images (HDF5: 8), not a heap and B-tree (1.1 KB)
            h5direct.set_property(gcpl, "H5Pset_link_phase_change", *_GROUP_COMPACT_LINKS)
            mdf = h5g.create(self._file.id, b"MDF")
            self._images = h5py.Group(h5g.create(mdf, b"images", gcpl=gcpl))
            self._attrs.share_types(self._file.id, _SHARED_TYPES)
            self._gcpl = h5p.create(h5p.GROUP_CREATE)
            self._gcpl.set_obj_track_times(False)
            self._gcpl.set_attr_phase_change(_IMAGE_MAX_COMPACT, _IMAGE_MIN_DENSE)
        self._attrs.create(self._images.id, "imageid_max", np.array([-1], dtype=np.int32))

    @staticmethod
    def _create_stack_file(path: str, stack: StackLayout) -> h5py.File:
        fcpl = h5p.create(h5p.FILE_CREATE)
        h5direct.set_property(fcpl, "H5Pset_istore_k", stack.istore_k)
        # the root's attributes (the provenance record and the kept source's hashes,
        # ~20) stay in its object header: past HDF5's 8, a fractal heap and a B-tree
        # for them cost ~2.5 KB
        fcpl.set_attr_phase_change(_ROOT_COMPACT_ATTRS, _ROOT_COMPACT_ATTRS - 2)
        fapl = h5p.create(h5p.FILE_ACCESS)
        fapl.set_libver_bounds(h5f.LIBVER_V18, h5f.LIBVER_V18)  # readable by HDF5 >= 1.8
        # HDF5's metadata cache may grow to 32 MB; a stack's images are written once and
        # not revisited, so a small cache keeps memory flat in the image count
        mdc = fapl.get_mdc_config()
        mdc.max_size = _STACK_MDC_BYTES
        mdc.initial_size = min(mdc.initial_size, _STACK_MDC_BYTES)
        mdc.min_size = min(mdc.min_size, _STACK_MDC_BYTES)
        fapl.set_mdc_config(mdc)
        # metadata is allocated from blocks of this size; with HDF5's 2 KB the leftover
        # of each block around the variable-size chunks is lost: ~100 bytes per image
        # in the file, and held in memory by the free-space manager (measured)
        fapl.set_meta_block_size(stack.meta_block)
        # chunks go where they are written, not into 2 KB blocks whose leftovers
        # are lost (481 bytes of a 4-image stack)
        h5direct.set_property(fapl, "H5Pset_small_data_block_size", 0)
        if hasattr(fapl, "set_file_locking"):
            fapl.set_file_locking(False, True)
        fid = h5f.create(path.encode(), h5f.ACC_TRUNC, fcpl=fcpl, fapl=fapl)
        return h5py.File(fid)

    def __enter__(self) -> EmanHdfWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _dcpl(
        self, dtype: np.dtype, chunks: tuple[int, ...], level: int, shuffle: bool, checksum: bool
    ) -> Any:
        key = (dtype, chunks, level, shuffle, checksum)
        dcpl = self._dcpls.get(key)
        if dcpl is None:
            dcpl = h5p.create(h5p.DATASET_CREATE)
            dcpl.set_chunk(chunks)
            if shuffle:
                dcpl.set_shuffle()
            dcpl.set_deflate(level)
            if checksum:  # last: it covers the deflated bytes
                dcpl.set_fletcher32()
            dcpl.set_obj_track_times(False)
            # no attributes go on the dataset: a minimal object header (HDF5 >= 1.10.5)
            h5direct.set_property(dcpl, "H5Pset_dset_no_attrs_hint", 1)
            self._dcpls[key] = dcpl
        return dcpl

    def create_image(
        self,
        index: int,
        shape: tuple[int, ...],
        bits: int,
        *,
        level: int = 1,
        chunks: tuple[int, ...] | None = None,
        shuffle: bool = False,
        checksum: bool = False,
    ) -> Any:
        """Create ``/MDF/images/<index>/image``, chunked with deflate (and shuffle;
        with ``checksum``, HDF5's Fletcher-32 filter last).

        Returns the low-level dataset (``write_direct_chunk`` writes its chunks, each
        ending with its checksum when ``checksum``: see :mod:`~e2compress.checksum`).
        """
        dtype = storage_dtype(bits)
        if self.stack is None:
            group = self._images.create_group(str(index))
            ds = group.create_dataset(
                "image",
                shape=shape,
                dtype=dtype,
                chunks=chunks,
                compression="gzip",
                compression_opts=level,
                shuffle=shuffle,
                fletcher32=checksum,
            )
            gid, dsid = group.id, ds.id
        else:
            name = str(index).encode()
            dcpl = self._dcpl(dtype, chunks or shape, level, shuffle, checksum)
            tid, space = self._h5type(dtype), self._space(shape)
            hid = None
            if self._direct is not None:
                hid = self._direct.create_group(self._images.id.id, name, self._gcpl.id)
            gid = h5g.GroupID(hid) if hid is not None else None
            if gid is None:  # h5py: the same call, or its error
                gid = h5g.create(self._images.id, name, gcpl=self._gcpl)
            hid = None
            if self._direct is not None:
                hid = self._direct.create_dataset(gid.id, b"image", tid.id, space.id, dcpl.id)
            if hid is not None:
                dsid = h5direct.wrap_dataset(hid)
            else:
                dsid = h5d.create(gid, b"image", tid, space, dcpl=dcpl)
        self._current = (index, gid)
        self._max_id = max(self._max_id, index)
        return dsid

    def _h5type(self, dtype: np.dtype) -> Any:
        tid = self._types.get(dtype)
        if tid is None:
            tid = self._types.setdefault(dtype, h5t.py_create(dtype))
        return tid

    def _space(self, shape: tuple[int, ...]) -> Any:
        space = self._spaces.get(shape)
        if space is None:
            space = self._spaces.setdefault(shape, h5s.create_simple(shape))
        return space

    def write_header(
        self, index: int, header: Mapping[str, Any], raw: Mapping[str, Any] | None = None
    ) -> None:
        """Write ``EMAN.<key>`` attributes (and ``raw`` ones under their own names) on
        image ``index``'s group. Raw values HDF5 or EMAN2 cannot store are left out."""
        if self._current is not None and self._current[0] == index:
            gid = self._current[1]
        else:
            gid = self._images[str(index)].id
        for key, value in header.items():
            self._attrs.create(gid, f"EMAN.{key}", value)
        for name, value in (raw or {}).items():
            try:
                self._attrs.create(gid, name, value)
            except (TypeError, ValueError):
                pass  # variable-length or exotic types EMAN2 cannot read either

    def write_group_header(self, header: Mapping[str, Any]) -> None:
        """Store keys shared by every image on ``/MDF/images`` (EMAN2: ``Group.<key>``).
        Values HDF5 or EMAN2 cannot store are left out."""
        for key, value in header.items():
            try:
                self._attrs.create(self._images.id, key, value)
            except (TypeError, ValueError):
                pass  # variable-length or exotic types EMAN2 cannot read either

    def close(self) -> None:
        """Record ``imageid_max`` and close the file."""
        if self._file.id.valid:
            self._current = None
            write_attr(self._images, "imageid_max", np.array([self._max_id], dtype=np.int32))
            self._file.close()


# --------------------------------------------------------------------------- reading


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


def value_dtype(stored: np.dtype, rng: RenderRange | None) -> np.dtype:
    """The type image values are decoded to: float32 (as EMAN2), but float64 where
    float32 cannot hold them (see :func:`~e2compress.quantize.decode_dtype`; plain
    32/64-bit integer or float64 datasets)."""
    if rng is not None:
        return decode_dtype(rng)
    return np.dtype(np.float64) if is_wide(stored) else np.dtype(np.float32)


def decode(codes: np.ndarray, rng: RenderRange | None) -> np.ndarray:
    """Stored dataset values to image values (EMAN2 §2.4, exact 0 and integers), in
    :func:`value_dtype`."""
    if rng is None:
        return codes.astype(value_dtype(codes.dtype, None), copy=False)
    if codes.dtype.kind == "u" and codes.dtype.itemsize <= 2:
        if codes.size <= code_max(rng.bits):
            return decode_values(codes, rng)
        return _Decoder.of(rng, codes.dtype, codes.size)(np.ascontiguousarray(codes))
    c = codes.astype(np.float64)
    values = c / ((1 << rng.bits) - 1) * (rng.rmax - rng.rmin) + rng.rmin
    return values.astype(decode_dtype(rng))


@dataclass(frozen=True)
class _Decoder:
    """Stored codes to values through a table (many pixels, few codes)."""

    rng: RenderRange
    table: np.ndarray

    @classmethod
    def of(cls, rng: RenderRange, dtype: np.dtype, size: int) -> _Decoder:
        """Table for every code of ``dtype``, but only the 2**bits codes of uint16 for
        images of fewer than 4 x 65536 pixels."""
        n = 1 << 8 * dtype.itemsize
        if size < 4 * n:
            n = min(n, code_max(rng.bits) + 1)
        return cls(rng, decode_values(np.arange(n), rng))

    def into(self, codes: np.ndarray, out: np.ndarray) -> None:
        """``out[...] = values of codes``. Codes beyond the table (uint16 above 2**bits-1,
        which EMAN2 and we never write) get EMAN2's formula, not a clipped value."""
        full = self.table.size >= 1 << 8 * codes.dtype.itemsize
        if not full and codes.size and int(codes.max()) >= self.table.size:
            out[...] = decode_values(codes, self.rng)
        else:
            np.take(self.table, codes, out=out, mode="clip")

    def __call__(self, codes: np.ndarray) -> np.ndarray:
        out = np.empty(codes.shape, dtype=self.table.dtype)
        self.into(codes, out)
        return out


@dataclass(frozen=True)
class _Layout:
    """What a dataset's creation properties say about reading its chunks raw."""

    chunks: tuple[int, ...] | None
    filters: tuple[int, ...]

    @property
    def raw_readable(self) -> bool:
        """Chunked with only deflate, shuffle and Fletcher-32: chunks can be decoded
        (and their checksums verified) here."""
        return self.chunks is not None and all(
            f in (_DEFLATE, _SHUFFLE, _FLETCHER32) for f in self.filters
        )


def _layout_of(plist: Any) -> _Layout:
    if plist.get_layout() != h5d.CHUNKED:
        return _Layout(None, ())
    filters = tuple(plist.get_filter(k)[0] for k in range(plist.get_nfilters()))
    return _Layout(tuple(plist.get_chunk()), filters)


def _decode_chunk(
    raw: bytes, mask: int, filters: tuple[int, ...], nbytes: int, dtype: np.dtype
) -> np.ndarray:
    data: bytes = raw
    for k in reversed(range(len(filters))):
        if mask & (1 << k):
            continue
        if filters[k] == _DEFLATE:
            data = codecs.inflate(data, nbytes)
        elif filters[k] == _FLETCHER32:
            data = checksum.strip(data)
        else:
            data = codecs.unshuffle(data, dtype).tobytes()
    return np.frombuffer(data, dtype=dtype)


class _Unallocated(Exception):
    """A chunk was never written (HDF5 returns the fill value for it)."""


def _read_chunks(
    dsid: Any,
    layout: _Layout,
    shape: tuple[int, ...],
    dtype: np.dtype,
    pool: Executor | None,
    decoder: _Decoder | None,
) -> np.ndarray:
    """Decode every chunk of ``dsid`` here (raw reads, our inflate), then the codes."""
    chunks = layout.chunks
    assert chunks is not None
    nbytes = math.prod(chunks) * dtype.itemsize
    out = np.empty(shape, dtype=dtype if decoder is None else decoder.table.dtype)
    if chunks == shape:  # one chunk (small images): no regions to cut
        mask, raw = _raw_chunk(dsid, (0,) * len(shape))
        block = _decode_chunk(raw, mask, layout.filters, nbytes, dtype).reshape(shape)
        if decoder is None:
            out[...] = block
        else:
            decoder.into(block, out)
        return out

    def work(offset: tuple[int, ...], mask: int, raw: bytes) -> None:
        block = _decode_chunk(raw, mask, layout.filters, nbytes, dtype).reshape(chunks)
        region = tuple(
            slice(o, min(o + c, s)) for o, c, s in zip(offset, chunks, shape, strict=True)
        )
        part = block[tuple(slice(0, r.stop - r.start) for r in region)]
        target = out[region]
        if decoder is None:
            target[...] = part
        elif target.flags.c_contiguous:
            decoder.into(part, target)
        else:
            target[...] = decoder(np.ascontiguousarray(part))

    futures: list[Future[None]] = []
    try:
        grid = (range(0, s, c) for s, c in zip(shape, chunks, strict=True))
        for offset in itertools.product(*grid):
            mask, raw = _raw_chunk(dsid, offset)
            if pool is None:
                work(offset, mask, raw)
            else:
                futures.append(pool.submit(work, offset, mask, raw))
    finally:
        for fut in futures:
            fut.result()
    return out


def _raw_chunk(dsid: Any, offset: tuple[int, ...]) -> tuple[int, bytes]:
    try:
        mask, raw = dsid.read_direct_chunk(offset)
    except RuntimeError:  # "chunk storage is not allocated"
        raise _Unallocated from None
    return int(mask), raw


def _read_all(dsid: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The whole dataset through HDF5's own filters (fill values included)."""
    out = np.empty(shape, dtype=dtype.newbyteorder("="))
    if out.size:
        dsid.read(h5s.ALL, h5s.ALL, out)
    return out


def _read_values(
    dsid: Any,
    layout: _Layout,
    shape: tuple[int, ...],
    dtype: np.dtype,
    pool: Executor | None,
    decoder: _Decoder | None,
) -> np.ndarray:
    if layout.raw_readable and 0 not in shape and dtype.byteorder != ">":
        try:
            return _read_chunks(dsid, layout, shape, dtype, pool, decoder)
        except _Unallocated:
            pass
    data = _read_all(dsid, shape, dtype)
    return data if decoder is None else decoder(data)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _open_h5(path: str, locking: bool | None) -> h5py.File:
    """Open read-only with a small metadata cache (see :func:`_bound_cache`); retry
    without HDF5 file locking where locks are refused."""
    if locking is not None:
        return _bound_cache(h5py.File(path, "r", locking=locking))
    try:
        return _bound_cache(h5py.File(path, "r"))
    except OSError as exc:
        if "lock" not in str(exc).lower():
            raise
        return _bound_cache(h5py.File(path, "r", locking=False))


def _bound_cache(f: h5py.File) -> h5py.File:
    """Cap the HDF5 metadata cache of a file being read at _READ_MDC_BYTES.

    HDF5 lets it grow to 32 MB of accounted size, about 10x that in memory (measured:
    +120 MB after opening the 20,000 datasets of a stack; +2 MB with this cap, at the
    same speed). Each image's metadata is visited once; the group's index stays cached.
    """
    config = f.id.get_mdc_config()
    config.max_size = _READ_MDC_BYTES
    config.min_size = min(config.min_size, _READ_MDC_BYTES)
    config.initial_size = min(config.initial_size, _READ_MDC_BYTES)
    config.set_initial_size = True
    f.id.set_mdc_config(config)
    return f


def _read_attr(gid: Any, name: bytes) -> Any:
    """``attrs[name]`` of low-level group ``gid``, with low-level calls for numbers and
    fixed-length strings (1.7x faster than h5py's general path, which does the rest)."""
    aid = h5a.open(gid, name)
    dtype = aid.dtype
    if dtype.kind not in "iufS" or aid.get_space().get_simple_extent_type() == h5s.NULL:
        return h5py.Group(gid).attrs[name.decode()]
    shape = aid.shape
    out = np.empty(shape, dtype=dtype)
    aid.read(out)
    return out if shape else out[()]


_RANGE_ATTRS = (
    (b"EMAN.stored_renderbits", _I32),
    (b"EMAN.stored_rendermin", _F32),
    (b"EMAN.stored_rendermax", _F32),
)
_RANGE_DIRECT = tuple((name, "i" if dt == _I32 else "f") for name, dt in _RANGE_ATTRS)
_MAX_KNOWN = 16  # dataset types / creation property lists remembered per file


class EmanHdfFile:
    """A lazily read EMAN2 HDF file: ``len()``, ``f[i]`` (decoded), ``f.header(i)``.

    Reading an image opens only that image's dataset and its three mapping attributes
    (low-level h5py calls); nothing is read for the other images.
    """

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
        self._images_id = self._images.id
        self._threads = threads or os.cpu_count() or 1
        self._pool: ThreadPoolExecutor | None = None
        self._group_attrs: dict[str, Any] | None = None
        self._mtypes = {dt: h5t.py_create(dt) for dt in (_I32, _F32)}
        # dataset types and creation property lists seen so far (h5py objects kept
        # alive for comparisons) with what they mean; a stack has one of each
        self._types: list[Any] = []
        self._dtypes: list[np.dtype] = []
        self._plists: list[Any] = []
        self._layouts: list[_Layout] = []
        lib = h5direct.library()
        self._direct = h5direct.Reader(lib) if lib is not None else None

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
        self._types.clear()
        self._plists.clear()
        if self._file.id.valid:
            self._file.close()

    @property
    def h5file(self) -> h5py.File:
        """The open h5py file (for what lies outside ``/MDF``, e.g. kept source bytes)."""
        return self._file

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self._count:
            raise IndexError(f"image {index} out of range (file has {self._count})")

    def _dsid(self, index: int) -> Any:
        """The low-level dataset of image ``index``."""
        self._check_index(index)
        try:
            return h5d.open(self._images_id, b"%d/image" % index)
        except KeyError:
            raise InputError(f"image {index} does not exist", self.path) from None
        except (OSError, RuntimeError, ValueError) as exc:
            raise InputError(f"image {index} is damaged ({_first_line(exc)})", self.path) from None

    def _group_id(self, index: int) -> Any:
        """The low-level group of image ``index`` (its dataset is not opened)."""
        self._check_index(index)
        try:
            return h5g.open(self._images_id, b"%d" % index)
        except KeyError:
            raise InputError(f"image {index} does not exist", self.path) from None
        except (OSError, RuntimeError, ValueError) as exc:
            raise InputError(f"image {index} is damaged ({_first_line(exc)})", self.path) from None

    def dataset(self, index: int) -> h5py.Dataset:
        """The raw h5py dataset of image ``index``."""
        return h5py.Dataset(self._dsid(index))

    def render_range(self, index: int) -> RenderRange | None:
        """The stored quantisation mapping of image ``index`` (None for float data)."""
        self._open(index)  # the image must exist
        return self._range(index)

    def value_dtype(self, index: int) -> np.dtype:
        """The type ``f[index]`` returns: float32, or float64 where float32 cannot hold
        the stored values (:func:`value_dtype`)."""
        _, _, dtype, _ = self._open(index)
        return value_dtype(dtype, self._range(index))

    def _range(self, index: int) -> RenderRange | None:
        """The mapping, read with three attribute reads; general parser if unusual."""
        name = b"%d" % index
        if self._direct is not None:
            got = self._direct.read_scalars(self._images_id.id, name, _RANGE_DIRECT)
            if got is False:
                return None
            if got is not None:
                bits, rmin, rmax = got
                return RenderRange(int(bits), rmin, rmax) if 0 < bits <= 16 else None
        values = []
        try:
            for attr, dtype in _RANGE_ATTRS:
                aid = h5a.open(self._images_id, attr, obj_name=name)
                if aid.get_storage_size() != 4:  # not one 4-byte number
                    return render_range(self._images[str(index)].attrs)
                buf = np.empty(1, dtype=dtype)
                aid.read(buf, mtype=self._mtypes[dtype])
                values.append(buf[0])
        except KeyError:
            return None
        except (OSError, RuntimeError, TypeError, ValueError):
            return render_range(self._images[str(index)].attrs)
        bits = int(values[0])
        if bits <= 0 or bits > 16:
            return None
        return RenderRange(bits, float(values[1]), float(values[2]))

    def _dtype(self, dsid: Any, known: int = -1) -> np.dtype:
        """The dataset's element type (``known``: its position in ``self._types``)."""
        if known >= 0:
            return self._dtypes[known]
        tid = dsid.get_type()
        dtype: np.dtype = tid.dtype
        if len(self._types) < _MAX_KNOWN:
            self._types.append(tid)
            self._dtypes.append(dtype)
        return dtype

    def _layout_for(self, dsid: Any, known: int = -1) -> _Layout:
        """The dataset's chunk layout (``known``: its position in ``self._plists``)."""
        if known >= 0:
            return self._layouts[known]
        plist = dsid.get_create_plist()
        layout = _layout_of(plist)
        if len(self._plists) < _MAX_KNOWN:
            self._plists.append(plist)
            self._layouts.append(layout)
        return layout

    def _open(self, index: int) -> tuple[Any, tuple[int, ...], np.dtype, _Layout]:
        """Image ``index``'s dataset, dims, element type and layout.

        Direct HDF5 calls where possible (see :mod:`h5direct`), else h5py (which also
        gives the errors).
        """
        self._check_index(index)
        direct = self._direct
        if direct is not None:
            hid = direct.open_dataset(self._images_id.id, b"%d/image" % index)
            if hid is not None:
                dsid = h5direct.wrap_dataset(hid)
                info = direct.info(hid, self._types, self._plists)
                if info is not None:
                    dtype = self._dtype(dsid, info.type_index)
                    return dsid, info.dims, dtype, self._layout_for(dsid, info.plist_index)
        dsid = self._dsid(index)
        try:
            shape = dsid.get_space().get_simple_extent_dims()
            return dsid, shape, self._dtype(dsid), self._layout_for(dsid)
        except (OSError, RuntimeError, ValueError) as exc:
            raise InputError(f"image {index} is damaged ({_first_line(exc)})", self.path) from None

    def shape(self, index: int) -> tuple[int, ...]:
        """Shape of image ``index``: (ny, nx) or (nz, ny, nx)."""
        return self._open(index)[1]

    def raw_attrs(self, index: int) -> dict[str, Any]:
        """Attributes of image ``index`` as stored (names with their ``EMAN.`` prefix)."""
        gid = self._group_id(index)
        out: dict[str, Any] = {}
        names: list[bytes] = []
        try:
            h5a.iterate(gid, names.append)
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise InputError(
                f"image {index} has damaged attributes ({_first_line(exc)})", self.path
            ) from None
        for raw in names:
            try:
                name = raw.decode()
            except UnicodeDecodeError:
                continue  # a damaged, non-UTF-8 name: not an EMAN2 key
            try:
                out[name] = _read_attr(gid, raw)
            except (OSError, RuntimeError, TypeError, ValueError):
                continue
        return out

    def group_attrs(self) -> dict[str, Any]:
        """Attributes of ``/MDF/images`` other than ``imageid_max``, as stored: keys
        shared by all images (EMAN2 shows them as ``Group.<name>``)."""
        if self._group_attrs is None:
            out: dict[str, Any] = {}
            try:
                names = list(self._images.attrs)
            except (OSError, RuntimeError, KeyError, ValueError):
                names = []
            for name in names:
                if isinstance(name, str) and name != "imageid_max":
                    try:
                        out[name] = self._images.attrs[name]
                    except (OSError, RuntimeError, TypeError, ValueError):
                        continue
            self._group_attrs = out
        return dict(self._group_attrs)

    def group_header(self) -> dict[str, Any]:
        """:meth:`group_attrs` as EMAN2 reports them: ``Group.<name>``, plain values."""
        return {f"Group.{name}": _plain(value) for name, value in self.group_attrs().items()}

    def header(self, index: int) -> dict[str, Any]:
        """Header of image ``index`` as EMAN2 reports it (prefix stripped, ``Group.*``)."""
        out = self.group_header()
        for name, value in self.raw_attrs(index).items():
            key = name[5:] if name.startswith("EMAN.") else name
            out[key] = _plain(value)
        shape = self.shape(index)
        out["nx"], out["ny"], out["nz"] = [*shape[::-1], 1, 1][:3]
        return out

    def _read(self, index: int, rng: RenderRange | None, decoded: bool) -> np.ndarray:
        dsid, shape, dtype, layout = self._open(index)
        try:
            size = math.prod(shape)
            pool = self._executor() if size * dtype.itemsize >= POOL_MIN_BYTES else None
            decoder = None
            unsigned = dtype.kind == "u" and dtype.itemsize <= 2
            # a table is cheaper than per-pixel arithmetic when there are more pixels
            if decoded and rng is not None and unsigned and size > code_max(rng.bits):
                decoder = _Decoder.of(rng, dtype, size)
            values = _read_values(dsid, layout, shape, dtype, pool, decoder)
        except (OSError, RuntimeError, ValueError) as exc:
            raise InputError(f"cannot read image {index} ({_first_line(exc)})", self.path) from None
        if not decoded or decoder is not None:
            return values
        return decode(values, rng)

    def read_codes(self, index: int) -> np.ndarray:
        """The stored values of image ``index`` without rescaling."""
        return self._read(index, None, decoded=False)

    def _executor(self) -> Executor | None:
        if self._pool is None and self._threads > 1:
            self._pool = ThreadPoolExecutor(max_workers=self._threads)
        return self._pool

    def __getitem__(self, index: int) -> np.ndarray:
        if index < 0:
            index += self._count
        self._check_index(index)
        return self._read(index, self._range(index), decoded=True)

    def read_region(self, index: int, region: tuple[int | slice, ...]) -> np.ndarray:
        """Decoded values of a slice of image ``index`` (reads only the chunks needed)."""
        shape = self.shape(index)
        whole = len(region) <= len(shape) and all(
            isinstance(r, slice) and r.indices(s) == (0, s, 1)
            for r, s in zip(region, shape, strict=False)
        )
        if whole:
            return self[index]
        ds = self.dataset(index)
        return decode(np.asarray(ds[region]), self._range(index))
