"""HDF5's Fletcher-32 chunk checksum, for chunks written with ``write_direct_chunk``.

``write_direct_chunk`` bypasses HDF5's filter pipeline, so a chunk of a dataset whose
pipeline ends with the Fletcher-32 filter must already carry what that filter appends:
the checksum of the (deflated) bytes, 4 bytes little-endian, last. Every HDF5 reader
(h5py, EMAN2, h5dump...) then checks it on read with no plugin.

The checksum is HDF5's own ``H5_checksum_fletcher32`` (called in the library h5py
runs on, without the GIL) where it can be reached, else the same sums in numpy: 16-bit
big-endian words (an odd last byte padded with a zero byte), both sums kept as
ones'-complement sums modulo 65535 (0 only when every word is 0).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from typing import Any

import h5py
import numpy as np

SIZE = 4  # bytes HDF5's filter appends
_MOD = 65535
_PIECE = 1 << 20  # words summed at once by the numpy version (no uint64 overflow)

Buffer = bytes | bytearray | memoryview


def _ones(total: int) -> int:
    """A ones'-complement 16-bit sum as HDF5 leaves it: 0 only for 0, else 1..65535."""
    return 0 if total == 0 else (total - 1) % _MOD + 1


def fletcher32_numpy(data: Buffer) -> int:
    """HDF5's Fletcher-32 of ``data`` computed in numpy (see the module docstring)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size % 2:
        raw = np.concatenate([raw, np.zeros(1, dtype=np.uint8)])
    words = raw.view(">u2")
    n = words.size
    s1 = s2 = 0
    for start in range(0, n, _PIECE):
        w = words[start : start + _PIECE].astype(np.uint64)
        # the words after this piece add its whole sum once each
        weights = np.arange(n - start, n - start - w.size, -1, dtype=np.uint64)
        s1 += int(w.sum())
        s2 += int(np.dot(weights, w))
    return (_ones(s2) << 16) | _ones(s1)


@functools.cache
def _hdf5_function() -> Callable[[Any, int], int] | None:
    """HDF5's ``H5_checksum_fletcher32`` in the library h5py uses, or None."""
    try:
        dll = ctypes.CDLL(h5py.h5p.__file__)  # its dependencies include libhdf5
        fn = dll.H5_checksum_fletcher32
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_uint32
    fn.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    result: Callable[[Any, int], int] = fn
    return result


def fletcher32(data: Buffer) -> int:
    """HDF5's Fletcher-32 checksum of ``data`` (what its filter stores for a chunk)."""
    fn = _hdf5_function()
    if fn is None:
        return fletcher32_numpy(data)
    buf = data if isinstance(data, bytes) else bytes(data)
    return int(fn(buf, len(buf)))


def append(data: Buffer) -> bytes:
    """``data`` followed by its checksum, as HDF5's Fletcher-32 filter stores a chunk."""
    buf = data if isinstance(data, bytes) else bytes(data)
    return buf + fletcher32(buf).to_bytes(SIZE, "little")


def _swapped(value: int) -> int:
    """The checksum with the bytes of each 16-bit half swapped, which HDF5 also accepts
    (written by HDF5 before 1.6.3 on little-endian machines)."""
    return ((value & 0x00FF00FF) << 8) | ((value >> 8) & 0x00FF00FF)


def strip(chunk: Buffer) -> bytes:
    """The bytes of a stored chunk without its checksum, once the checksum is verified
    as HDF5 verifies it.

    Raises:
        ValueError: the chunk is shorter than a checksum or the checksum does not match.
    """
    buf = chunk if isinstance(chunk, bytes) else bytes(chunk)
    if len(buf) < SIZE:
        raise ValueError(f"chunk of {len(buf)} bytes cannot hold a Fletcher-32 checksum")
    body = buf[:-SIZE]
    stored = int.from_bytes(buf[-SIZE:], "little")
    computed = fletcher32(body)
    if stored not in (computed, _swapped(computed)):
        raise ValueError(
            f"Fletcher-32 checksum mismatch (stored {stored:08x}, computed {computed:08x})"
        )
    return body
