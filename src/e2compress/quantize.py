"""Range selection and quantisation, as EMAN2 does it (pure numpy, no I/O).

All range arithmetic follows EMAN2's ``EMUtil::getRenderMinMax`` in IEEE float32
(spec §2.2), with two deliberate differences documented in docs/format.md:

* non-integer data that does not straddle zero, with no range option, uses the
  data's own min/max (EMAN2 stores 0, 0 and reads back zeros);
* every pixel is clamped before the statistics are taken (EMAN2 seeds min/max with
  the first, unclamped pixel).

Sources wider than float32 (32/64-bit integers beyond 2**24, float64) are handled in
their own precision: statistics and quantisation in float64 or exact integers, the
range chosen in float64 and rounded outward to float32 limits (see docs/precision.md).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from . import kernels

F32 = np.float32
HIST_BINS = 1024
F32_MAX = float(np.finfo(np.float32).max)
_HALF_DOWN = np.nextafter(F32(0.5), F32(0.0))  # 0.49999997: trunc(x + this) == roundf(x)
_F32_INT = 1 << 24  # every integer up to this magnitude is exact in float32


def is_wide(dtype: npt.DTypeLike) -> bool:
    """True for element types whose values float32 may not hold exactly (32/64-bit
    integers, float64): they are handled in float64 or exact integer arithmetic."""
    dt = np.dtype(dtype)
    return (dt.kind in "iu" and dt.itemsize >= 4) or (dt.kind == "f" and dt.itemsize > 4)


def inexact_in_float32(a: npt.ArrayLike) -> int:
    """How many (finite) values of ``a`` float32 cannot hold exactly."""
    flat = np.asarray(a).reshape(-1)
    if not flat.size or not is_wide(flat.dtype):
        return 0
    if flat.dtype.kind in "iu":
        if int(flat.min()) >= -_F32_INT and int(flat.max()) <= _F32_INT:
            return 0
        return int(np.count_nonzero(integer_inexact(flat, 24)))
    wide = flat.astype(np.float64, copy=False)
    with np.errstate(over="ignore", invalid="ignore"):
        narrow = wide.astype(F32).astype(np.float64)
        return int(np.count_nonzero((narrow != wide) & np.isfinite(wide)))


def integer_inexact(a: npt.ArrayLike, mantissa: int) -> np.ndarray:
    """Per integer: True when a float with ``mantissa`` significant bits (24: float32,
    53: float64) cannot hold it exactly (exact integer arithmetic, any 64-bit value)."""
    x = np.asarray(a)
    if x.dtype.kind == "u":
        mag = x.astype(np.uint64)
    else:
        wide = x.astype(np.int64)
        neg = wide < 0
        mag = np.where(neg, ~wide, wide).astype(np.uint64) + neg.astype(np.uint64)
    # bit length (float64 may round it up by one just below a power of two; such values
    # are not exact in the narrower float either, so the test only gets stricter there)
    length = np.frexp(mag.astype(np.float64))[1]
    shift = np.maximum(length - mantissa, 0).astype(np.uint64)
    low = (np.left_shift(np.uint64(1), shift) - np.uint64(1)).astype(np.uint64)
    out: np.ndarray = (mag & low) != 0
    return out


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
    inexact: int = 0  # values float32 cannot hold exactly (wide sources only)

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
            inexact=self.inexact + other.inexact,
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
    ``with_moments=False`` skips the sums (min, max and the integer test only). Values
    are taken in their own precision: float32 for types it holds (clamped at float32
    limits, as EMAN2 does), float64 or exact integers for wider ones (``inexact``
    counts the values float32 cannot hold).
    """
    arr = np.asarray(a)
    if arr.size == 0:
        return Stats()
    flat = arr.reshape(-1)
    wide = is_wide(flat.dtype)
    ft: type[np.floating[Any]] = np.float64 if wide else F32
    inexact = 0
    if _is_integer_dtype(arr):
        if limits is None:
            base = moments(flat) if with_moments else Stats(count=flat.size)
            base.minimum, base.maximum = float(flat.min()), float(flat.max())
            base.inexact = inexact_in_float32(flat) if wide else 0
            return base
        flat = flat.astype(ft)
    elif flat.dtype != ft:
        flat = flat.astype(ft)
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
        with np.errstate(over="ignore"):
            flat = np.clip(flat, ft(limits[0]), ft(limits[1]))
        lo, hi = flat.min(), flat.max()
    if wide:
        inexact = inexact_in_float32(flat)
    out = moments(flat) if with_moments else Stats(count=flat.size)
    out.minimum, out.maximum = float(lo), float(hi)
    out.all_int = _all_integer(flat)
    out.nonfinite = nonfinite
    out.inexact = inexact
    return out


