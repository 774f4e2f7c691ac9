"""Property tests of e2compress.quantize against the rules of spec §2.2-2.5.

Every expectation is computed here independently (numpy float32 arithmetic for the
Renderer formula, exact float64 ``floor(x + 0.5)`` for C ``roundf``, numpy counts for the
truncation), never by calling the code under test a second way.
"""

from __future__ import annotations

import math
import warnings

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from e2compress.quantize import RenderRange, dequantize, quantize
from e2compress.ranges import block_stats, choose_range, valid_limits

F32 = np.float32
SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,  # CI must not fail on an example no earlier run saw
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
bits_st = st.integers(2, 16)

KINDS = (
    "tiny",
    "huge",
    "negative",
    "positive",
    "straddle",
    "constant",
    "integer",
    "float16",
    "general",
)


@st.composite
def images(draw: st.DrawFn, kinds: tuple[str, ...] = KINDS) -> np.ndarray:
    """float32 images of many shapes and value regimes, optionally with exact zeros."""
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=9))
    kind = draw(st.sampled_from(kinds))
    unit = draw(hnp.arrays(np.float64, shape, elements=st.floats(-1.0, 1.0)))
    t = (unit + 1.0) / 2.0  # in [0, 1]
    if kind == "tiny":
        centre = draw(st.sampled_from([0.0, 1e-6, -2e-6, 1.0, -3.5, 1e3]))
        width = draw(st.floats(1e-8, 1e-5))
        a = centre + width * unit
    elif kind == "huge":
        lo, hi = sorted(draw(st.lists(st.floats(-1e30, 1e30), min_size=2, max_size=2)))
        a = lo + (hi - lo) * t
    elif kind == "negative":
        top = -draw(st.floats(1e-6, 1e6))
        a = top - draw(st.floats(0.0, 1e6)) * t
    elif kind == "positive":
        bottom = draw(st.floats(1e-6, 1e6))
        a = bottom + draw(st.floats(0.0, 1e6)) * t
    elif kind == "straddle":
        lo, hi = -draw(st.floats(1e-6, 1e6)), draw(st.floats(1e-6, 1e6))
        a = lo + (hi - lo) * t
    elif kind == "constant":
        value = draw(
            st.one_of(
                st.integers(-100_000, 100_000).map(float),
                st.floats(-1e6, 1e6, width=32),
            )
        )
        a = np.full(shape, value)
    elif kind == "integer":
        lo = draw(st.integers(-(2**20), 2**20))
        span = draw(st.one_of(st.integers(0, 70_000), st.integers(0, 2**22)))
        a = np.round(lo + span * t)
    elif kind == "float16":
        scale = draw(st.floats(1e-3, 6e4))
        centre = draw(st.sampled_from([0.0, 0.5, -1.0, 100.0]))
        a = (centre + scale * unit).astype(np.float16).astype(np.float64)
    else:
        a = draw(hnp.arrays(np.float64, shape, elements=st.floats(-1e6, 1e6, width=32)))
    a = a.astype(F32)
    if draw(st.booleans()):
        mask = draw(hnp.arrays(np.bool_, shape))
        a[mask] = 0.0
    return a


def f32(x: float) -> np.float32:
    return F32(x)


def step_of(rng: RenderRange) -> float:
    return (float(f32(rng.rmax)) - float(f32(rng.rmin))) / (2**rng.bits - 1)


def ulps(rng: RenderRange, n: int = 4) -> float:
    scale = max(abs(float(f32(rng.rmin))), abs(float(f32(rng.rmax))))
    return n * float(np.spacing(f32(scale)))


def reference_codes(a: np.ndarray, rng: RenderRange) -> np.ndarray:
    """EMAN2 Renderer (spec §2.3) in numpy float32, with roundf done exactly in float64."""
    a32 = np.asarray(a, dtype=F32)
    rmin, rmax = f32(rng.rmin), f32(rng.rmax)
    big = float(2**rng.bits - 1)
    if rmax == rmin:
        x = np.zeros(a32.shape, dtype=np.float64)
    else:
        with np.errstate(over="ignore", invalid="ignore"):  # far-out pixels are clamped below
            x32 = ((a32 - rmin) / (rmax - rmin)) * F32(big)
        assert x32.dtype == F32
        x = np.floor(np.abs(x32.astype(np.float64)) + 0.5) * np.sign(x32)
    x = np.where(a32 < rmin, 0.0, x)
    x = np.where(a32 > rmax, big, x)
    return x


def auto_range(a: np.ndarray, bits: int) -> RenderRange:
    return choose_range(block_stats(a), bits)


