"""What to store for one image: its value limits, stored range, bits and quality.

Pure numpy, no I/O: the encoder measures an image block by block (:class:`Measured`)
and :func:`plan_image` decides, once per image, how it is stored (:class:`Plan`).
The measurement itself needs two decisions first, also made here: which value
limits the range option asks for (:func:`wanted_limits`, from the statistics and,
for ``nooutliers``, a histogram) and the limits stored (:func:`stored_limits`), so
that the encoder can measure the statistics of the pixels clamped to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import InputError
from .fidelity import (
    MAX_BITS,
    NoiseEstimate,
    bits_needed,
    choose_bits,
    estimate_noise,
    mean_change_limit,
    noise_ratio,
    quantisation_rms,
)
from .options import Options
from .quantize import F32, F32_MAX, RenderRange, integer_step
from .ranges import (
    Stats,
    choose_range,
    integer_limits,
    nooutliers_limits,
    sigrange_limits,
    valid_limits,
)

Limits = tuple[float, float]


@dataclass
class NoiseSample:
    """Noise tiles of part of an image (see :func:`~e2compress.fidelity.residual_tiles`),
    with the sum and count of the pixels they were taken from."""

    tiles: list[np.ndarray] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def merge(self, other: NoiseSample) -> NoiseSample:
        """Both samples together."""
        return NoiseSample(
            self.tiles + other.tiles, self.total + other.total, self.count + other.count
        )

    @property
    def mean(self) -> float | None:
        """Mean of the sampled pixels (None: none sampled)."""
        return self.total / self.count if self.count else None


@dataclass(frozen=True)
class Measured:
    """What was measured about one image.

    Attributes:
        dtype: the source's data type (for the advice when bits 0 cannot hold it).
        stats: statistics of all its pixels, unclamped (mean and sigma only when the
            range option needs them; for bits 0, only for sources wider than float32).
        limits: the value limits the range keeps to (:func:`stored_limits`), or None.
        clamped: statistics of the pixels clamped to ``limits`` (None: the same as
            ``stats``, the limits cut nothing).
        noise: noise tiles of the image (None: not measured, no quality check).
    """

    dtype: np.dtype
    stats: Stats
    limits: Limits | None = None
    clamped: Stats | None = None
    noise: NoiseSample | None = None


@dataclass(frozen=True)
class Quality:
    """The image's noise against the quantisation noise of its stored range."""

    noise: NoiseEstimate
    quant_rms: float
    # fewest bits that pass the noise rule (0: only lossless); found only for images that
    # fail it at their bits (None otherwise: searching costs more than a small image)
    passing_bits: int | None
    # the largest change of the image's mean the noise rule allows (None: no noise)
    mean_limit: float | None = None

    def ratio(self) -> float | None:
        """Quantisation noise over image noise; None when the image has no measurable noise."""
        if self.noise.method == "none" or self.noise.sigma <= 0:
            return None
        return noise_ratio(self.quant_rms, self.noise.sigma)


@dataclass(frozen=True)
class Plan:
    """How one image is stored.

    Attributes:
        range: the stored range (None: float32, exactly).
        quality: the noise check's inputs (None: the image's noise was not measured).
    """

    range: RenderRange | None
    quality: Quality | None = None

    @property
    def bits(self) -> int:
        """Stored bits (0: float32)."""
        return self.range.bits if self.range is not None else 0


def check_finite(stats: Stats) -> None:
    """Refuse NaN or infinite pixels, which no quantised range holds.

    Raises:
        InputError: ``stats`` count such pixels.
    """
    if stats.nonfinite:
        raise InputError(
            f"{stats.nonfinite} pixels are NaN or infinite; quantised output cannot hold "
            "them (bits=0 keeps them exactly)"
        )


def needs_histogram(stats: Stats, options: Options) -> bool:
    """Whether :func:`wanted_limits` needs the image's histogram over its min..max."""
    return (
        options.value_range is None
        and options.sigrange is None
        and options.nooutliers
        and stats.maximum > stats.minimum
    )


def wanted_limits(
    stats: Stats, options: Options, histogram: np.ndarray | None = None
) -> Limits | None:
    """The value limits the range option asks for (None: the image's own min..max).

    ``value_range`` as given; ``sigrange`` from the mean and sigma; ``nooutliers``
    from ``histogram`` (:func:`~e2compress.quantize.histogram` over min..max, needed
    when :func:`needs_histogram`). Limits beyond +-1e28 (not valid) are refined by the
    encoder, which can look at the pixels again.

    Raises:
        InputError: NaN or infinite pixels.
    """
    check_finite(stats)
    if options.value_range is not None:
        return options.value_range
    if options.sigrange is not None:
        return sigrange_limits(stats, *options.sigrange)
    if needs_histogram(stats, options):
        if histogram is None:
            raise ValueError("nooutliers needs the image's histogram")
        return nooutliers_limits(histogram, stats.minimum, stats.maximum, stats.count)
    return None


