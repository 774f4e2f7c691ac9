"""The fidelity math (pure numpy) against known answers and independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e2compress import fidelity as fd
from e2compress.quantize import RenderRange, dequantize, quantize
from e2compress.ranges import block_stats, choose_range

RNG = np.random.default_rng(20240611)


def _structure(shape: tuple[int, int], amplitude: float) -> np.ndarray:
    """Smooth blobs, a gradient and a sharp-edged disc: what an image holds besides noise."""
    ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float64)
    out = amplitude * (x / nx + 0.5 * y / ny)  # gradient
    rng = np.random.default_rng(7)
    for _ in range(12):
        cy, cx = rng.uniform(0, ny), rng.uniform(0, nx)
        out += amplitude * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * 12.0**2))
    out += 2 * amplitude * (((y - ny / 3) ** 2 + (x - nx / 3) ** 2) < (min(ny, nx) / 6) ** 2)
    return out


# --------------------------------------------------------------------------- noise


def _residual_tiles_by_hand(x: np.ndarray, tile: int) -> np.ndarray:
    """Immerkaer's mask applied pixel by pixel, tiles averaged in loops."""
    ny, nx = x.shape
    mask = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    r = np.zeros((ny - 2, nx - 2))
    for i in range(ny - 2):
        for j in range(nx - 2):
            r[i, j] = np.sum(mask * x[i : i + 3, j : j + 3])
    ty, tx = min(tile, ny - 2), min(tile, nx - 2)
    out = []
    for i in range((ny - 2) // ty):
        for j in range((nx - 2) // tx):
            out.append(np.mean(r[i * ty : (i + 1) * ty, j * tx : (j + 1) * tx] ** 2) / 36)
    return np.array(out)


@pytest.mark.parametrize("shape", [(40, 50), (37, 23), (9, 100), (3, 3)])
def test_residual_tiles_equal_the_mask_applied_by_hand(shape: tuple[int, int]) -> None:
    x = RNG.normal(100, 5, shape)
    np.testing.assert_allclose(fd.residual_tiles(x, 8), _residual_tiles_by_hand(x, 8), rtol=1e-10)


def test_residual_tiles_of_tall_images_are_banded_without_loss() -> None:
    # more rows than one band: the bands must tile the residual exactly
    x = RNG.normal(0, 1, (fd._BAND_ROWS * 2 + 50, 40))
    np.testing.assert_allclose(fd.residual_tiles(x, 16), _residual_tiles_by_hand(x, 16))


def test_residual_cancels_planes_and_separable_quadratics() -> None:
    y, x = np.mgrid[0:64, 0:64].astype(np.float64)
    smooth = 3 + 2 * x - 5 * y + 0.7 * x * y + 0.01 * x**2 + 0.02 * y**2
    assert np.abs(fd.residual_tiles(smooth)).max() < 1e-18


@pytest.mark.parametrize("sigma", [1e-3, 1.0, 300.0])
@pytest.mark.parametrize("offset", [0.0, 7000.0])
def test_noise_of_flat_gaussian_images(sigma: float, offset: float) -> None:
    img = (offset + RNG.normal(0, sigma, (512, 512))).astype(np.float32)
    est = fd.image_noise(img)
    assert est.method == "differences"
    # float32 storage adds its own rounding noise (ulp/sqrt(12)) to the true sigma
    ulp = float(np.spacing(np.float32(offset + 4 * sigma)))
    true = math.hypot(sigma, ulp / math.sqrt(12))
    assert est.sigma == pytest.approx(true, rel=0.02)


@pytest.mark.parametrize("sigma", [0.5, 4.0])
def test_noise_of_structured_gaussian_images(sigma: float) -> None:
    # structure 20x the noise: blobs, a gradient and a disc with a sharp edge
    img = _structure((768, 640), 20 * sigma) + RNG.normal(0, sigma, (768, 640))
    assert img.std() > 5 * sigma
    assert fd.image_noise(img).sigma == pytest.approx(sigma, rel=0.03)


def test_noise_of_a_volume_is_found_section_by_section() -> None:
    vol = RNG.normal(2.0, 0.25, (24, 96, 80))
    est = fd.image_noise(vol)
    assert est.sigma == pytest.approx(0.25, rel=0.02)
    assert est.tiles == 24 * 2 * 2  # 94 x 78 residual -> 2 x 2 tiles of 32 per section


@pytest.mark.parametrize("lam", [0.02, 0.7, 30.0])
def test_noise_of_flat_poisson_counts(lam: float) -> None:
    img = RNG.poisson(lam, (1024, 1024)).astype(np.uint16)
    est = fd.image_noise(img)
    assert est.method == "poisson"
    assert est.sigma == math.sqrt(img.mean())
    assert est.sigma == pytest.approx(math.sqrt(lam), rel=0.02)


def test_noise_of_structured_poisson_counts_is_the_rms_shot_noise() -> None:
    lam = 1.0 + _structure((768, 640), 1.0)  # expected counts 1 .. ~5, with an edge
    img = RNG.poisson(lam).astype(np.int32)
    est = fd.image_noise(img)
    assert est.method == "poisson"
    # the noise of a Poisson image is sqrt(lambda) per pixel; its RMS is sqrt(mean lambda)
    assert est.sigma == pytest.approx(math.sqrt(lam.mean()), rel=0.01)


def test_counts_with_a_gain_are_not_treated_as_poisson() -> None:
    # integrated counting micrograph: counts x 100 (like fei-extended.mrc)
    img = (100 * RNG.poisson(35.0, (512, 512))).astype(np.uint16)
    est = fd.image_noise(img)
    assert est.method == "differences"
    assert est.sigma == pytest.approx(100 * math.sqrt(35.0), rel=0.03)


def test_low_pass_noise_gives_the_high_frequency_level() -> None:
    # noise blurred by a [1 2 1]/4 kernel along x (a camera MTF): neighbour differences see
    # the damped high frequencies, so the estimate is below the total sigma (more bits)
    white = RNG.normal(0, 1, (512, 514))
    blurred = (white[:, :-2] + 2 * white[:, 1:-1] + white[:, 2:]) / 4
    est = fd.image_noise(blurred)
    assert est.sigma < 0.8 * blurred.std()


def test_noise_of_tiny_and_flat_images() -> None:
    assert fd.image_noise(np.zeros((2, 2))).method == "none"
    assert fd.image_noise(np.full((64, 64), 3.0)).sigma == 0.0
    row = RNG.normal(0, 2.0, (1, 4000))
    assert fd.image_noise(row).sigma == pytest.approx(2.0, rel=0.03)


# --------------------------------------------------------------------------- quantisation noise


@pytest.mark.parametrize("step", range(1, 12))
def test_integer_rounding_error_by_enumeration(step: int) -> None:
    # every residue of an integer modulo the step, rounded to the nearest multiple
    errors = [min(r, step - r) for r in range(step)]
    assert fd.integer_rounding_ms(step) == pytest.approx(np.mean(np.square(errors)))


def test_quantisation_rms_matches_measured_error_of_float_data() -> None:
    data = RNG.uniform(-3.0, 11.0, (512, 512)).astype(np.float32)
    stats = block_stats(data)
    for bits in (4, 6, 10):
        rng = choose_range(stats, bits)
        codes, _ = quantize(data, rng)
        err = dequantize(codes, rng).astype(np.float64) - data
        expected = fd.quantisation_rms(rng, integer=False)
        assert expected == pytest.approx(rng.step / math.sqrt(12))
        assert math.sqrt(np.mean(err**2)) == pytest.approx(expected, rel=0.02)


def test_quantisation_rms_matches_measured_error_of_integer_data() -> None:
    data = RNG.integers(0, 4096, (512, 512)).astype(np.uint16)
    stats = block_stats(data)
    for bits, step in ((12, 1), (9, 8), (8, 16), (7, 32)):
        rng = choose_range(stats, bits)
        codes, _ = quantize(data, rng)
        err = dequantize(codes, rng).astype(np.float64) - data
        expected = fd.quantisation_rms(rng, integer=True)
        assert expected == pytest.approx(math.sqrt(fd.integer_rounding_ms(step)))
        assert math.sqrt(np.mean(err**2)) == pytest.approx(expected, rel=0.02, abs=1e-12)


# --------------------------------------------------------------------------- choosing bits


def _float_stats(lo: float, hi: float) -> object:
    return block_stats(np.linspace(lo, hi, 1001, dtype=np.float32) + np.float32(0.01))


@pytest.mark.parametrize(
    ("lo", "hi", "sigma", "fraction"),
    [(10.25, 110.5, 1.0, 0.1), (10.25, 110.5, 1.0, 0.03), (5176.7, 8042.3, 157.0, 0.1)],
)
def test_auto_bits_for_positive_float_data(
    lo: float, hi: float, sigma: float, fraction: float
) -> None:
    stats = block_stats(np.array([lo, hi, (lo + hi) / 2], dtype=np.float32))
    assert not stats.all_int
    choice = fd.choose_bits(stats, sigma, fraction)
    # independent: range [lo, hi] in 2**b - 1 steps; need step / sqrt(12) <= F sigma
    span = float(np.float32(hi)) - float(np.float32(lo))
    expected = math.ceil(math.log2(span / (fraction * sigma * math.sqrt(12)) + 1))
    assert choice.bits == max(expected, fd.MIN_BITS)
    assert choice.ratio <= fraction
    worse = choose_range(stats, choice.bits - 1)
    assert worse.step / math.sqrt(12) > fraction * sigma


def test_auto_bits_for_zero_straddling_float_data() -> None:
    stats = block_stats(np.array([-50.0, 50.0, 1.3], dtype=np.float32))
    # the grid through zero has step span / (2**b - 2)
    choice = fd.choose_bits(stats, 1.0, 0.1)
    expected = min(b for b in range(2, 17) if 100 / (2**b - 2) / math.sqrt(12) <= 0.1)
    assert choice.bits == expected == 9


@pytest.mark.parametrize(
    ("sigma", "bits", "exact"),
    [
        (30.0, 7, False),  # step 8: rms sqrt(66/12) = 2.35 <= 3; step 16: 4.6 > 3
        (100.0, 5, False),  # step 32: 9.2 <= 10; step 64: 18.5 > 10
        (10.0, 10, True),  # the noise needs 9 bits (step 2): exact (10 bits) costs only 1 more
        (6.0, 10, True),  # the noise needs step 1: exact
    ],
)
def test_auto_bits_for_integer_data(sigma: float, bits: int, exact: bool) -> None:
    stats = block_stats(np.array([0, 1000, 17], dtype=np.int32))
    choice = fd.choose_bits(stats, sigma, 0.1)
    assert (choice.bits, choice.exact) == (bits, exact)
    assert choice.quant_rms <= 0.1 * sigma


def test_auto_bits_store_low_counts_exactly() -> None:
    counts = RNG.poisson(1.0, (256, 256)).astype(np.uint16)
    stats = block_stats(counts)
    choice = fd.choose_bits(stats, math.sqrt(counts.mean()), 0.1)
    assert choice.exact
    assert choice.quant_rms == 0.0
    assert choice.bits == int(counts.max()).bit_length()


def test_auto_bits_without_measurable_noise() -> None:
    assert fd.choose_bits(_float_stats(0.0, 1.0), 0.0).bits == 0  # lossless float32
    ints = block_stats(np.array([3, 200], dtype=np.int16))
    assert fd.choose_bits(ints, 0.0).bits == 8
    with pytest.raises(ValueError, match="fraction"):
        fd.choose_bits(ints, 1.0, 0.0)


def test_auto_bits_use_the_limits_of_a_range_option() -> None:
    data = np.concatenate([RNG.normal(0.0, 1.0, 10000), [1e4]]).astype(np.float32)
    limits = (-5.0, 5.0)
    clamped = block_stats(data, limits)
    with_limits = fd.choose_bits(clamped, 1.0, 0.1, limits)
    without = fd.choose_bits(block_stats(data), 1.0, 0.1)
    # clamped data span [min, 5] and straddle 0: grid step span / (2**b - 2)
    span = 5.0 - float(data.min())
    expected = min(b for b in range(2, 17) if span / (2**b - 2) / math.sqrt(12) <= 0.1)
    assert with_limits.bits == expected == 5
    assert without.bits > with_limits.bits + 8  # the outlier widens the range 1000x


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    lo=st.floats(-1e4, 1e4),
    span=st.floats(1e-3, 1e5),
    sigma=st.floats(1e-4, 1e3),
    fraction=st.floats(0.01, 0.5),
)
def test_auto_bits_are_the_fewest_that_pass(
    lo: float, span: float, sigma: float, fraction: float
) -> None:
    data = np.array([lo, lo + span, lo + span / 3], dtype=np.float32)
    stats = block_stats(data)
    choice = fd.choose_bits(stats, sigma, fraction)
    q = [fd.quantisation_rms(choose_range(stats, b), stats.all_int) for b in range(2, 17)]
    passing = [b for b, v in zip(range(2, 17), q, strict=True) if v <= fraction * sigma]
    if stats.all_int:
        assert choice.bits in passing
    elif passing:
        assert choice.bits == passing[0]
    else:
        assert choice.bits == 0


# --------------------------------------------------------------------------- FRC / FSC


def _rings_by_full_fft(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """FRC/FSC with complex FFTs and an explicit ring loop."""
    fa, fb = np.fft.fftn(a), np.fft.fftn(b)
    grids = np.meshgrid(*[np.fft.fftfreq(s) for s in a.shape], indexing="ij")
    ring = np.rint(np.sqrt(sum(g**2 for g in grids)) * min(a.shape)).astype(int)
    out = []
    for k in range(min(a.shape) // 2 + 1):
        m = ring == k
        num = np.sum(fa[m] * np.conj(fb[m])).real
        out.append(num / np.sqrt(np.sum(np.abs(fa[m]) ** 2) * np.sum(np.abs(fb[m]) ** 2)))
    return np.array(out)


@pytest.mark.parametrize("shape", [(64, 64), (45, 70), (31, 33), (12, 20, 18)])
def test_ring_sums_equal_the_full_transform(shape: tuple[int, ...]) -> None:
    a = RNG.normal(0, 1, shape)
    b = a + RNG.normal(0, 0.7, shape)
    rings = fd.ring_sums(a, b)
    np.testing.assert_allclose(rings.correlation, _rings_by_full_fft(a, b), rtol=1e-9)
    assert rings.frequency[-1] == pytest.approx(min(shape) // 2 / min(shape))


@pytest.mark.parametrize("shape", [(128, 96), (24, 24, 24)])
def test_frc_of_identical_images_is_one(shape: tuple[int, ...]) -> None:
    a = _structure((128, 96), 5.0)[: shape[0], : shape[1]] if len(shape) == 2 else None
    img = RNG.normal(0, 1, shape) if a is None else a + RNG.normal(0, 1, shape)
    rings = fd.ring_sums(img, img)
    np.testing.assert_allclose(rings.correlation, 1.0, rtol=1e-12)
    assert fd.threshold_frequency(rings.frequency, rings.correlation) is None


@pytest.mark.parametrize("shape", [(256, 256), (32, 32, 32)])
def test_frc_of_independent_noise_is_near_zero(shape: tuple[int, ...]) -> None:
    rings = fd.ring_sums(RNG.normal(0, 1, shape), RNG.normal(0, 1, shape))
    c, n = rings.correlation[1:], rings.count[1:]
    # each ring's correlation of independent noise has standard deviation ~ 1/sqrt(n/2)
    assert np.all(np.abs(c) < 5 / np.sqrt(n / 2))
    assert abs(float(np.mean(c))) < 0.02


def test_frc_of_an_image_with_added_white_noise() -> None:
    # b = a + e, both white: FRC = var(a) / sqrt(var(a) (var(a) + var(e))) in every ring
    a = RNG.normal(0, 1.0, (512, 512))
    b = a + RNG.normal(0, 0.3, (512, 512))
    rings = fd.ring_sums(a, b)
    assert float(np.median(rings.correlation[1:])) == pytest.approx(1 / math.sqrt(1.09), abs=2e-3)


def test_ring_sums_merge_is_the_sum_over_images() -> None:
    a, b = RNG.normal(0, 1, (2, 40, 40)), RNG.normal(0, 1, (2, 40, 40))
    merged = fd.ring_sums(a[0], b[0]).merge(fd.ring_sums(a[1], b[1]))
    fa, fb = np.fft.fft2(a), np.fft.fft2(b)
    cross = (fa * fb.conj()).real.sum(axis=0)
    total = fd.ring_sums(a[0], b[0])
    assert merged.count.sum() == 2 * total.count.sum()
    ring = fd._ring_index((40, 40))[0]
    full = np.fft.fftfreq(40)
    rr = np.rint(np.hypot(full[:, None], full[None, :]) * 40).astype(int)
    for k in (1, 5, 19):
        assert merged.cross[k] == pytest.approx(cross[rr == k].sum())
    assert ring.shape == (40, 21)
    with pytest.raises(ValueError, match="shapes"):
        merged.merge(fd.ring_sums(RNG.normal(0, 1, (8, 8)), RNG.normal(0, 1, (8, 8))))


def test_threshold_frequency_interpolates() -> None:
    freq = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    corr = np.array([1.0, 0.9995, 0.9993, 0.9985, 0.99])
    # between 0.2 (0.9993) and 0.3 (0.9985): 0.2 + 0.1 * 0.0003 / 0.0008
    assert fd.threshold_frequency(freq, corr, 0.999) == pytest.approx(0.2375)
    assert fd.threshold_frequency(freq, corr, 0.98) is None
    assert fd.threshold_frequency(freq, np.array([1, np.nan, 0.5, 0.2, 0.1]), 0.9) == (
        pytest.approx(0.2 * (1 - 0.9) / (1 - 0.5))
    )
    assert fd.resolution(0.25) == 4.0
    assert fd.resolution(0.25, 1.5) == 6.0
    assert fd.resolution(None) is None


# --------------------------------------------------------------------------- errors


def test_error_stats_of_a_known_error() -> None:
    orig = RNG.normal(50, 10, (64, 64))
    err = np.where(RNG.random((64, 64)) < 0.5, 0.25, -0.25)
    err[3, 4] = 0.4
    e = fd.error_stats(orig, orig + err)
    assert e.max_abs == pytest.approx(0.4)
    assert e.rms == pytest.approx(math.sqrt(np.mean(err**2)))
    assert e.pearson == pytest.approx(np.corrcoef(orig.ravel(), (orig + err).ravel())[0, 1])


def test_error_stats_merge_equals_the_whole() -> None:
    orig = RNG.normal(7000, 250, (100, 80)).astype(np.float32)
    dec = (orig + RNG.normal(0, 30, orig.shape)).astype(np.float32)
    rng = RenderRange(8, 6800.0, 7300.0)
    whole = fd.error_stats(orig, dec, rng)
    parts = fd.error_stats(orig[:37], dec[:37], rng).merge(fd.error_stats(orig[37:], dec[37:], rng))
    assert parts.count == whole.count
    assert parts.truncated == whole.truncated
    assert parts.rms == pytest.approx(whole.rms, rel=1e-12)
    assert parts.inside_rms == pytest.approx(whole.inside_rms, rel=1e-12)
    assert parts.pearson == pytest.approx(whole.pearson, rel=1e-12)
    outside = (orig < np.float32(6800)) | (orig > np.float32(7300))
    assert whole.truncated == int(outside.sum()) > 0
    diff = dec.astype(np.float64) - orig
    assert whole.inside_rms == pytest.approx(math.sqrt(np.mean(diff[~outside] ** 2)))
    assert whole.histogram is not None
    assert parts.histogram is not None
    np.testing.assert_array_equal(whole.histogram, parts.histogram)
