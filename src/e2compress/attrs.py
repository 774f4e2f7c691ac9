"""EMAN2 header attributes in HDF5: which type each value is stored as, and how
attributes are written and read back (spec §1.5).

EMAN2 stores a header number as a one-element array of its type (int32, float32;
float64 past float32's range), a bool as the int8 character ``T``/``F``, and a string as
a fixed-length NUL-terminated string. :class:`AttrMaker` writes them with the low-level
API (and, for stacks, direct HDF5 calls); :func:`read_attr` and :func:`plain_value` read
them back as EMAN2 presents them.
"""

from __future__ import annotations

import math
from typing import Any

import h5py
import numpy as np
from h5py import h5a, h5s, h5t

from . import h5direct
from .quantize import F32_MAX

STORED_KEYS = ("stored_rendermin", "stored_rendermax", "stored_renderbits", "stored_truncated")
# header keys of an input that describe its storage, never copied into an output
NEVER_COPIED = frozenset(
    (*STORED_KEYS, "render_min", "render_max", "render_bits", "render_compress_level", "datatype")
)
_I32, _F32 = np.dtype("<i4"), np.dtype("<f4")
# Python types of header values stored as one number of EMAN2's type for them
_SCALARS: dict[type, np.dtype] = {np.float32: _F32, np.int32: _I32, int: _I32}


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


class AttrMaker:
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
    AttrMaker().create(group.id, name, value)


def plain_value(value: Any) -> Any:
    """Attribute value as EMAN2's reader presents it (spec §1.5)."""
    if isinstance(value, bytes):
        return value.split(b"\0", 1)[0].decode("ascii", "replace")
    if isinstance(value, np.bytes_):
        return plain_value(bytes(value))
    if isinstance(value, np.ndarray):
        if value.dtype.names:
            return np.array([value[n] for n in value.dtype.names], dtype=np.float32).reshape(3, 4)
        if value.dtype.kind == "S":
            return plain_value(value.reshape(-1)[0])
        if value.size == 1:
            item = value.reshape(-1)[0]
            if value.dtype.kind in "iu" and value.dtype.itemsize == 1:
                return bool(item == ord("T"))
            return item.item()
        return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_attr(gid: Any, name: bytes) -> Any:
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
