"""Deflate engines for chunks: zlib-format streams that HDF5's deflate filter decodes.

Quantised shot noise has almost no repeated strings, so LZ77 matching wastes bits
there and a literal-only (Huffman-only) deflate stream comes within a few percent of
the order-0 entropy; smooth or masked data (maps, particles with zero borders) does
want LZ77. Each block of chunks is therefore probed: a small slice is compressed with
zlib-ng's Huffman-only and RLE strategies and with the fast LZ engine, and the block
uses the smallest. ``--compresslevel`` keeps zlib's 0..9 meaning for the LZ engine:

========  ===========================================================
level     LZ engine (Huffman-only / RLE are level-independent; from level 2 the LZ
          engine must beat them by 2% on the probe to be used)
========  ===========================================================
0         stored (no compression; zlib level 0)
1         ISA-L level 1 (fastest)
2..9      libdeflate level 2, 3, 4, 5, 6, 8, 10, 12 (12 = optimal parsing)
========  ===========================================================

ISA-L, libdeflate and zlib-ng are required dependencies (pyproject.toml), so every
engine is always there; the standard library's zlib writes only level 0 (stored).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import deflate as _libdeflate  # libdeflate: strongest LZ at 10..12
import numpy as np
from isal import isal_zlib as _isal  # ISA-L: the fastest level-1 LZ deflate and inflate
from zlib_ng import zlib_ng as _zlib_ng  # zlib-ng: fast Huffman-only and RLE strategies

from . import kernels

Buffer = bytes | bytearray | memoryview
Compressor = Callable[[Buffer], bytes | bytearray]
LIBDEFLATE_LEVEL = {2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 8, 8: 10, 9: 12}
PROBE_BYTES = 128 << 10  # bytes of codes compressed by every candidate, per block


@dataclass(frozen=True)
class Engine:
    """A named deflate setting that turns a chunk's bytes into a zlib stream."""

    name: str
    compress: Compressor


def _strategy(strategy: int, name: str) -> Engine:
    def run(buf: Buffer) -> bytes:
        c = _zlib_ng.compressobj(1, _zlib_ng.DEFLATED, 15, 9, strategy)
        return bytes(c.compress(buf) + c.flush())

    return Engine(f"zlib-ng-{name}", run)


ZLIB_HUFFMAN = _strategy(zlib.Z_HUFFMAN_ONLY, "huffman")
RLE = _strategy(zlib.Z_RLE, "rle")


def _huffman(buf: Buffer) -> bytes | bytearray:
    if kernels.compiled("deflate") is not None:
        return kernels.huffman_deflate(buf)
    return ZLIB_HUFFMAN.compress(buf)


# Huffman-only (literals alone, one code table per block): the compiled coder of
# :mod:`~e2compress.kernels` once it is ready (about 2x zlib-ng's speed, the same
# size), else zlib-ng's.
HUFFMAN = Engine("huffman", _huffman)


def lz_engine(level: int) -> Engine:
    """The LZ77 engine for zlib-style ``level`` 0..9 (see the module table)."""
    if not 0 <= level <= 9:
        raise ValueError(f"compression level must be 0..9, not {level}")
    if level == 0:
        return Engine("zlib-0", lambda buf: zlib.compress(buf, 0))
    if level == 1:
        return Engine("isal-1", lambda buf: _isal.compress(buf, 1))
    lvl = LIBDEFLATE_LEVEL[level]
    return Engine(f"libdeflate-{lvl}", lambda buf: _libdeflate.zlib_compress(bytes(buf), lvl))


def candidates(level: int) -> tuple[Engine, ...]:
    """Engines probed for each block at ``level``: Huffman-only, RLE, then LZ (level 0: stored)."""
    lz = lz_engine(level)
    return (lz,) if level == 0 else (HUFFMAN, RLE, lz)


def choose(
    engines: Sequence[Engine], sample: Buffer, lz_margin: float = 0.0
) -> tuple[Engine, bytes | bytearray]:
    """The engine giving the smallest stream for ``sample``, and that stream.

    The LZ engine (last) must beat the best literal-only stream by ``lz_margin``
    (a fraction) to be chosen: at high levels it is 10-100x slower for gains that
    a small sample may not show.
    """
    streams = [e.compress(sample) for e in engines]
    if len(engines) == 1:
        return engines[0], streams[0]
    best = min(range(len(engines) - 1), key=lambda k: len(streams[k]))
    if len(streams[-1]) < len(streams[best]) * (1.0 - lz_margin):
        best = len(engines) - 1
    return engines[best], streams[best]


def engine_names(level: int) -> str:
    """Human-readable list of the engines used at ``level``."""
    return "/".join(e.name for e in candidates(level))


def inflate(data: Buffer, size: int) -> bytes:
    """Decode one zlib stream of known decoded ``size`` (ISA-L: fastest on literal-only).

    Raises:
        ValueError: the stream is damaged or does not decode to ``size`` bytes.
    """
    try:
        out = bytes(_isal.decompress(data))
    except Exception as exc:  # each engine has its own error class
        raise ValueError(f"damaged deflate stream ({exc})") from None
    if len(out) != size:
        raise ValueError(f"deflate stream holds {len(out)} bytes, the chunk {size}")
    return out


def shuffle(codes: np.ndarray) -> np.ndarray:
    """HDF5 shuffle filter: the byte planes of the chunk one after the other.

    Built with shifts on whole words (byte ``k`` of every element is ``v >> 8k``),
    which is several times faster than transposing a byte view.
    """
    flat = np.ascontiguousarray(codes).reshape(-1)
    size = flat.dtype.itemsize
    if size == 1:
        return flat.view(np.uint8)
    words = flat.view(f"<u{size}")
    n = words.size
    out = np.empty(n * size, dtype=np.uint8)
    tmp = np.empty(n, dtype=words.dtype)
    for k in range(size):
        np.right_shift(words, 8 * k, out=tmp)
        np.copyto(out[k * n : (k + 1) * n], tmp, casting="unsafe")
    return out


def unshuffle(buf: Buffer | np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Inverse of :func:`shuffle`, returning a flat array of ``dtype``."""
    raw = np.frombuffer(buf, dtype=np.uint8)
    size = dtype.itemsize
    if size == 1:
        return raw.view(dtype)
    n = raw.size // size
    words = np.zeros(n, dtype=f"<u{size}")
    tmp = np.empty(n, dtype=words.dtype)
    for k in range(size):
        np.left_shift(raw[k * n : (k + 1) * n], 8 * k, out=tmp, dtype=words.dtype)
        np.bitwise_or(words, tmp, out=words)
    return words.view(dtype.newbyteorder("<") if dtype.byteorder == "=" else dtype)