# ----------------------------------------------------------------------- (a) error bound


@SETTINGS
@given(a=images(), bits=bits_st)
def test_decode_error_within_half_step(a: np.ndarray, bits: int) -> None:
    rng = auto_range(a, bits)
    codes, _ = quantize(a, rng)
    got = dequantize(codes, rng).astype(np.float64)
    rmin, rmax = f32(rng.rmin), f32(rng.rmax)
    inside = (a >= rmin) & (a <= rmax)
    bound = step_of(rng) / 2 + ulps(rng)
    err = np.abs(got[inside] - a[inside].astype(np.float64))
    assert err.size == 0 or err.max() <= bound, (rng, float(err.max()), bound)


@SETTINGS
@given(a=images(), bits=bits_st)
def test_codes_equal_reference_renderer(a: np.ndarray, bits: int) -> None:
    """Every code equals roundf((v - rmin)/(rmax - rmin)*R) in float32, clamped ends."""
    rng = auto_range(a, bits)
    codes, _ = quantize(a, rng)
    assert codes.dtype == (np.uint8 if bits <= 8 else np.uint16)
    np.testing.assert_array_equal(codes.astype(np.float64), reference_codes(a, rng))


# ----------------------------------------------------------------------- (b) exact zero


@SETTINGS
@given(a=images(kinds=("straddle", "general", "float16", "tiny", "huge", "integer")), bits=bits_st)
# integer rmin with a non-integer step close to one (decoding it as an integer grid
# put 0.0 at -1.0 in a development version)
@example(a=np.array([0.0, 325334.62, -108444.875], dtype=F32), bits=4)
def test_zero_decodes_to_exact_zero_when_straddling(a: np.ndarray, bits: int) -> None:
    assume(a.size >= 3)
    a = a.copy()
    a.flat[0] = 0.0
    flat = a.reshape(-1)
    if flat.max() <= 0:
        keep = {0, int(np.argmin(flat))}
        flat[min(set(range(3)) - keep)] = max(-float(flat.min()) / 3, 1e-6)
    if flat.min() >= 0:
        keep = {0, int(np.argmax(flat))}
        flat[min(set(range(3)) - keep)] = -max(float(flat.max()) / 3, 1e-6)
    if np.all(a == np.trunc(a)):
        a = np.round(a)  # keep integer images integer after the changes above
    lo, hi = F32(a.min()), F32(a.max())
    assert lo < 0 < hi
    # Spec §2.2 rule 1 (max - min == 1 exactly) comes before the zero-preserving rule and
    # maps [min, max] linearly; it is covered by test_unit_range_rule_takes_precedence.
    assume(hi - lo != F32(1.0))
    rng = auto_range(a, bits)
    codes, _ = quantize(a, rng)
    got = dequantize(codes, rng)
    if not F32(rng.rmin) <= 0 <= F32(rng.rmax):
        # only rule 2b (integer data, step 2**k) can leave 0 outside: ints -32000..1 at
        # bits 2 give step 8192, rmin -32768, rmax -8192; 0 is then clamped to rmax
        assert rng.rule == "integer_step", rng
        assert np.all(got[a == 0.0] == F32(rng.rmax))
        return
    assert np.all(got[a == 0.0] == 0.0), (rng, got[a == 0.0])


@SETTINGS
@given(a=images(kinds=("positive", "general", "float16", "tiny", "huge", "integer")), bits=bits_st)
def test_zero_decodes_to_exact_zero_when_min_is_zero(a: np.ndarray, bits: int) -> None:
    a = np.abs(a)
    a.flat[0] = 0.0
    rng = auto_range(a, bits)
    codes, _ = quantize(a, rng)
    got = dequantize(codes, rng)
    assert np.all(got[a == 0.0] == 0.0), (rng, got[a == 0.0])


def test_unit_range_rule_takes_precedence() -> None:
    """Spec §2.2 rule 1: max - min == 1 gives rmin = min, rmax = max even across zero."""
    a = np.array([-0.25, 0.0, 0.5, 0.75], dtype=F32)
    rng = auto_range(a, 8)
    assert (rng.rmin, rng.rmax) == (-0.25, 0.75)
    codes, trunc = quantize(a, rng)
    assert trunc == 0
    assert codes.tolist() == [0, 64, 191, 255]  # roundf(v + 0.25) * 255


# ----------------------------------------------------------------------- (c) integers