def valid_limits(lo: float, hi: float) -> bool:
    """EMAN2's "has limits" test on float32 limits."""
    with np.errstate(over="ignore"):  # float64 limits past float32's range: +-inf
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
        """Data units per code (an integer mapping's exact integer step)."""
        whole = integer_step(self)
        if whole is not None:
            return float(whole)
        return (float(F32(self.rmax)) - float(F32(self.rmin))) / code_max(self.bits)

    @property
    def is_finite(self) -> bool:
        """True when every reader can decode it: finite limits, and a span and step
        that do not overflow float32 (EMAN2 and plain-h5py readers decode in float32)."""
        rmin, rmax = float(self.rmin), float(self.rmax)  # float32 values (see choose_range)
        return abs(rmin) <= F32_MAX and abs(rmax) <= F32_MAX and abs(rmax - rmin) < F32_MAX


def range_limits(rng: RenderRange) -> tuple[float, float]:
    """The values codes 0 and 2**bits-1 stand for: the stored float32 limits, except
    that an integer mapping ends exactly at rmin + step * (2**bits - 1) (beyond 2**24
    float32 may round the stored rmax by a unit or two)."""
    rmin, rmax = float(F32(rng.rmin)), float(F32(rng.rmax))
    step = integer_step(rng)
    if step is not None:
        return rmin, rmin + step * code_max(rng.bits)
    return rmin, rmax


def _spacing(dtype: npt.DTypeLike, x: npt.ArrayLike) -> np.ndarray:
    """Units in the last place of ``x`` in the float type ``dtype`` (0 for integer types)."""
    dt = np.dtype(dtype)
    v = np.abs(np.asarray(x, dtype=np.float64))
    if dt.kind != "f":
        return np.zeros_like(v)
    with np.errstate(over="ignore"):
        out: np.ndarray = np.spacing(v.astype(dt)).astype(np.float64)
    return out


def half_step_bound(rng: RenderRange, dtype: npt.DTypeLike = F32) -> float:
    """The tolerance rule for a value decoded to the float type ``dtype``: half a step,
    plus 1e-4 of it, plus the larger of the rounding of any reader's decode to ``dtype``
    (EMAN2's and plain h5py's float32 formula included: 8 units in the last place of the
    range's larger end in ``dtype``) and the quantiser's float32 arithmetic (4 units of
    2**-24 of the span; the first is always larger for float32).

    This is the one rule the verifier and the tests use (see :func:`within_half_step`).
    """
    rmin, rmax = float(F32(rng.rmin)), float(F32(rng.rmax))
    scale = max(abs(rmin), abs(rmax), 1e-30)
    arithmetic = 4 * 2.0**-24 * (rmax - rmin)
    return rng.step / 2 * (1 + 1e-4) + max(arithmetic, 8 * float(_spacing(dtype, scale)))


def within_half_step(
    original: npt.ArrayLike, decoded: npt.ArrayLike, rng: RenderRange
) -> np.ndarray:
    """Per pixel: ``decoded`` is within :func:`half_step_bound` of ``original``, both
    compared in float64 (never a float32 view of the source).

    Integer values on an integer mapping of step s must decode to within s/2 exactly
    (s = 1: the value itself) wherever the decoded type holds the integers; beyond that
    (float32 past 2**24, i.e. EMAN2's own decode) within s/2 plus one unit in the last
    place. Pixels outside the mapping's ends (:func:`range_limits`) must decode to the
    end values (clamped). A NaN or infinite decoded value never passes where the
    original was finite.
    """
    orig_arr = np.asarray(original)
    got_arr = np.asarray(decoded)
    dtype = got_arr.dtype if got_arr.dtype.kind == "f" else np.dtype(np.float64)
    orig = orig_arr.astype(np.float64)
    got = got_arr.astype(np.float64)
    lo, hi = range_limits(rng)
    ends = decode_values(np.array([0, code_max(rng.bits)]), rng).astype(np.float64)
    below, above = orig < lo, orig > hi
    with np.errstate(invalid="ignore", over="ignore"):
        ok = np.abs(got - orig) <= half_step_bound(rng, dtype)
        step = integer_step(rng)
        if step is not None:
            whole = orig == np.trunc(orig)
            ulp = _spacing(dtype, got)
            slack = np.where(ulp > 1, ulp, 0.0)
            exact = np.abs(got - orig) <= step / 2 + slack
            ok = np.where(whole, exact, ok)
        end_slack = 8 * float(_spacing(dtype, max(abs(lo), abs(hi))))
        ok[below] = np.abs(got[below] - ends[0]) <= end_slack
        ok[above] = np.abs(got[above] - ends[1]) <= end_slack
    return ok


