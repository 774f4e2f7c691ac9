"""Statistics and range choice, as EMAN2 does them (pure numpy, no I/O).

All range arithmetic follows EMAN2's ``EMUtil::getRenderMinMax`` in IEEE float32
(spec §2.2), with two deliberate differences documented in docs/format.md:

* non-integer data that does not straddle zero, with no range option, uses the
  data's own min/max (EMAN2 stores 0, 0 and reads back zeros);
* every pixel is clamped before the statistics are taken (EMAN2 seeds min/max with
  the first, unclamped pixel).

Sources wider than float32 (32/64-bit integers beyond 2**24, float64) are handled in
their own precision: statistics in float64 or exact integers, the range chosen in
float64 and rounded outward to float32 limits (see docs/precision.md). The chosen
:class:`~e2compress.quantize.RenderRange` is applied by :mod:`~e2compress.quantize`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .quantize import F32, HALF_DOWN, RenderRange, inexact_in_float32, integer_step, is_wide

HIST_BINS = 1024


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
    if arr.dtype.kind in "iub":
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
    half = HALF_DOWN if ft is F32 else np.nextafter(0.5, 0.0)
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
