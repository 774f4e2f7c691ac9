"""Direct calls into the HDF5 library h5py runs on, for the per-image hot paths.

h5py wraps every HDF5 identifier in a Python object (registry, lock, error
translation), about 5 us per call. A small image of a stack takes a dozen calls to
read or write, so that wrapping costs more than the pixels (measured: 120 -> 80 us
per 32x32 image read). This module calls the same C functions of the same library
through ctypes, holding h5py's lock and the GIL as h5py does, for those few calls.

Everything here is optional: :func:`library` is None where the library cannot be
reached (no POSIX ``dlsym`` through h5py's extension modules, e.g. Windows), and every
function returns None on any HDF5 failure; callers then use h5py, which also reports
the error properly. Identifiers are ``hid_t`` = int64 (HDF5 >= 1.10, which h5py 3
requires); ``H5P_DEFAULT`` is 0.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

HID = ctypes.c_int64
HERR = ctypes.c_int
HSIZE = ctypes.c_uint64
DEFAULT = 0  # H5P_DEFAULT
MAX_RANK = 32  # H5S_MAX_RANK

# name: (restype, argtypes)
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "H5Dopen2": (HID, [HID, ctypes.c_char_p, HID]),
    "H5Dget_space": (HID, [HID]),
    "H5Dget_type": (HID, [HID]),
    "H5Dget_create_plist": (HID, [HID]),
    "H5Sget_simple_extent_dims": (ctypes.c_int, [HID, ctypes.c_void_p, ctypes.c_void_p]),
    "H5Sclose": (HERR, [HID]),
    "H5Tequal": (ctypes.c_int, [HID, HID]),
    "H5Tclose": (HERR, [HID]),
    "H5Pequal": (ctypes.c_int, [HID, HID]),
    "H5Pget_layout": (ctypes.c_int, [HID]),
    "H5Pget_chunk": (ctypes.c_int, [HID, ctypes.c_int, ctypes.c_void_p]),
    "H5Pclose": (HERR, [HID]),
    "H5Aopen_by_name": (HID, [HID, ctypes.c_char_p, ctypes.c_char_p, HID, HID]),
    "H5Aget_storage_size": (HSIZE, [HID]),
    "H5Aread": (HERR, [HID, HID, ctypes.c_void_p]),
    "H5Aclose": (HERR, [HID]),
    "H5Acreate2": (HID, [HID, ctypes.c_char_p, HID, HID, HID, HID]),
    "H5Awrite": (HERR, [HID, HID, ctypes.c_void_p]),
    "H5Gcreate2": (HID, [HID, ctypes.c_char_p, HID, HID, HID]),
    "H5Dcreate2": (HID, [HID, ctypes.c_char_p, HID, HID, HID, HID, HID]),
}


# Property-list settings h5py does not wrap; each may be missing from older libraries
# (H5Pset_dset_no_attrs_hint: HDF5 >= 1.10.5) without disabling the rest.
_OPTIONAL: dict[str, tuple[Any, list[Any]]] = {
    "H5Pset_istore_k": (HERR, [HID, ctypes.c_uint]),
    "H5Pset_dset_no_attrs_hint": (HERR, [HID, ctypes.c_bool]),
    "H5Tcommit_anon": (HERR, [HID, HID, HID, HID]),
    "H5Pset_small_data_block_size": (HERR, [HID, HSIZE]),
    "H5Pset_link_phase_change": (HERR, [HID, ctypes.c_uint, ctypes.c_uint]),
}


@dataclass(frozen=True)
class Library:
    """The HDF5 functions above, bound to h5py's library, and h5py's lock."""

    f: Any  # namespace of ctypes functions
    lock: AbstractContextManager[Any]


class _Functions:
    pass


@functools.cache
def library() -> Library | None:
    """The HDF5 library h5py uses, or None where it cannot be called directly."""
    if h5py.version.hdf5_version_tuple < (1, 10, 0):  # hid_t was 32-bit before
        return None
    try:
        from h5py._objects import phil  # h5py's lock around every HDF5 call

        dll = ctypes.PyDLL(h5py.h5p.__file__)  # its dependencies include libhdf5
        funcs = _Functions()
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(dll, name)
            fn.restype, fn.argtypes = restype, argtypes
            setattr(funcs, name, fn)
    except (ImportError, OSError, AttributeError):
        return None
    for name, (restype, argtypes) in _OPTIONAL.items():
        fn = getattr(dll, name, None)
        if fn is not None:
            fn.restype, fn.argtypes = restype, argtypes
        setattr(funcs, name, fn)
    return Library(funcs, phil)


def set_property(plist: Any, name: str, *values: int) -> bool:
    """``name(plist, *values)`` for a property-list setting h5py does not wrap (see
    ``_OPTIONAL``); False where the function is unavailable or fails."""
    lib = library()
    fn = getattr(lib.f, name, None) if lib is not None else None
    if lib is None or fn is None:
        return False
    with lib.lock:
        return int(fn(plist.id, *values)) >= 0


def commit_type(loc: Any, tid: Any) -> bool:
    """Store datatype ``tid`` (h5py TypeID) in the file of ``loc`` as an unnamed object
    (``H5Tcommit_anon``): attributes of that type then refer to it instead of each
    holding its own description. False where unavailable or refused (``tid`` is
    unchanged then)."""
    lib = library()
    fn = getattr(lib.f, "H5Tcommit_anon", None) if lib is not None else None
    if lib is None or fn is None:
        return False
    with lib.lock:
        return int(fn(loc.id, tid.id, DEFAULT, DEFAULT)) >= 0


def wrap_dataset(hid: int) -> Any:
    """An h5py low-level dataset owning ``hid`` (it closes it)."""
    return h5py.h5d.DatasetID(hid)


@dataclass(frozen=True)
class DatasetInfo:
    """Dims of a dataset and the positions of its file type and creation property list
    among known ones (-1: none equal)."""

    dims: tuple[int, ...]
    type_index: int
    plist_index: int


class Reader:
    """The direct read path. Thread-safe: buffers are used under h5py's lock only."""

    def __init__(self, lib: Library) -> None:
        self.lib = lib
        self._dims = np.zeros(MAX_RANK, dtype=np.uint64)
        self._dims_ptr = self._dims.ctypes.data
        self._int = np.zeros(1, dtype=np.int32)
        self._float = np.zeros(1, dtype=np.float32)
        # (memory type, buffer, its address) per kind; HDF5 converts into these
        self._targets = {
            "i": (h5py.h5t.NATIVE_INT32.id, self._int, self._int.ctypes.data),
            "f": (h5py.h5t.NATIVE_FLOAT.id, self._float, self._float.ctypes.data),
        }

    def open_dataset(self, loc: int, path: bytes) -> int | None:
        """The dataset at ``path`` relative to ``loc``, or None (absent, damaged...)."""
        with self.lib.lock:
            hid = int(self.lib.f.H5Dopen2(loc, path, DEFAULT))
        return hid if hid >= 0 else None

    def info(
        self,
        hid: int,
        types: Sequence[Any],
        plists: Sequence[Any],
        chunks: Sequence[tuple[int, ...] | None],
    ) -> DatasetInfo | None:
        """Dims of dataset ``hid``, and which of ``types`` (h5py TypeIDs) and ``plists``
        (h5py PropDCIDs, whose chunk shapes are ``chunks``: None when not chunked) equal
        its type and creation properties; None on failure.

        H5Pequal alone is not enough: HDF5 2.0 calls two lists equal whose chunk shapes
        differ (images of several sizes in one file), so the chunk shape is compared too.
        """
        f = self.lib.f
        with self.lib.lock:
            space = int(f.H5Dget_space(hid))
            if space < 0:
                return None
            rank = int(f.H5Sget_simple_extent_dims(space, self._dims_ptr, None))
            f.H5Sclose(space)
            if not 0 <= rank <= MAX_RANK:
                return None
            dims = tuple(int(d) for d in self._dims[:rank])
            tid = int(f.H5Dget_type(hid))
            if tid < 0:
                return None
            type_index = _find(f.H5Tequal, tid, types)
            f.H5Tclose(tid)
            pid = int(f.H5Dget_create_plist(hid))
            if pid < 0:
                return None
            chunk = self._chunk(pid)
            plist_index = next(
                (
                    k
                    for k, known in enumerate(plists)
                    if chunks[k] == chunk and int(f.H5Pequal(pid, known.id)) > 0
                ),
                -1,
            )
            f.H5Pclose(pid)
        return DatasetInfo(dims, type_index, plist_index)

    def _chunk(self, pid: int) -> tuple[int, ...] | None:
        """The chunk shape of creation property list ``pid`` (None: not chunked); call
        under the lock."""
        f = self.lib.f
        if int(f.H5Pget_layout(pid)) != h5py.h5d.CHUNKED:
            return None
        rank = int(f.H5Pget_chunk(pid, MAX_RANK, self._dims_ptr))
        return tuple(int(d) for d in self._dims[:rank]) if rank > 0 else ()

    def read_scalars(self, loc: int, obj: bytes, names: Sequence[tuple[bytes, str]]) -> Any:
        """Attributes ``names`` (name, "i" for int32 or "f" for float32, converted by
        HDF5) of object ``obj`` in ``loc``, as a tuple of numbers. False when the first
        one is absent; None when any is not one 4-byte number or a call fails."""
        f = self.lib.f
        values: list[float] = []
        with self.lib.lock:
            for k, (name, kind) in enumerate(names):
                aid = f.H5Aopen_by_name(loc, obj, name, DEFAULT, DEFAULT)
                if aid < 0:
                    return False if k == 0 else None
                try:
                    if f.H5Aget_storage_size(aid) != 4:
                        return None
                    mtype, buf, ptr = self._targets[kind]
                    if f.H5Aread(aid, mtype, ptr) < 0:
                        return None
                    values.append(buf[0].item())
                finally:
                    f.H5Aclose(aid)
        return tuple(values)