def choose_range(stats: Stats, bits: int, limits: tuple[float, float] | None = None) -> RenderRange:
    """EMAN2's decision chain (spec §2.2) on statistics of the (clamped) data.

    ``stats`` must have been computed with the same ``limits`` (see :func:`block_stats`).
    """
    if not 1 <= bits <= 16:
        raise ValueError(f"quantisation needs bits in 1..16, not {bits}")
    levels = 1 << bits
    rmaxcode = F32(levels - 1)
    if stats.count == 0:
        return RenderRange(bits, 0.0, 0.0, "empty")
    if stats.inexact:
        return _wide_range(stats, bits, limits)
    with np.errstate(over="ignore", invalid="ignore"):
        lo, hi = F32(stats.minimum), F32(stats.maximum)  # +-inf past float32: redone below
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


def _floor32(x: float) -> float:
    """The largest float32 value <= ``x`` (-inf below float32's range)."""
    with np.errstate(over="ignore"):
        f = F32(x)
    if float(f) > x:
        f = np.nextafter(f, F32(-np.inf))
    return float(f)


def _ceil32(x: float) -> float:
    """The smallest float32 value >= ``x`` (inf above float32's range)."""
    with np.errstate(over="ignore"):
        f = F32(x)
    if float(f) < x:
        f = np.nextafter(f, F32(np.inf))
    return float(f)


def _wide_range(stats: Stats, bits: int, limits: tuple[float, float] | None) -> RenderRange:
    """The range for data float32 cannot hold (32/64-bit integers past 2**24, float64).

    Integers: an integer mapping from the largest float32 integer <= min, with the
    smallest power-of-two step that covers max and that the stored float32 rmax still
    identifies (:func:`integer_step`), so every reader decodes integers. Other data:
    EMAN2's rules in float64, the limits rounded outward to float32.
    """
    levels = 1 << bits
    cmax = levels - 1
    if stats.all_int and math.isfinite(stats.minimum) and math.isfinite(stats.maximum):
        lo, hi = int(stats.minimum), int(stats.maximum)
        if max(abs(lo), abs(hi)) > 1 << 53:  # float64 statistics round 64-bit integers
            lo -= int(np.spacing(float(abs(lo))))
            hi += int(np.spacing(float(abs(hi))))
        rmin = _floor32(lo)
        if not math.isfinite(rmin):
            return RenderRange(bits, rmin, rmin, "integer_step")
        base = int(rmin)
        step = 1 << max(0, (hi - base).bit_length() - bits)
        while step < 1 << 140:
            top = base + step * cmax
            with np.errstate(over="ignore"):
                rmax = float(F32(top))
            rule = "integer_lossless" if step == 1 else "integer_step"
            found = RenderRange(bits, rmin, rmax, rule)
            if top >= hi and found.is_finite and integer_step(found) == step:
                return found
            step *= 2
        return RenderRange(bits, rmin, math.inf, "integer_step")
    with np.errstate(over="ignore", invalid="ignore"):
        wide = _choose_range(
            stats,
            bits,
            limits,
            np.float64(stats.minimum),
            np.float64(stats.maximum),
            levels,
            np.float64(cmax),
        )
    rmin, rmax = _floor32(wide.rmin), _ceil32(wide.rmax)
    return RenderRange(bits, rmin, rmax, wide.rule)


def sigrange_limits(stats: Stats, below: float, above: float) -> tuple[float, float]:
    """``--sigrange a,b``: mean - a*sigma, mean + b*sigma with EMAN2's float32 header stats."""
    mean = float(F32(stats.mean))
    sigma = float(F32(stats.sigma))
    return mean - sigma * below, mean + sigma * above


