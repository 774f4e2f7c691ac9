"""Range selection and quantisation, as EMAN2 does it (pure numpy, no I/O).

All range arithmetic follows EMAN2's ``EMUtil::getRenderMinMax`` in IEEE float32
(spec §2.2), with two deliberate differences documented in the README:

* non-integer data that does not straddle zero, with no range option, uses the
  data's own min/max (EMAN2 stores 0, 0 and reads back zeros);
* every pixel is clamped before the statistics are taken (EMAN2 seeds min/max with
  the first, unclamped pixel).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

F32 = np.float32
HIST_BINS = 1024
_F32_MAX = float(np.finfo(np.float32).max)
_HALF_DOWN = np.nextafter(F32(0.5), F32(0.0))  # 0.49999997: trunc(x + this) == roundf(x)


def code_max(bits: int) -> int:
    """Largest stored code for ``bits`` (2**bits - 1)."""
    return (1 << bits) - 1


def storage_dtype(bits: int) -> np.dtype:
    """HDF dataset dtype EMAN2 uses for ``bits`` (0 = float32)."""
    if bits == 0:
        return np.dtype("<f4")
    if 1 <= bits <= 8:
        return np.dtype("u1")
    if 9 <= bits <= 16:
        return np.dtype("<u2")
    raise ValueError(f"bits must be 0 or 1..16, not {bits}")


@dataclass
class Stats:
    """Mergeable statistics of a set of pixels (optionally clamped to limits)."""

    count: int = 0
    minimum: float = math.inf
    maximum: float = -math.inf
    total: float = 0.0
    sumsq: float = 0.0
    all_int: bool = True
    nonfinite: int = 0

    def merge(self, other: Stats) -> Stats:
        """Combine two partial results."""
        return Stats(
            count=self.count + other.count,
            minimum=min(self.minimum, other.minimum),
            maximum=max(self.maximum, other.maximum),
            total=self.total + other.total,
            sumsq=self.sumsq + other.sumsq,
            all_int=self.all_int and other.all_int,
            nonfinite=self.nonfinite + other.nonfinite,
        )

    @property
    def mean(self) -> float:
        """Mean over all pixels."""
        return self.total / self.count if self.count else 0.0

    @property
    def sigma(self) -> float:
        """Sample standard deviation (n - 1), as EMAN2's ``sigma`` header value."""
        if self.count < 2:
            return 0.0
        var = (self.sumsq - self.total * self.total / self.count) / (self.count - 1)
        return math.sqrt(var) if var > 0 else 0.0


def merge_stats(parts: Iterable[Stats]) -> Stats:
    """Merge partial statistics."""
    out = Stats()
    for p in parts:
        out = out.merge(p)
    return out


def _is_integer_dtype(a: np.ndarray) -> bool:
    return a.dtype.kind in "iub"


_SUB = 1 << 16  # elements per sub-block of the integer test (256 KB of float32)


def _all_integer(flat: np.ndarray) -> bool:
    """Every value equals its truncation; stops at the first sub-block that fails."""
    buf = np.empty(min(_SUB, flat.size), dtype=flat.dtype)
    for start in range(0, flat.size, _SUB):
        part = flat[start : start + _SUB]
        out = buf[: part.size]
        np.trunc(part, out=out)
        if not np.array_equal(out, part):
            return False
    return True


def moments(a: npt.ArrayLike) -> Stats:
    """Count, sums and non-zero count of finite pixels (no min/max/integer test)."""
    arr = np.asarray(a)
    flat = arr.reshape(-1)
    nonfinite = 0
    if arr.dtype.kind == "f" and flat.size and not np.isfinite(np.sum(flat, dtype=np.float64)):
        finite = np.isfinite(flat)
        nonfinite = int(flat.size - np.count_nonzero(finite))
        flat = flat[finite]
    return Stats(
        count=flat.size,
        total=float(np.sum(flat, dtype=np.float64)),
        sumsq=float(np.einsum("i,i->", flat, flat, dtype=np.float64)) if flat.size else 0.0,
        nonfinite=nonfinite,
    )


def header_moments(a: npt.ArrayLike, work: np.ndarray | None = None) -> Stats:
    """Count and sums for the header statistics, fast: float32 sums about a local
    reference value (relative error ~1e-7), combined in float64. No non-zero count.

    Non-finite pixels must have been rejected by the caller. :func:`moments` is the
    exact float64 version used where the result selects the range (``--sigrange``).
    """
    flat = np.asarray(a).reshape(-1)
    n = flat.size
    if n == 0:
        return Stats()
    ref = float(np.mean(flat[:256], dtype=np.float64))
    d = np.empty(n, dtype=F32) if work is None else work.reshape(-1)[:n]
    with np.errstate(over="ignore", invalid="ignore"):
        np.subtract(flat, F32(ref), out=d, casting="unsafe")
        s1 = float(np.sum(d, dtype=F32))
        s2 = float(np.dot(d, d))
    if not (math.isfinite(s1) and math.isfinite(s2)):  # beyond float32: exact path
        return moments(flat)
    return Stats(count=n, total=s1 + n * ref, sumsq=s2 + 2.0 * ref * s1 + n * ref * ref)