@st.composite
def integer_images(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    bits = draw(bits_st)
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=9))
    lo = draw(st.integers(-(2**23), 2**23))
    fits = draw(st.booleans())
    if fits:
        span = draw(st.integers(0, 2**bits - 1))
    else:
        span = draw(st.integers(2**bits, 2**24 - 1))
    hi = lo + span
    assume(-(2**24) < hi < 2**24)
    vals = draw(hnp.arrays(np.int64, shape, elements=st.integers(lo, hi)))
    vals.flat[0] = lo
    vals.flat[-1] = hi
    dtypes = [F32, np.int32]
    if lo >= 0 and hi < 2**16:
        dtypes.append(np.uint16)
    if lo >= -(2**15) and hi < 2**15:
        dtypes.append(np.int16)
    return vals.astype(draw(st.sampled_from(dtypes))), bits


@SETTINGS
@given(data=integer_images())
@example(data=(np.array([257, 300, 256257, 16777215], dtype=np.int32), 16))
@example(data=(np.array([-50, 0, 50], dtype=F32), 4))
@example(data=(np.array([3, 70_000], dtype=F32), 10))
def test_integer_images_decode_to_integers(data: tuple[np.ndarray, int]) -> None:
    a, bits = data
    lo, hi = int(a.min()), int(a.max())
    rng = auto_range(a, bits)
    codes, trunc = quantize(a, rng)
    got = dequantize(codes, rng).astype(np.float64)
    assert np.all(got == np.round(got)), rng
    step = step_of(rng)
    if hi - lo < 2**bits:
        # lossless: every pixel reads back as itself (or, for span == 1, rule 1 also maps
        # the two values onto the end codes exactly)
        assert trunc == 0
        np.testing.assert_array_equal(got, a.astype(np.float64))
    else:
        # step 2**(neededbits - bits); the stored float32 rmax = rmin + step*R may be
        # rounded above 2**24, so the stored mapping only approximates it there
        power = 2.0 ** ((hi - lo).bit_length() - bits)
        assert abs(step - power) <= 1e-6 * power, (rng, step)
        if max(abs(rng.rmin), abs(rng.rmax)) < 2**24:
            assert step == power, (rng, step)
        # decoded values lie on the grid rmin + k*step (where float32 can hold it)
        levels = np.unique(got[np.abs(got) < 2**24])
        assert np.all((levels - rng.rmin) % power == 0), rng
        inside = (a >= rng.rmin) & (a <= rng.rmax)
        err = np.abs(got[inside] - a[inside].astype(np.float64))
        assert err.size == 0 or err.max() <= power / 2


def test_integer_worked_examples_spec_2_2() -> None:
    a = np.arange(0, 101, dtype=F32)
    rng = auto_range(a, 4)
    assert (rng.rmin, rng.rmax) == (0.0, 120.0)
    codes, trunc = quantize(a, rng)
    assert trunc == 0
    got = dequantize(codes, rng)
    # step 8: every value reads back as the nearest multiple of 8 (ties away from zero)
    np.testing.assert_array_equal(got, np.floor(np.arange(101) / 8 + 0.5) * 8)

    b = np.arange(-50, 51, dtype=F32)
    rng = auto_range(b, 4)
    assert (rng.rmin, rng.rmax) == (-48.0, 72.0)
    codes, trunc = quantize(b, rng)
    assert trunc == 2  # -50 and -49 are below rmin = -48
    got = dequantize(codes, rng)
    assert got[0] == got[1] == -48.0
    assert got[50] == 0.0  # 0 is on the grid


# ----------------------------------------------------------------------- (d) constants


@SETTINGS
@given(
    shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=9),
    value=st.one_of(
        st.integers(-(2**24), 2**24).map(float),
        st.floats(-1e30, 1e30).map(lambda v: float(F32(v))),
        st.floats(-1e-6, 1e-6).map(lambda v: float(F32(v))),
    ),
    bits=bits_st,
)
def test_constant_images_decode_exactly(shape: tuple[int, ...], value: float, bits: int) -> None:
    a = np.full(shape, value, dtype=F32)
    rng = auto_range(a, bits)
    codes, trunc = quantize(a, rng)
    assert trunc == 0
    got = dequantize(codes, rng)
    np.testing.assert_array_equal(got, a)


def test_constant_examples() -> None:
    for value in (7.0, -3.0, 0.0, 0.1, -2.5, 1234.5678, 65536.0):
        a = np.full((9, 8), value, dtype=F32)
        for bits in (2, 5, 10, 16):
            rng = auto_range(a, bits)
            codes, trunc = quantize(a, rng)
            assert trunc == 0
            assert np.all(dequantize(codes, rng) == F32(value)), (value, bits, rng)