def histogram(a: npt.ArrayLike, h0: float, h1: float, bins: int = HIST_BINS) -> np.ndarray:
    """EMAN2 ``calc_hist``: bin = round((v - h0) * (bins-1)/(h1 - h0)), ends clamped.

    In float32 as EMAN2, but in float64 for sources float32 cannot hold and for spans
    float32 cannot (values near +-3.4e38, where EMAN2's arithmetic overflows).
    """
    v = np.asarray(a).ravel()
    with np.errstate(over="ignore"):
        span32 = F32(h1) - F32(h0)
    ft: type[np.floating[Any]] = F32
    if is_wide(v.dtype) or not np.isfinite(span32):
        ft = np.float64
    v = v.astype(ft, copy=False)
    v = v[np.isfinite(v)]
    scale = ft(bins - 1) / (ft(h1) - ft(h0))
    x = (v - ft(h0)) * scale
    half = _HALF_DOWN if ft is F32 else np.nextafter(0.5, 0.0)
    idx = np.floor(np.abs(x) + half) * np.sign(x)
    idx = np.clip(idx, 0, bins - 1).astype(np.intp)
    return np.bincount(idx, minlength=bins).astype(np.int64)


def nooutliers_limits(
    hist: np.ndarray, h0: float, h1: float, count: int, room: tuple[int, int] | None = None
) -> tuple[float, float]:
    """``--nooutliers``: clip at most max(n // 20000, 8) pixels from each tail (``room``:
    that many at the low and high tail instead)."""
    bins = len(hist)
    maxout = max(count // 20000, 8)
    low_room, high_room = room if room is not None else (maxout, maxout)
    hs = (float(h1) - float(h0)) / (bins - 1)
    low_cum = np.cumsum(hist[: bins // 2])
    over = np.nonzero(low_cum > low_room)[0]
    sl = int(over[0]) if over.size else bins // 2 - 1
    high_cum = np.cumsum(hist[::-1][: bins // 2 - 1])
    over = np.nonzero(high_cum > high_room)[0]
    sh = bins - 1 - int(over[0]) if over.size else bins // 2 + 1
    return float(h0) + sl * hs, float(h0) + sh * hs


def window_stats(a: npt.ArrayLike, lo: float, hi: float) -> tuple[int, int, Stats]:
    """Pixels below ``lo``, above ``hi``, and min/max of those between (finite only)."""
    x = np.asarray(a).reshape(-1).astype(np.float64)
    x = x[np.isfinite(x)]
    below, above = int(np.count_nonzero(x < lo)), int(np.count_nonzero(x > hi))
    inside = x[(x >= lo) & (x <= hi)]
    st = Stats(count=inside.size)
    if inside.size:
        st.minimum, st.maximum = float(inside.min()), float(inside.max())
    return below, above, st


def integer_limits(limits: tuple[float, float]) -> tuple[float, float]:
    """Range-option limits for all-integer data, widened outward to integers, so the
    clamped data stay integers and keep an integer mapping (EMAN2 keeps the limits as
    they are, so its clamped ends are fractions and single counts decode as 0.97)."""
    lo, hi = limits
    return (
        float(math.floor(lo)) if math.isfinite(lo) else lo,
        float(math.ceil(hi)) if math.isfinite(hi) else hi,
    )


def quantize(
    a: npt.ArrayLike,
    rng: RenderRange,
    out: np.ndarray | None = None,
    work: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Codes for ``a`` (EMAN2 ``Renderer``, float32) and the count of clamped pixels.

    Sources float32 cannot hold (:func:`is_wide`) are quantised in float64, or exactly
    in integers on an integer mapping.

    ``out`` receives the codes and ``work`` (float32, at least ``a.size``) is scratch
    space; both are allocated when not given. Non-finite pixels must have been
    rejected by the caller.
    """
    arr = np.asarray(a)
    dtype = storage_dtype(rng.bits)
    if out is None:
        out = np.empty(arr.shape, dtype=dtype)
    if is_wide(arr.dtype):  # 32/64-bit integers, float64: in their own precision
        return _quantize_wide(arr, rng, out), _count_outside(arr, rng)
    rmin, rmax = F32(rng.rmin), F32(rng.rmax)
    if arr.dtype == F32 and rmax > rmin and out.flags.c_contiguous and kernels.compiled("quantize"):
        return out, kernels.quantize(np.ascontiguousarray(arr), rmin, rmax, rng.bits, out)
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


def _count_outside(arr: np.ndarray, rng: RenderRange) -> int:
    """Pixels beyond the mapping's ends (:func:`range_limits`), compared exactly."""
    if not arr.size:
        return 0
    lo, hi = range_limits(rng)
    if arr.dtype.kind in "iu":
        low, high = int(arr.min()), int(arr.max())
        n = 0
        if low < lo:
            n += int(np.count_nonzero(arr.astype(np.float64) < lo))
        if high > hi:
            n += int(np.count_nonzero(arr.astype(np.float64) > hi))
        return n
    x = arr.astype(np.float64, copy=False)
    return int(np.count_nonzero(x < lo) + np.count_nonzero(x > hi))


def clamp_shift(a: npt.ArrayLike, rng: RenderRange) -> float:
    """Sum over the pixels beyond the mapping's ends of (end value - pixel): how far
    clamping moves the image's sum (float64, against the source's own values)."""
    x = np.asarray(a).reshape(-1)
    if not x.size:
        return 0.0
    lo, hi = range_limits(rng)
    ends = _values64(np.array([0, code_max(rng.bits)]), rng)
    if x.dtype == F32 and float(F32(lo)) == lo and float(F32(hi)) == hi:
        low_end, high_end = F32(lo), F32(hi)  # exact: compare without a float64 copy
    else:
        x = x.astype(np.float64, copy=False)
        low_end, high_end = np.float64(lo), np.float64(hi)
    total = 0.0
    if x.min() < low_end:
        total += float(np.sum(ends[0] - x[x < low_end].astype(np.float64)))
    if x.max() > high_end:
        total += float(np.sum(ends[1] - x[x > high_end].astype(np.float64)))
    return total


def _quantize_wide(arr: np.ndarray, rng: RenderRange, out: np.ndarray) -> np.ndarray:
    """Codes for a source float32 cannot hold: exact integer arithmetic on an integer
    mapping of integer data, float64 otherwise (round half away from zero)."""
    lo, hi = range_limits(rng)
    if hi == lo:
        out[...] = 0
        return out
    step = integer_step(rng)
    fits = arr.dtype != np.uint64 or int(arr.max()) < 2**63
    if step is not None and arr.dtype.kind in "iu" and lo > -(2**63) and hi < 2**63 and fits:
        wide = arr.astype(np.int64)
        np.clip(wide, int(lo), int(hi), out=wide)
        wide -= int(lo)
        if step > 1:
            wide += step // 2
            wide //= step
        out[...] = wide
        return out
    x = arr.astype(np.float64)
    np.clip(x, lo, hi, out=x)
    x -= lo
    x *= code_max(rng.bits) / (hi - lo)
    np.floor(x + 0.5, out=x)
    np.clip(x, 0, code_max(rng.bits), out=x)
    out[...] = x
    return out


@functools.lru_cache(maxsize=256)
def decode_dtype(rng: RenderRange) -> np.dtype:
    """float32, or float64 when float32 cannot hold the mapping's values: an integer
    mapping past 2**24, or values float32 would move by more than 1/16 of a step (a
    range far from zero for its span). EMAN2 always decodes to float32."""
    lo, hi = range_limits(rng)
    if hi == lo:
        return np.dtype(F32)
    table = _table64(rng)
    with np.errstate(over="ignore"):
        narrow = table.astype(F32).astype(np.float64)
    if integer_step(rng) is not None:
        exact = bool(np.array_equal(narrow, table))
    else:
        exact = bool(np.max(np.abs(narrow - table)) <= (hi - lo) / code_max(rng.bits) / 16)
    return np.dtype(F32) if exact else np.dtype(np.float64)


def _table64(rng: RenderRange) -> np.ndarray:
    return _values64(np.arange(code_max(rng.bits) + 1), rng)


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
    """``decode_table(rng)[codes]`` computed per element (cheaper for few pixels), in
    :func:`decode_dtype`."""
    return _values64(codes, rng).astype(decode_dtype(rng))


def _values64(codes: npt.ArrayLike, rng: RenderRange) -> np.ndarray:
    """The values of ``codes`` in float64: rmin + code * step, exact 0 and integers."""
    c = np.asarray(codes)
    rmin, rmax = float(F32(rng.rmin)), float(F32(rng.rmax))
    if rmax == rmin:
        return np.full(c.shape, rmin, dtype=np.float64)
    step = integer_step(rng)
    if step is not None:
        exact: np.ndarray = rmin + c * float(step)
        return exact
    values: np.ndarray = rmin + c * ((rmax - rmin) / code_max(rng.bits))
    z = zero_code(rng)
    if z is not None:
        values[c == z] = 0.0
    return values


def dequantize(codes: npt.ArrayLike, rng: RenderRange) -> np.ndarray:
    """Decode stored codes to float32 values."""
    c = np.asarray(codes)
    out: np.ndarray = decode_table(rng)[c]
    return out