def block_stats(
    a: npt.ArrayLike, limits: tuple[float, float] | None = None, *, with_moments: bool = True
) -> Stats:
    """Statistics of one block; with ``limits``, of the block clamped to them.

    Non-finite pixels are counted in ``nonfinite`` and left out of everything else.
    ``with_moments=False`` skips the sums (min, max and the integer test only).
    """
    arr = np.asarray(a)
    if arr.size == 0:
        return Stats()
    flat = arr.reshape(-1)
    if _is_integer_dtype(arr):
        if limits is None:
            base = moments(flat) if with_moments else Stats(count=flat.size)
            base.minimum, base.maximum = float(flat.min()), float(flat.max())
            return base
        flat = flat.astype(F32)
    elif flat.dtype != F32:
        flat = flat.astype(F32)
    nonfinite = 0
    lo, hi = flat.min(), flat.max()
    if not (np.isfinite(lo) and np.isfinite(hi)):
        finite = np.isfinite(flat)
        nonfinite = int(flat.size - np.count_nonzero(finite))
        flat = flat[finite]
        if flat.size == 0:
            return Stats(nonfinite=nonfinite)
        lo, hi = flat.min(), flat.max()
    if limits is not None:
        flat = np.clip(flat, F32(limits[0]), F32(limits[1]))
        lo, hi = flat.min(), flat.max()
    out = moments(flat) if with_moments else Stats(count=flat.size)
    out.minimum, out.maximum = float(lo), float(hi)
    out.all_int = _all_integer(flat)
    out.nonfinite = nonfinite
    return out


def valid_limits(lo: float, hi: float) -> bool:
    """EMAN2's "has limits" test on float32 limits."""
    lo32, hi32 = F32(lo), F32(hi)
    if np.isnan(lo32) or np.isnan(hi32) or hi32 <= lo32:
        return False
    return not (abs(lo32) > 1e28 or abs(hi32) > 1e28)


def _round_half_away(x: float) -> float:
    return math.copysign(math.floor(abs(x) + 0.5), x)


@dataclass(frozen=True)
class RenderRange:
    """The stored mapping of one image: codes 0..2**bits-1 span [rmin, rmax]."""

    bits: int
    rmin: float
    rmax: float
    rule: str = field(default="", compare=False)

    @property
    def step(self) -> float:
        """Data units per code."""
        return (float(F32(self.rmax)) - float(F32(self.rmin))) / code_max(self.bits)

    @property
    def is_finite(self) -> bool:
        """True when every reader can decode it: finite limits, and a span and step
        that do not overflow float32 (EMAN2 and plain-h5py readers decode in float32)."""
        rmin, rmax = float(self.rmin), float(self.rmax)  # float32 values (see choose_range)
        return abs(rmin) <= _F32_MAX and abs(rmax) <= _F32_MAX and abs(rmax - rmin) < _F32_MAX


def half_step_bound(rng: RenderRange) -> float:
    """The tolerance rule: a decoded value inside [rmin, rmax] lies within this of the
    original: half a step, plus the float32 rounding of the quantiser and of any reader's
    decode (EMAN2's and plain h5py's float32 formula included): 1e-4 of the half step and
    8 float32 units in the last place of the range's larger end.

    This is the one rule the verifier and the tests use.
    """
    rmin, rmax = float(F32(rng.rmin)), float(F32(rng.rmax))
    scale = max(abs(rmin), abs(rmax), 1e-30)
    return rng.step / 2 * (1 + 1e-4) + 8 * float(np.spacing(F32(scale)))


def within_half_step(
    original: npt.ArrayLike, decoded: npt.ArrayLike, rng: RenderRange
) -> np.ndarray:
    """Per pixel: ``decoded`` is within :func:`half_step_bound` of ``original``.

    Pixels outside [rmin, rmax] must instead decode to the end values (clamped). A NaN
    or infinite decoded value never passes where the original was finite.
    """
    orig = np.asarray(original).astype(np.float64)
    got = np.asarray(decoded).astype(np.float64)
    rmin, rmax = float(F32(rng.rmin)), float(F32(rng.rmax))
    table = decode_table(rng)
    below, above = orig < rmin, orig > rmax
    with np.errstate(invalid="ignore", over="ignore"):
        ok = np.abs(got - orig) <= half_step_bound(rng)
    ok[below] = got[below] == float(table[0])
    ok[above] = got[above] == float(table[-1])
    return ok


