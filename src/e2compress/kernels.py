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
``E2C_NO_NUMBA=1`` in the environment selects the numpy versions. numba compiles
each function once per machine and caches the machine code on disk (``cache=True``);
see :data:`WARM_BYTES` for when a process makes them ready.
"""

from __future__ import annotations

import os
import threading
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

try:
    from zlib_ng.zlib_ng import adler32 as _adler32
except ImportError:  # pragma: no cover - zlib-ng is a dependency
    from zlib import adler32 as _adler32

from isal import isal_zlib as _isal_zlib

F32 = np.float32
HALF_DOWN = np.nextafter(F32(0.5), F32(0.0))  # 0.49999997: trunc(x + this) == roundf(x)


# Importing numba and loading its cached machine code costs 0.7-1.5 s of CPU once per
# process (numba initialises its whole target); the kernels save ~0.6 ms per MB of
# float32 input. So they are made ready in a background thread only for work of at
# least this many float32-equivalent bytes (one large file, or a batch), and used from
# the moment they are ready; until then, and without numba, the numpy versions run.
WARM_BYTES = 2 << 30


class _Compiled:
    """The numba kernels of this process, made ready once, in a background thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._fns: dict[str, Callable[..., Any]] = {}
        self.error: str | None = None  # why the kernels could not be made ready

    def start(self) -> threading.Thread | None:
        with self._lock:
            if self._thread is None and not os.environ.get("E2C_NO_NUMBA"):
                self._thread = threading.Thread(
                    target=self._load, name="e2compress-numba", daemon=True
                )
                self._thread.start()
            return self._thread

    def _load(self) -> None:
        try:
            from . import kernels_numba as knb
        except ImportError as exc:  # numba not installed
            self.error = str(exc)
            return
        try:  # compile (or load from the cache) every signature the pipeline uses
            x = np.zeros(8, dtype=F32)
            one = F32(1.0)
            for dtype in (np.uint8, np.uint16):
                knb.quantize(x, F32(0.0), one, one, one, HALF_DOWN, np.zeros(8, dtype))
            knb.deflate(np.zeros(8, np.uint8), np.zeros(64, np.uint32), SEGMENT)
        except Exception as exc:  # a numba that cannot compile: the numpy versions run
            self.error = f"{type(exc).__name__}: {exc}"
            return
        self._fns = {"quantize": knb.quantize, "deflate": knb.deflate}

    def get(self, name: str) -> Callable[..., Any] | None:
        return self._fns.get(name)


_COMPILED = _Compiled()


def prepare(nbytes: int) -> None:
    """Say that about ``nbytes`` (float32-equivalent) of work is coming in this process:
    from :data:`WARM_BYTES` on, the compiled kernels are made ready in the background
    (numba installed, ``E2C_NO_NUMBA`` not set). Returns at once."""
    if nbytes >= WARM_BYTES:
        _COMPILED.start()


def warm_up() -> bool:
    """Make the compiled kernels ready now (waits); True when they are."""
    thread = _COMPILED.start()
    if thread is not None:
        thread.join()
    return bool(_COMPILED.get("quantize"))


def compiled(name: str) -> Callable[..., Any] | None:
    """The compiled kernel ``name`` when ready, else None (never waits)."""
    return _COMPILED.get(name)


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
    fn = compiled("quantize")
    if fn is None or x.dtype != F32:
        return quantize_numpy(x, rmin, rmax, bits, out)
    lo, hi = F32(rmin), F32(rmax)
    with np.errstate(over="ignore"):  # a span past float32's range: inf, as in numpy
        span = hi - lo
    return int(fn(x.reshape(-1), lo, hi, span, F32((1 << bits) - 1), HALF_DOWN, out.reshape(-1)))


# --------------------------------------------------------------------------- Huffman deflate

SEGMENT = 1 << 16  # bytes per deflate block (a fresh Huffman table each)


def _zlib_huffman(flat: np.ndarray) -> bytes:
    c = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    return c.compress(flat.tobytes()) + c.flush()


def huffman_deflate(data: bytes | bytearray | memoryview | np.ndarray) -> bytes:
    """A zlib stream of ``data`` with literal-only dynamic-Huffman blocks (compiled), or
    zlib's Huffman-only strategy while the compiled kernels are not ready.

    Every compiled stream is decoded again by ISA-L's inflate (another library's
    decoder) and compared with ``data`` before it is used; one that does not decode to
    ``data`` is replaced by zlib's stream, so a fault in the compiled coder can cost
    speed but never a chunk (about a quarter of what the coder saves).
    """
    fn = compiled("deflate")
    raw = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
    flat = raw.reshape(-1).view(np.uint8)
    if fn is None:
        return _zlib_huffman(flat)
    # <= 15 bits per byte, plus headers of < 300 bytes per block
    words = flat.size // 2 + (flat.size // SEGMENT + 1) * 80 + 16
    out = np.empty(words, dtype=np.uint32)
    size = fn(flat, out, SEGMENT)
    stream = out.view(np.uint8)[:size].tobytes() + _adler32(flat).to_bytes(4, "big")
    if not _decodes_to(stream, flat):
        return _zlib_huffman(flat)
    return stream


def _decodes_to(stream: bytes, flat: np.ndarray) -> bool:
    """True when ISA-L inflates ``stream`` to exactly the bytes of ``flat``."""
    try:
        decoded = _isal_zlib.decompress(stream, bufsize=max(flat.size, 1))
    except Exception:  # each engine has its own error class
        return False
    return len(decoded) == flat.size and bool(
        np.array_equal(np.frombuffer(decoded, np.uint8), flat)
    )