def stored_limits(limits: Limits | None, stats: Stats) -> Limits | None:
    """The limits the range keeps to: widened to integers for integer data (an integer
    mapping), None when not valid (see :func:`~e2compress.quantize.valid_limits`)."""
    if limits is not None and stats.all_int:
        limits = integer_limits(limits)
    if limits is not None and not valid_limits(*limits):
        return None
    return limits


def clips(limits: Limits | None, stats: Stats) -> bool:
    """Whether ``limits`` cut pixels of ``stats`` (in float32, as they are stored)."""
    return limits is not None and not (
        F32(limits[0]) <= F32(stats.minimum) and F32(stats.maximum) <= F32(limits[1])
    )


def plan_image(measured: Measured, options: Options) -> Plan:
    """The stored range and bits of one image, and its quality check.

    Fixed bits: the range of the (clamped) statistics at those bits. ``bits="auto"``:
    the fewest bits that pass the noise rule (:func:`~e2compress.fidelity.choose_bits`),
    float32 when none up to 16 does (the finest grid for values float32 cannot hold).

    Args:
        measured: what was measured about the image.
        options: the validated settings.

    Raises:
        InputError: values no storage at these settings can hold (NaN or infinite for
            a quantised range, a span too wide for float32, values float32 cannot hold
            for bits 0); the message says what would store them.
    """
    st = measured.stats
    if options.bits == 0:
        _check_lossless(st, measured.dtype)
        return Plan(None)
    check_finite(st)
    clamped = measured.clamped if measured.clamped is not None else st
    limits = measured.limits
    if measured.noise is None:
        return Plan(_range(clamped, st, options.bits, limits, options))
    sample = measured.noise
    noise_mean = sample.mean
    noise = estimate_noise(sample.tiles, mean=noise_mean, minimum=st.minimum, integer=st.all_int)
    sigma = noise.sigma if noise.method != "none" else 0.0
    mean_limit = mean_change_limit(noise, noise_mean or 0.0, options.noise_fraction)
    bits = options.bits
    if options.auto:
        bits = choose_bits(clamped, sigma, options.noise_fraction, limits).bits
        if bits == 0 and st.inexact:  # float32 cannot hold them: the finest grid
            bits = MAX_BITS
        if bits == 0:  # no bits up to 16 keep the noise rule: store float32 exactly
            return Plan(None, Quality(noise, 0.0, 0))
    rng = _range(clamped, st, bits, limits, options)
    quant = quantisation_rms(rng, clamped.all_int)
    passing: int | None = None
    ratio = Quality(noise, quant, None).ratio()
    if options.auto:
        passing = bits
    elif ratio is not None and ratio > options.noise_fraction:  # only failures need advice
        passing = bits_needed(clamped, sigma, options.noise_fraction, limits)
    return Plan(rng, Quality(noise, quant, passing, mean_limit))


def _range(
    clamped: Stats, st: Stats, bits: int, limits: Limits | None, options: Options
) -> RenderRange:
    """The stored range for ``bits``; refused when no float32 reader could decode it."""
    rng = choose_range(clamped, bits, limits)
    if rng.is_finite:
        return rng
    lo, hi = (clamped.minimum, clamped.maximum) if limits else (st.minimum, st.maximum)
    fix = "give a value range that holds the real data"
    if options.nooutliers and limits is None:
        fix = "nooutliers cannot narrow them (EMAN2's limits must lie within 1e28); " + fix
    elif limits is None:
        fix = "clamp a few such pixels with nooutliers, or " + fix
    if abs(lo) <= F32_MAX and abs(hi) <= F32_MAX:
        fix += ", or use bits 0 to keep them exactly"
    raise InputError(
        f"values span {lo:.3g}..{hi:.3g}, too wide for a quantised range in float32 "
        f"(corrupt or uninitialised data?); {fix}"
    )


def _check_lossless(st: Stats, dtype: np.dtype) -> None:
    """Refuse bits 0 for values float32 (EMAN2's only lossless storage) cannot hold,
    saying which bits would store them."""
    if not st.inexact:
        return
    head = (
        f"{st.inexact} of {st.count} {dtype} values are not exact in float32, EMAN2's "
        "only lossless storage (bits 0)"
    )
    rng = choose_range(st, MAX_BITS)
    if not rng.is_finite:
        fix = "no EMAN2 storage holds them; scale the data into float32's range"
    elif integer_step(rng) == 1:
        fix = (
            f"bits {MAX_BITS} stores them exactly (an integer mapping; EMAN2 itself "
            "decodes it to float32, rounded)"
        )
    else:
        fix = f"bits {MAX_BITS} stores them within half a step of {rng.step:.3g}"
    raise InputError(f"{head}; {fix}")