def choose_range(stats: Stats, bits: int, limits: tuple[float, float] | None = None) -> RenderRange:
    """EMAN2's decision chain (spec §2.2) on statistics of the (clamped) data.

    ``stats`` must have been computed with the same ``limits`` (see :func:`block_stats`).
    """
    if not 1 <= bits <= 16:
        raise ValueError(f"quantisation needs bits in 1..16, not {bits}")
    levels = 1 << bits
    rmaxcode = F32(levels - 1)
    lo, hi = F32(stats.minimum), F32(stats.maximum)
    if stats.count == 0:
        return RenderRange(bits, 0.0, 0.0, "empty")
    with np.errstate(over="ignore", invalid="ignore"):
        rng = _choose_range(stats, bits, limits, lo, hi, levels, rmaxcode)
        if not rng.is_finite:  # float32 overflowed (values near +-3.4e38): redo in float64
            wide = _choose_range(
                stats, bits, limits, np.float64(lo), np.float64(hi), levels, np.float64(rmaxcode)
            )
            rng = RenderRange(bits, float(F32(wide.rmin)), float(F32(wide.rmax)), wide.rule)
    return rng


def _choose_range(
    stats: Stats,
    bits: int,
    limits: tuple[float, float] | None,
    lo: np.floating[Any],
    hi: np.floating[Any],
    levels: int,
    rmaxcode: np.floating[Any],
) -> RenderRange:
    """The decision chain in the float type of ``lo``/``hi``/``rmaxcode``."""
    ft = type(lo)
    if hi - lo == ft(1.0):
        return RenderRange(bits, float(lo), float(hi), "unit_range")
    if stats.all_int:
        span = int(hi) - int(lo)
        if span < levels:
            return RenderRange(bits, float(lo), float(lo + rmaxcode), "integer_lossless")
        needed = span.bit_length()
        step = ft(2.0 ** (needed - bits))
        rmin = ft(_round_half_away(float(lo / step))) * step if lo < 0 < hi else lo
        return RenderRange(bits, float(rmin), float(rmin + step * rmaxcode), "integer_step")
    if lo < 0 < hi:
        step1 = (hi - lo) / rmaxcode
        if lo == ft(np.floor(lo / step1)) * step1:
            return RenderRange(bits, float(lo), float(hi), "zero_straddle_on_grid")
        step = (hi - lo) / ft(levels - 2)
        rmin = ft(np.floor(lo / step)) * step
        return RenderRange(bits, float(rmin), float(rmin + step * rmaxcode), "zero_straddle_grid")
    if limits is not None and valid_limits(*limits):
        return RenderRange(
            bits, float(F32(limits[0])), float(F32(limits[1])), "limits_passed_through"
        )
    # EMAN2 stores 0, 0 here (spec §2.2 defect); the data's own range is right.
    return RenderRange(bits, float(lo), float(hi), "data_range")


def sigrange_limits(stats: Stats, below: float, above: float) -> tuple[float, float]:
    """``--sigrange a,b``: mean - a*sigma, mean + b*sigma with EMAN2's float32 header stats."""
    mean = float(F32(stats.mean))
    sigma = float(F32(stats.sigma))
    return mean - sigma * below, mean + sigma * above


def histogram(a: npt.ArrayLike, h0: float, h1: float, bins: int = HIST_BINS) -> np.ndarray:
    """EMAN2 ``calc_hist``: bin = round((v - h0) * (bins-1)/(h1 - h0)), ends clamped."""
    v = np.asarray(a).astype(F32, copy=False).ravel()
    v = v[np.isfinite(v)]
    scale = F32(bins - 1) / (F32(h1) - F32(h0))
    x = (v - F32(h0)) * scale
    idx = np.floor(np.abs(x) + _HALF_DOWN) * np.sign(x)
    idx = np.clip(idx, 0, bins - 1).astype(np.intp)
    return np.bincount(idx, minlength=bins).astype(np.int64)


