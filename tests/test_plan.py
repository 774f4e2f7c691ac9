"""plan.py: the per-image choice of limits, range, bits and quality, on hand-computed cases.

Every expected value here is worked out by hand from the rules (EMAN2's decision chain,
spec §2.2; the noise rule, docs/fidelity.md), not taken from the code's output.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from e2compress.errors import InputError
from e2compress.options import Options
from e2compress.plan import (
    Measured,
    NoiseSample,
    clips,
    needs_histogram,
    plan_image,
    stored_limits,
    wanted_limits,
)
from e2compress.quantize import RenderRange
from e2compress.ranges import Stats

F4 = np.dtype("float32")
I2 = np.dtype("int16")


def _floats(lo: float, hi: float, count: int = 100) -> Stats:
    return Stats(count=count, minimum=lo, maximum=hi, all_int=False)


def _ints(lo: int, hi: int, count: int = 100) -> Stats:
    return Stats(count=count, minimum=lo, maximum=hi, all_int=True)


def _noise(sigma: float) -> NoiseSample:
    """A noise sample whose estimate is ``sigma`` (every tile's residual variance sigma**2)."""
    return NoiseSample([np.full(3, sigma * sigma)], total=0.0, count=0)


def test_value_range_on_floats_is_passed_through() -> None:
    """Positive data clamped to 20..80: no zero to keep on the grid, so the limits are
    the stored range as given."""
    st = _floats(10.5, 99.5)
    opts = Options(bits=8, value_range=(20.0, 80.0)).validate()
    limits = stored_limits(wanted_limits(st, opts), st)
    assert limits == (20.0, 80.0)
    assert clips(limits, st)
    plan = plan_image(Measured(F4, st, limits, _floats(20.0, 80.0)), opts)
    assert plan.range == RenderRange(8, 20.0, 80.0)
    assert plan.range.rule == "limits_passed_through"
    assert plan.quality is None  # noise not measured
    assert plan.bits == 8


def test_value_range_on_integers_widens_to_integers_and_maps_them_exactly() -> None:
    """10.5..200.2 on integer data becomes 10..201; its 191 values fit in 8 bits: an
    integer mapping 10 + code, up to 10 + 255."""
    st = _ints(0, 1000)
    opts = Options(bits=8, value_range=(10.5, 200.2)).validate()
    limits = stored_limits(wanted_limits(st, opts), st)
    assert limits == (10.0, 201.0)
    plan = plan_image(Measured(I2, st, limits, _ints(10, 201)), opts)
    assert plan.range == RenderRange(8, 10.0, 265.0)
    assert plan.range.rule == "integer_lossless"


def test_sigrange_from_mean_and_sigma() -> None:
    """Values 1, 2, 3, 4: mean 2.5, sigma sqrt(5/3) (n - 1); sigrange 1,1 asks for
    mean -+ sigma = 1.209..3.791, widened on integers to 1..4: nothing is clamped."""
    st = Stats(count=4, minimum=1.0, maximum=4.0, total=10.0, sumsq=30.0, all_int=True)
    opts = Options(bits=4, sigrange=(1.0, 1.0)).validate()
    wanted = wanted_limits(st, opts)
    assert wanted is not None
    s = math.sqrt(5 / 3)
    assert wanted == pytest.approx((2.5 - s, 2.5 + s), rel=1e-6)
    limits = stored_limits(wanted, st)
    assert limits == (1.0, 4.0)
    assert not clips(limits, st)
    plan = plan_image(Measured(I2, st, limits), opts)
    assert plan.range == RenderRange(4, 1.0, 16.0)  # 1 + code, codes 0..15


def _hist(counts: dict[int, int]) -> np.ndarray:
    hist = np.zeros(1024, dtype=np.int64)
    for b, n in counts.items():
        hist[b] = n
    return hist


def test_nooutliers_on_integers() -> None:
    """100 pixels over 0..1000 (bin width 1000/1023): 5 low and 5 high outliers, 45 at
    bin 100 and 45 at bin 600. At most 8 may be clipped per tail, so the limits are
    bins 100 and 600: 97.75..586.51, widened to 97..587. 490 values need 9 bits: at 8,
    an integer step of 2 from 97, up to 97 + 2 * 255 = 607."""
    st = _ints(0, 1000)
    opts = Options(bits=8, nooutliers=True).validate()
    assert needs_histogram(st, opts)
    with pytest.raises(ValueError, match="histogram"):
        wanted_limits(st, opts)
    hist = _hist({0: 5, 100: 45, 600: 45, 1023: 5})
    wanted = wanted_limits(st, opts, hist)
    assert wanted == pytest.approx((100 * 1000 / 1023, 600 * 1000 / 1023))
    limits = stored_limits(wanted, st)
    assert limits == (97.0, 587.0)
    plan = plan_image(Measured(I2, st, limits, _ints(97, 587)), opts)
    assert plan.range == RenderRange(8, 97.0, 607.0)
    assert plan.range.rule == "integer_step"
    assert plan.range.step == 2.0


def test_nooutliers_on_a_flat_image_needs_nothing() -> None:
    st = _ints(7, 7)
    opts = Options(bits=8, nooutliers=True).validate()
    assert not needs_histogram(st, opts)
    assert wanted_limits(st, opts) is None


def test_limits_beyond_1e28_are_ignored() -> None:
    assert stored_limits((-1e30, 5.0), _floats(0.0, 1.0)) is None
    assert stored_limits((3.0, 3.0), _floats(0.0, 1.0)) is None


def test_fixed_bits_with_the_quality_check() -> None:
    """0.5..100.5 at 5 bits: step 100/31, quantisation noise step/sqrt(12) = 0.931
    against noise 2: ratio 0.466 fails the 0.1 rule. The fewest passing bits: step
    <= 0.2 * sqrt(12) = 0.693 needs 2**b - 1 >= 144.3, so 8."""
    st = _floats(0.5, 100.5)
    opts = Options(bits=5).validate()
    plan = plan_image(Measured(F4, st, noise=_noise(2.0)), opts)
    assert plan.range == RenderRange(5, 0.5, 100.5)
    q = plan.quality
    assert q is not None
    assert q.noise.sigma == pytest.approx(2.0)
    assert q.noise.method == "differences"
    assert q.quant_rms == pytest.approx(100 / 31 / math.sqrt(12))
    assert q.ratio() == pytest.approx(100 / 31 / math.sqrt(12) / 2)
    assert q.passing_bits == 8
    assert q.mean_limit == pytest.approx(0.1 * 0.1 * 2.0)  # F**2 of the noise


def test_fixed_bits_that_pass_give_no_advice() -> None:
    plan = plan_image(Measured(F4, _floats(0.5, 100.5), noise=_noise(2.0)), Options(bits=10))
    assert plan.quality is not None
    assert plan.quality.passing_bits is None


def test_auto_bits_are_the_fewest_that_pass() -> None:
    """The same image with bits auto: 8 bits (see above), the range 0.5..100.5."""
    plan = plan_image(
        Measured(F4, _floats(0.5, 100.5), noise=_noise(2.0)), Options(bits="auto").validate()
    )
    assert plan.bits == 8
    assert plan.range == RenderRange(8, 0.5, 100.5)
    assert plan.quality is not None
    assert plan.quality.passing_bits == 8
    assert plan.quality.quant_rms == pytest.approx(100 / 255 / math.sqrt(12))


def test_auto_bits_store_quiet_integers_exactly() -> None:
    """Integers 0..200 with noise 0.1: no integer step > 1 passes (rounding to step 2
    alone adds sqrt(0.5) = 0.71), and 8 bits hold all 201 values exactly."""
    plan = plan_image(
        Measured(I2, _ints(0, 200), noise=_noise(0.1)), Options(bits="auto").validate()
    )
    assert plan.range == RenderRange(8, 0.0, 255.0)
    assert plan.quality is not None
    assert plan.quality.quant_rms == 0.0


def test_auto_bits_keep_noiseless_floats_as_float32() -> None:
    """No noise: no bits pass the rule for non-integers, so float32, exactly."""
    plan = plan_image(
        Measured(F4, _floats(0.5, 100.5), noise=_noise(0.0)), Options(bits="auto").validate()
    )
    assert plan.range is None
    assert plan.bits == 0
    assert plan.quality is not None
    assert plan.quality.passing_bits == 0


def test_auto_bits_for_values_float32_cannot_hold_use_the_finest_grid() -> None:
    st = Stats(count=10, minimum=0.5, maximum=100.5, all_int=False, inexact=3)
    plan = plan_image(Measured(np.dtype("float64"), st, noise=_noise(0.0)), Options(bits="auto"))
    assert plan.bits == 16


def test_bits_0_refuses_values_float32_cannot_hold() -> None:
    st = Stats(count=4, minimum=0.0, maximum=2.0**30 + 1, all_int=True, inexact=1)
    with pytest.raises(InputError, match="1 of 4 int32 values are not exact in float32"):
        plan_image(Measured(np.dtype("int32"), st), Options(bits=0))
    assert plan_image(Measured(F4, Stats()), Options(bits=0)).range is None


def test_non_finite_pixels_are_refused_naming_the_parameter() -> None:
    st = Stats(count=4, minimum=0.0, maximum=1.0, nonfinite=2)
    with pytest.raises(InputError, match=r"2 pixels are NaN or infinite.*bits=0 keeps them"):
        wanted_limits(st, Options(bits=8))
    with pytest.raises(InputError, match="NaN or infinite"):
        plan_image(Measured(F4, st), Options(bits=8))


def test_a_span_beyond_float32_is_refused_with_the_fix() -> None:
    with pytest.raises(InputError, match=r"too wide.*clamp a few such pixels with nooutliers"):
        plan_image(Measured(F4, _floats(-3e38, 3e38)), Options(bits=8))


def test_noise_samples_merge() -> None:
    a = NoiseSample([np.ones(2)], 3.0, 2)
    b = NoiseSample([np.ones(3)], 5.0, 6)
    both = a.merge(b)
    assert len(both.tiles) == 2
    assert both.total == 8.0
    assert both.count == 8
    assert both.mean == 1.0
    assert NoiseSample().mean is None
