"""Deflate engines for chunks: zlib-format streams that HDF5's deflate filter decodes.

``--compresslevel`` keeps zlib's 0..9 meaning; :func:`engine_for_level` maps it onto
the fastest installed engine that reaches at least zlib's ratio at that level.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

_isal: Any
_libdeflate: Any
try:  # ISA-L: fastest level-1 deflate on x86-64 and aarch64
    from isal import isal_zlib as _isal
except ImportError:  # pragma: no cover - exercised only without the wheel
    _isal = None

try:  # libdeflate: fast at every level, strongest at 10..12
    import deflate as _libdeflate
except ImportError:  # pragma: no cover
    _libdeflate = None

Compressor = Callable[[bytes | memoryview], bytes | bytearray]


@dataclass(frozen=True)
class Engine:
    """A named deflate setting that turns a chunk's bytes into a zlib stream."""

    name: str
    compress: Compressor


def _zlib(level: int, strategy: int = zlib.Z_DEFAULT_STRATEGY) -> Compressor:
    def run(buf: bytes | memoryview) -> bytes:
        c = zlib.compressobj(level, zlib.DEFLATED, 15, 9, strategy)
        return c.compress(buf) + c.flush()

    if strategy == zlib.Z_DEFAULT_STRATEGY:
        return lambda buf: zlib.compress(buf, level)
    return run


def available_engines() -> list[str]:
    """Names of the optional fast engines installed."""
    names = ["zlib"]
    if _isal is not None:
        names.append("isal")
    if _libdeflate is not None:
        names.append("libdeflate")
    return names


def engine_for_level(level: int) -> Engine:
    """The engine used for zlib-style ``level`` 0..9."""
    if not 0 <= level <= 9:
        raise ValueError(f"compression level must be 0..9, not {level}")
    if level == 0:
        return Engine("zlib-0 (stored)", _zlib(0))
    if level == 1:
        if _isal is not None:
            isal = _isal
            return Engine("isal-1", lambda buf: isal.compress(buf, 1))
        if _libdeflate is not None:
            lib = _libdeflate
            return Engine("libdeflate-1", lambda buf: lib.zlib_compress(bytes(buf), 1))
        return Engine("zlib-1", _zlib(1))
    if _libdeflate is not None:
        lib = _libdeflate
        lvl = {2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 8, 8: 10, 9: 12}[level]
        return Engine(f"libdeflate-{lvl}", lambda buf: lib.zlib_compress(bytes(buf), lvl))
    return Engine(f"zlib-{level}", _zlib(level))


def inflate(data: bytes | memoryview, size: int) -> bytes:
    """Decode one zlib stream of known decoded ``size``."""
    if _libdeflate is not None:
        return bytes(_libdeflate.zlib_decompress(bytes(data), size))
    if _isal is not None:
        return bytes(_isal.decompress(data))
    return zlib.decompress(data)


def shuffle(codes: np.ndarray) -> np.ndarray:
    """HDF5 shuffle filter: byte planes of the chunk one after the other."""
    flat = np.ascontiguousarray(codes).reshape(-1)
    if flat.dtype.itemsize == 1:
        return flat.view(np.uint8)
    return np.ascontiguousarray(flat.view(np.uint8).reshape(-1, flat.dtype.itemsize).T).reshape(-1)


def unshuffle(buf: bytes | np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Inverse of :func:`shuffle`, returning a flat array of ``dtype``."""
    raw = np.frombuffer(buf, dtype=np.uint8)
    size = dtype.itemsize
    if size == 1:
        return raw.view(dtype)
    return np.ascontiguousarray(raw.reshape(size, -1).T).reshape(-1).view(dtype)