# ----------------------------------------------------------------------- (e) coverage


def _round_half_away(x: float) -> float:
    return math.copysign(math.floor(abs(x) + 0.5), x)


@SETTINGS
@given(a=images(), bits=bits_st)
@example(a=np.array([-4.2e-45, 12.0], dtype=F32), bits=2)
@example(a=np.arange(-50, 51, dtype=F32), bits=4)
@example(a=np.array([0.0, 1000.0], dtype=F32), bits=2)
@example(a=np.array([-1792.0, 100.0], dtype=F32), bits=2)  # rmin -2048, rmax -512
def test_auto_range_covers_data(a: np.ndarray, bits: int) -> None:
    rng = auto_range(a, bits)
    lo, hi = F32(a.min()), F32(a.max())
    _, trunc = quantize(a, rng)
    all_int = bool(np.all(a == np.trunc(a)))
    span = int(hi) - int(lo) if all_int else 0
    if all_int and span >= 2**bits and hi - lo != F32(1):
        # Spec §2.2 rule 2b does not always cover the data: step = 2**(neededbits - bits),
        # rmin = min (or roundhalfaway(min/step)*step across zero, ints -50..50 bits 4 ->
        # rmin -48) and rmax = rmin + step*(2**bits - 1) (ints 0..1000 bits 2 -> rmax 768).
        step = 2.0 ** (span.bit_length() - bits)
        assert span.bit_length() == math.ceil(math.log2(span + 1))
        rmin = _round_half_away(float(lo) / step) * step if lo < 0 < hi else float(lo)
        assert rng.rmin == rmin, rng
        assert rng.rmax == float(F32(F32(rmin) + F32(step) * F32(2**bits - 1))), rng
        assert float(F32(rng.rmin)) - float(lo) <= step / 2
        # span < step * 2**bits leaves < 1 step uncovered, and rounding rmin down to the
        # step across zero can shift the window by up to half a step more.
        assert float(hi) - float(F32(rng.rmax)) < 1.5 * step
        outside = int(np.count_nonzero((a < F32(rng.rmin)) | (a > F32(rng.rmax))))
        assert trunc == outside
        return
    if rng.rule == "zero_straddle_grid":
        # rmin = floor(min/step)*step and rmax = rmin + step*R are float32 expressions
        # (EMAN2's); their rounding may miss the extremes by a few ulps of the range
        # (e.g. min = -4.2e-45: min/step rounds to -0.0, so rmin = -0.0), never more,
        # and any pixel so clamped must be counted.
        assert float(F32(rng.rmin)) <= float(lo) + ulps(rng), rng
        assert float(F32(rng.rmax)) >= float(hi) - ulps(rng), rng
        outside = int(np.count_nonzero((a < F32(rng.rmin)) | (a > F32(rng.rmax))))
        assert trunc == outside
        return
    assert F32(rng.rmin) <= lo, rng
    assert F32(rng.rmax) >= hi, rng
    assert trunc == 0


# ----------------------------------------------------------------------- (f) limits


@SETTINGS
@given(
    a=images(kinds=(*KINDS[:-3], "float16", "general")),
    t=st.lists(st.floats(-0.5, 1.5), min_size=2, max_size=2),
    bits=bits_st,
)
def test_truncated_count_with_limits(a: np.ndarray, t: list[float], bits: int) -> None:
    dmin, dmax = float(a.min()), float(a.max())
    span = dmax - dmin if dmax > dmin else max(abs(dmin), 1.0)
    lo, hi = sorted(dmin + span * x for x in t)
    lo, hi = float(F32(lo)), float(F32(hi))
    assume(valid_limits(lo, hi))
    # far-out pixels over a subnormal-wide range overflow float32 in the formula; that
    # case is test_no_overflow_warning_for_far_out_pixels
    assume(hi - lo >= 1e-30 and max(abs(dmin), abs(dmax)) / (hi - lo) < 1e30)
    stats = block_stats(a, (lo, hi))
    rng = choose_range(stats, bits, (lo, hi))
    codes, trunc = quantize(a, rng)
    rmin, rmax = F32(rng.rmin), F32(rng.rmax)
    below, above = a < rmin, a > rmax
    assert trunc == int(np.count_nonzero(below | above))
    if rmin == rmax:
        # degenerate mapping (clamped data constant and float32 rmin + R rounded onto
        # rmin): EMAN2 divides 0 by 0 on write and reads rmin for every code (spec §2.5)
        np.testing.assert_array_equal(dequantize(codes, rng), np.full(a.shape, rmin))
        return
    assert np.all(codes[below] == 0)
    assert np.all(codes[above] == 2**bits - 1)
    np.testing.assert_array_equal(codes.astype(np.float64), reference_codes(a, rng))


