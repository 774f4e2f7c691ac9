"""Compiled inner loops for the hot path (numba, optional), each with a numpy twin.

What the numba versions buy is fewer passes over memory: the quantiser does EMAN2's
float32 sequence (subtract, divide, multiply, clamp, add 0.49999997, truncate) and
counts the clamped pixels in one sweep, with no float32 scratch array; and the
Huffman-only deflate coder writes a zlib stream straight from the codes (zlib-ng's
Huffman-only strategy, the best coder for shot noise, spends most of its time in
per-literal bookkeeping that an order-0 coder does not need).

Contract: the quantiser gives the same codes with and without numba (tested over
dtypes, shapes and ranges in ``tests/test_kernels.py``); the deflate coder's output is
a different byte stream from zlib's, which any zlib inflater decodes to the same bytes
(one Huffman table per 64 KB block, about as small as zlib-ng's Huffman-only).
``E2C_NO_NUMBA=1`` in the environment selects the numpy versions.
numba compiles each function on first use and caches the machine code on disk
(``cache=True``), so only the first run on a machine pays the compile time.
"""

from __future__ import annotations

import functools
import os
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

try:
    from zlib_ng.zlib_ng import adler32 as _adler32
except ImportError:  # pragma: no cover - zlib-ng is a dependency
    from zlib import adler32 as _adler32

F32 = np.float32
HALF_DOWN = np.nextafter(F32(0.5), F32(0.0))  # 0.49999997: trunc(x + this) == roundf(x)


@functools.cache
def _numba() -> Any:
    """The numba module when it is installed and not disabled, else None."""
    if os.environ.get("E2C_NO_NUMBA"):
        return None
    try:
        import numba
    except ImportError:
        return None
    return numba


def available() -> bool:
    """True when the compiled kernels are used (numba installed, not disabled)."""
    return _numba() is not None


COMPILED_MIN_ITEMS = 16 << 10  # smaller arrays stay in numpy: no numba import for them


def worth(items: int) -> bool:
    """Whether an array of ``items`` elements goes to a compiled kernel: numba is
    available and the array is large enough to repay importing it (~0.2 s once)."""
    return items >= COMPILED_MIN_ITEMS and available()


# --------------------------------------------------------------------------- quantise


def quantize_numpy(x: np.ndarray, rmin: float, rmax: float, bits: int, out: np.ndarray) -> int:
    """EMAN2's float32 renderer into ``out`` (codes), returning the clamped count.

    ``x``: a float32 array (any shape, C order); ``out``: uint8/uint16 of the same size.
    ``rmax > rmin``; non-finite pixels must have been rejected.
    """
    lo, hi = F32(rmin), F32(rmax)
    flat = x.reshape(-1)
    truncated = int(np.count_nonzero(flat < lo)) + int(np.count_nonzero(flat > hi))
    rmaxcode = F32((1 << bits) - 1)
    w = np.empty(flat.size, dtype=F32)
    with np.errstate(over="ignore", invalid="ignore"):
        np.subtract(flat, lo, out=w)
        np.divide(w, hi - lo, out=w)
        np.multiply(w, rmaxcode, out=w)
        np.clip(w, F32(0.0), rmaxcode, out=w)
        np.add(w, HALF_DOWN, out=w)
        out.reshape(-1)[...] = w
    return truncated


def quantize(x: np.ndarray, rmin: float, rmax: float, bits: int, out: np.ndarray) -> int:
    """Codes of float32 ``x`` for the mapping [rmin, rmax] at ``bits`` into ``out``;
    returns how many pixels lay outside (clamped). Identical to :func:`quantize_numpy`."""
    fn = _compiled("quantize")
    if fn is None or x.dtype != F32:
        return quantize_numpy(x, rmin, rmax, bits, out)
    lo, hi = F32(rmin), F32(rmax)
    with np.errstate(over="ignore"):  # a span past float32's range: inf, as in numpy
        span = hi - lo
    return int(fn(x.reshape(-1), lo, hi, span, F32((1 << bits) - 1), HALF_DOWN, out.reshape(-1)))


# --------------------------------------------------------------------------- Huffman deflate

SEGMENT = 1 << 16  # bytes per deflate block (a fresh Huffman table each)


def huffman_deflate(data: bytes | bytearray | memoryview | np.ndarray) -> bytes:
    """A zlib stream of ``data`` with literal-only dynamic-Huffman blocks (numba), or
    zlib's Huffman-only strategy when numba is not available."""
    fn = _compiled("deflate")
    raw = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
    flat = raw.reshape(-1).view(np.uint8)
    if fn is None:
        c = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
        return c.compress(flat.tobytes()) + c.flush()
    # <= 15 bits per byte, plus headers of < 300 bytes per block
    words = flat.size // 2 + (flat.size // SEGMENT + 1) * 80 + 16
    out = np.empty(words, dtype=np.uint32)
    size = fn(flat, out, SEGMENT)
    return out.view(np.uint8)[:size].tobytes() + _adler32(flat).to_bytes(4, "big")


# --------------------------------------------------------------------------- compilation


@functools.cache
def _compiled(name: str) -> Callable[..., Any] | None:
    """The numba version of kernel ``name`` (None without numba)."""
    if _numba() is None:
        return None
    from . import kernels_numba

    fn: Callable[..., Any] = getattr(kernels_numba, name)
    return fn
