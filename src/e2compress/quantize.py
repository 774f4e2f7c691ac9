"""Quantisation as EMAN2 does it (pure numpy, no I/O): the stored mapping
(:class:`RenderRange`), values to codes (:func:`quantize`), codes to values (exact 0
and integers), the storage types, and the one tolerance rule (:func:`within_half_step`).

Values are converted to float32 and quantised as EMAN2's ``Renderer`` does (spec §2.3);
sources wider than float32 (32/64-bit integers beyond 2**24, float64) in their own
precision: float64, or exact integers on an integer mapping (see docs/precision.md).
The mapping itself is chosen by :mod:`~e2compress.ranges`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from . import kernels

F32 = np.float32
F32_MAX = float(np.finfo(np.float32).max)
HALF_DOWN = np.nextafter(F32(0.5), F32(0.0))  # 0.49999997: trunc(x + this) == roundf(x)
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


def _is_integer_dtype(a: np.ndarray) -> bool:
    return a.dtype.kind in "iub"


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
        np.add(x, HALF_DOWN, out=x)
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


def unit_range(rng: RenderRange) -> bool:
    """True for EMAN2's unit range: rmax = rmin + 1 with rmin a whole number (two
    integer values, at codes 0 and 2**bits - 1, both decoded exactly)."""
    rmin, rmax = float(F32(rng.rmin)), float(F32(rng.rmax))
    return rmin.is_integer() and rmax == rmin + 1.0


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