# ----------------------------------------------------------------------- roundf, Renderer


def test_roundf_exact_at_half_and_just_below() -> None:
    # bits 8: R = 255 and (x - 0)/255*255 == x in float32 for these x (checked below)
    rng = RenderRange(8, 0.0, 255.0)
    below_half = np.nextafter(F32(0.5), F32(0.0))
    assert below_half == F32(0.49999997)
    x = np.array([0.5, 1.5, 2.5, below_half, 0.0, 254.5, 253.49998], dtype=F32)
    scaled = (x - F32(0.0)) / F32(255.0) * F32(255.0)
    np.testing.assert_array_equal(scaled, x)  # scale is exactly 1 for these values
    codes, trunc = quantize(x, rng)
    assert trunc == 0
    assert codes.tolist() == [1, 2, 3, 0, 0, 255, 253]


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8, 12])
def test_roundf_just_below_half_gives_zero(bits: int) -> None:
    big = F32(2**bits - 1)
    v = np.nextafter(F32(0.5), F32(0.0))
    x = (np.array([v], dtype=F32) - F32(0.0)) / big * big
    assert x[0] == v  # the float32 formula lands exactly on 0.49999997
    codes, _ = quantize(np.array([v, 0.5, 1.5, 2.5], dtype=F32), RenderRange(bits, 0.0, float(big)))
    assert codes.tolist() == [0, 1, 2, 3]


@SETTINGS
@given(
    bits=bits_st,
    k=st.integers(0, 2**16 - 2),
    delta=st.integers(-3, 3),
    rmin=st.sampled_from([0.0, -1.0, 3.0, -1000.5, 0.125]),
    width=st.sampled_from([1.0, 3.0, 255.0, 1023.0, 0.001, 7e5]),
)
def test_roundf_near_ties_matches_exact_rounding(
    bits: int, k: int, delta: int, rmin: float, width: float
) -> None:
    """Values a few ulps around (k + 0.5) steps quantise as exact float64 rounding says."""
    big = 2**bits - 1
    k %= big
    rmax = float(F32(rmin + width))
    rng = RenderRange(bits, float(F32(rmin)), rmax)
    centre = F32(float(F32(rmin)) + (k + 0.5) * (rmax - float(F32(rmin))) / big)
    v = centre
    step = np.inf if delta > 0 else -np.inf
    for _ in range(abs(delta)):
        v = np.nextafter(v, F32(step))
    a = np.array([v], dtype=F32)
    codes, _ = quantize(a, rng)
    np.testing.assert_array_equal(codes.astype(np.float64), reference_codes(a, rng))


def test_no_overflow_warning_for_far_out_pixels() -> None:
    """Pixels far outside a narrow range are clamped silently (no RuntimeWarning)."""
    a = np.array([0.0, 5e-7, 1e30, -1e30], dtype=F32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        codes, trunc = quantize(a, RenderRange(16, 0.0, 1e-6))
    assert codes.tolist() == [0, 32768, 65535, 0]
    assert trunc == 2


def test_renderer_examples_from_eman2_test_renderer() -> None:
    """rt/imageio/test_renderer.cpp (spec §7), unsigned cases, via quantize directly."""
    data = np.array([-1e5, 1, 2, 1e5], dtype=F32)
    codes, trunc = quantize(data, RenderRange(2, 0.0, 3.0))
    assert (codes.tolist(), trunc) == ([0, 1, 2, 3], 2)
    codes, trunc = quantize(data, RenderRange(3, 0.0, 7.0))
    assert (codes.tolist(), trunc) == ([0, 1, 2, 7], 2)
    codes, trunc = quantize(data, RenderRange(3, 3.0, 10.0))
    assert (codes.tolist(), trunc) == ([0, 0, 0, 7], 4)
    data6 = np.array([-1e5, 1, 2, 10, 11, 1e5], dtype=F32)
    codes, trunc = quantize(data6, RenderRange(4, 0.0, 15.0))
    assert (codes.tolist(), trunc) == ([0, 1, 2, 10, 11, 15], 2)
    codes, trunc = quantize(data6, RenderRange(7, 0.0, 127.0))
    assert (codes.tolist(), trunc) == ([0, 1, 2, 10, 11, 127], 2)
    codes, trunc = quantize(data6 + F32(42), RenderRange(7, 42.0, 169.0))
    assert (codes.tolist(), trunc) == ([0, 1, 2, 10, 11, 127], 2)