def _find(equal: Any, hid: int, known: Sequence[Any]) -> int:
    for k, obj in enumerate(known):
        if int(equal(hid, obj.id)) > 0:
            return k
    return -1


class Writer:
    """The direct write path: groups, datasets and attributes of a stack's images."""

    def __init__(self, lib: Library) -> None:
        self.lib = lib

    def create_group(self, loc: int, name: bytes, gcpl: int) -> int | None:
        """A new group ``name`` in ``loc``, or None."""
        with self.lib.lock:
            hid = int(self.lib.f.H5Gcreate2(loc, name, DEFAULT, gcpl, DEFAULT))
        return hid if hid >= 0 else None

    def create_dataset(
        self, loc: int, name: bytes, type_id: int, space_id: int, dcpl: int
    ) -> int | None:
        """A new dataset ``name`` in ``loc``, or None."""
        with self.lib.lock:
            hid = int(self.lib.f.H5Dcreate2(loc, name, type_id, space_id, DEFAULT, dcpl, DEFAULT))
        return hid if hid >= 0 else None

    def create_attr(self, loc: int, name: bytes, type_id: int, space_id: int, data: int) -> None:
        """Create attribute ``name`` on ``loc`` holding the bytes at address ``data``
        (of the attribute's type and size). Raises OSError when HDF5 refuses."""
        f = self.lib.f
        with self.lib.lock:
            aid = f.H5Acreate2(loc, name, type_id, space_id, DEFAULT, DEFAULT)
            if aid < 0:
                raise OSError(f"HDF5 could not create attribute {name.decode(errors='replace')}")
            ok = f.H5Awrite(aid, type_id, data) >= 0
            f.H5Aclose(aid)
        if not ok:
            raise OSError(f"HDF5 could not write attribute {name.decode(errors='replace')}")