def nooutliers_limits(hist: np.ndarray, h0: float, h1: float, count: int) -> tuple[float, float]:
    """``--nooutliers``: clip at most max(n // 20000, 8) pixels from each tail."""
    bins = len(hist)
    maxout = max(count // 20000, 8)
    hs = (float(h1) - float(h0)) / (bins - 1)
    low_cum = np.cumsum(hist[: bins // 2])
    over = np.nonzero(low_cum > maxout)[0]
    sl = int(over[0]) if over.size else bins // 2 - 1
    high_cum = np.cumsum(hist[::-1][: bins // 2 - 1])
    over = np.nonzero(high_cum > maxout)[0]
    sh = bins - 1 - int(over[0]) if over.size else bins // 2 + 1
    return float(h0) + sl * hs, float(h0) + sh * hs


def quantize(
    a: npt.ArrayLike,
    rng: RenderRange,
    out: np.ndarray | None = None,
    work: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Codes for ``a`` (EMAN2 ``Renderer``, float32) and the count of clamped pixels.

    ``out`` receives the codes and ``work`` (float32, at least ``a.size``) is scratch
    space; both are allocated when not given. Non-finite pixels must have been
    rejected by the caller.
    """
    arr = np.asarray(a)
    dtype = storage_dtype(rng.bits)
    if out is None:
        out = np.empty(arr.shape, dtype=dtype)
    rmin, rmax = F32(rng.rmin), F32(rng.rmax)
    truncated = 0
    lo = hi = rmin
    if arr.size:
        lo, hi = arr.min(), arr.max()
        if lo < rmin:
            truncated += int(np.count_nonzero(arr < rmin))
        if hi > rmax:
            truncated += int(np.count_nonzero(arr > rmax))
    if rmax == rmin:
        out[...] = 0
        return out, truncated
    rmaxcode = F32(code_max(rng.bits))
    if _is_integer_dtype(arr) and float(rmin).is_integer() and rmax - rmin == rmaxcode:
        # Integer data stored losslessly: the code is the value minus rmin.
        if arr.dtype.kind == "u" and lo >= rmin and hi <= rmax:
            np.subtract(arr, arr.dtype.type(int(rmin)), out=out, casting="unsafe")
        else:
            wide = arr.astype(np.int64)
            np.clip(wide, int(rmin), int(rmax), out=wide)
            wide -= int(rmin)
            out[...] = wide
        return out, truncated
    if work is None:
        x = np.empty(arr.shape, dtype=F32)
    else:
        x = work.reshape(-1)[: arr.size].reshape(arr.shape)
    with np.errstate(over="ignore", invalid="ignore"):  # far-out pixels: inf, then clamped
        if arr.dtype == F32:
            np.subtract(arr, rmin, out=x)
        else:
            np.copyto(x, arr, casting="unsafe")  # EMAN2 converts every pixel to float32 first
            np.subtract(x, rmin, out=x)
        np.divide(x, rmax - rmin, out=x)
        np.multiply(x, rmaxcode, out=x)
        np.clip(x, F32(0.0), rmaxcode, out=x)
        np.add(x, _HALF_DOWN, out=x)
        out[...] = x  # truncation of non-negative values == floor
    return out, truncated


def zero_code(rng: RenderRange) -> int | None:
    """The code meant to represent exact 0.0, if the mapping puts 0 on a level."""
    rmin, rmax = float(F32(rng.rmin)), float(F32(rng.rmax))
    if not rmin <= 0.0 <= rmax or rmax == rmin:
        return None
    step = (rmax - rmin) / code_max(rng.bits)
    k = round(-rmin / step)
    return k if abs(rmin + k * step) <= 0.02 * step else None


def integer_step(rng: RenderRange) -> int | None:
    """The integer step of an integer mapping (spec §2.2 rule 2), else None.

    rmin + step * (2**bits - 1) is rounded to float32 when stored, so beyond 2**24 the
    stored rmax is a few units off; the intended power-of-two step is recovered.
    """
    rmin, rmax = float(F32(rng.rmin)), float(F32(rng.rmax))
    if not rmin.is_integer() or rmax <= rmin:
        return None
    whole = round((rmax - rmin) / code_max(rng.bits))
    if whole < 1 or whole & (whole - 1):  # the integer rules only make powers of two
        return None
    intended = rmin + whole * code_max(rng.bits)
    if abs(rmax - intended) <= 2 * float(np.spacing(F32(intended))):
        return whole
    return None


def decode_table(rng: RenderRange) -> np.ndarray:
    """Float32 value of every code: EMAN2's formula, with exact zero and integers."""
    return decode_values(np.arange(code_max(rng.bits) + 1), rng)


def decode_values(codes: npt.ArrayLike, rng: RenderRange) -> np.ndarray:
    """``decode_table(rng)[codes]`` computed per element (cheaper for few pixels)."""
    c = np.asarray(codes)
    rmin, rmax = float(F32(rng.rmin)), float(F32(rng.rmax))
    if rmax == rmin:
        return np.full(c.shape, F32(rmin), dtype=F32)
    step = integer_step(rng)
    if step is not None:
        return (rmin + c * float(step)).astype(F32)
    values = rmin + c * ((rmax - rmin) / code_max(rng.bits))
    z = zero_code(rng)
    if z is not None:
        values[c == z] = 0.0
    return values.astype(F32)


def dequantize(codes: npt.ArrayLike, rng: RenderRange) -> np.ndarray:
    """Decode stored codes to float32 values."""
    c = np.asarray(codes)
    out: np.ndarray = decode_table(rng)[c]
    return out
