"""What bit truncation keeps: image noise, quantisation noise, FRC/FSC, bit choice (pure numpy).

No I/O here; :mod:`e2compress.compare`, :mod:`e2compress.info` and the pipeline feed it arrays.

Image noise
    Estimated per 2-D section from the residual of Immerkaer's 3x3 mask
    ``[1 -2 1] x [1 -2 1]`` (J. Immerkaer, CVIU 64, 1996): the product of second
    differences along x and y. It cancels anything that is locally linear along x or y
    (backgrounds, gradients, smooth particles, low-pass filtered maps), and for white
    noise of variance s^2 the residual has variance 36 s^2. The residual's mean square is
    taken per tile of 32 x 32 and the *median* over tiles is used, so the few tiles
    holding edges, carbon or hot pixels do not count. The mask weights the highest
    spatial frequencies, so for noise damped by a camera MTF (or a filtered map) it
    measures the noise near Nyquist: where white quantisation noise first matters
    (Sigworth's argument), which makes the estimate conservative (more bits).

    Counting data (integers >= 0 whose residual variance matches the mean within a
    factor of 2, i.e. gain 1) are Poisson: the noise is ``sqrt(mean)`` exactly,
    whatever the structure, and that value is used.

Quantisation noise
    ``step / sqrt(12)`` for a uniform grid; integer data on an integer step s have
    the discrete rounding error, mean square (s^2 - 1)/12 for odd s and (s^2 + 2)/12 for
    even s (0 when s = 1: exact).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from .quantize import RenderRange, integer_step, range_limits
from .ranges import Stats, choose_range

NOISE_TILE = 32
DEFAULT_NOISE_FRACTION = 0.1
FRC_THRESHOLD = 0.999
MIN_BITS, MAX_BITS = 2, 16
# For integer data, store exactly when that costs at most this many bits over the noise rule.
EXACT_EXTRA_BITS = 1
_POISSON_RATIO = (0.5, 2.0)


# --------------------------------------------------------------------------- image noise


def residual_tiles(section: np.ndarray, tile: int = NOISE_TILE) -> np.ndarray:
    """Per-tile noise variance estimates of one 2-D section (float64, one value per tile).

    Each value is the mean square of the Immerkaer residual over a tile, divided by 36
    (the residual variance of unit white noise). Rows or columns that do not fill a tile
    are left out. Sections with fewer than 3 rows use the second difference along x
    (variance 6). Empty result when the section is too small (under 3 columns).
    """
    x = np.asarray(section)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"residual_tiles needs a 2-D section, not shape {x.shape}")
    ny, nx = x.shape
    if nx < 3:
        return np.empty(0)
    if ny < 3:
        return _tile_means(_d2x(x), ny, 6.0, tile)
    ty = min(tile, ny - 2)
    band = ty * max(1, _BAND_ROWS // ty)  # residual rows per band: bounded memory
    parts = []
    for r0 in range(0, (ny - 2) // ty * ty, band):
        r1 = min(r0 + band, (ny - 2) // ty * ty)
        d = _d2x(x[r0 : r1 + 2])
        parts.append(_tile_means(d[:-2] - 2.0 * d[1:-1] + d[2:], ty, 36.0, min(tile, nx - 2)))
    return np.concatenate(parts)


_BAND_ROWS = 256


def _d2x(x: np.ndarray) -> np.ndarray:
    f = x.astype(np.float64)
    out: np.ndarray = f[:, :-2] - 2.0 * f[:, 1:-1] + f[:, 2:]
    return out


def _tile_means(r: np.ndarray, ty: int, norm: float, tx: int | None = None) -> np.ndarray:
    ry, rx = r.shape
    ty = min(ty, ry)
    tx = min(tx or ty, rx)
    my, mx = ry // ty, rx // tx
    with np.errstate(over="ignore", invalid="ignore"):  # a tile of huge values is inf
        blocks = (r[: my * ty, : mx * tx] ** 2).reshape(my, ty, mx, tx)
        out: np.ndarray = blocks.mean(axis=(1, 3)).reshape(-1) / norm
    return out


@dataclass(frozen=True)
class NoiseEstimate:
    """An image's noise: standard deviation in data units and how it was found."""

    sigma: float
    method: str  # "differences", "poisson" or "none"
    tiles: int = 0


def estimate_noise(
    tiles: np.ndarray | Iterable[np.ndarray],
    *,
    mean: float | None = None,
    minimum: float | None = None,
    integer: bool = False,
) -> NoiseEstimate:
    """Combine per-tile estimates (see :func:`residual_tiles`) into the image's noise.

    ``mean``, ``minimum`` and ``integer`` describe the whole image; with them, count
    data (integers >= 0, residual variance within a factor 2 of the mean) get the
    Poisson value ``sqrt(mean)``. Otherwise the median tile is used.
    """
    parts = [tiles] if isinstance(tiles, np.ndarray) else list(tiles)
    flat = [np.asarray(t, dtype=np.float64).reshape(-1) for t in parts]
    values = np.concatenate(flat) if flat else np.empty(0)
    if values.size == 0:
        return NoiseEstimate(0.0, "none", 0)
    if integer and mean is not None and mean > 0 and minimum is not None and minimum >= 0:
        ratio = float(np.mean(values)) / mean
        if _POISSON_RATIO[0] <= ratio <= _POISSON_RATIO[1]:
            return NoiseEstimate(math.sqrt(mean), "poisson", int(values.size))
    return NoiseEstimate(math.sqrt(float(np.median(values))), "differences", int(values.size))


def image_noise(image: np.ndarray, *, tile: int = NOISE_TILE) -> NoiseEstimate:
    """Noise of a 2-D image, or of a 3-D image section by section (in-plane)."""
    a = np.asarray(image)
    sections = a[None] if a.ndim <= 2 else a.reshape(-1, *a.shape[-2:])
    tiles = [residual_tiles(s, tile) for s in sections]
    integer = a.dtype.kind in "iub" or bool(np.all(np.trunc(a) == a))
    return estimate_noise(
        tiles,
        mean=float(np.mean(a, dtype=np.float64)) if a.size else None,
        minimum=float(np.min(a)) if a.size else None,
        integer=integer,
    )


# --------------------------------------------------------------------------- quantisation noise


def integer_rounding_ms(step: int) -> float:
    """Mean square error of rounding uniformly spread integers to a grid of integer ``step``."""
    s = int(step)
    if s < 1:
        raise ValueError(f"step must be >= 1, not {step}")
    return (s * s - 1) / 12.0 if s % 2 else (s * s + 2) / 12.0


def quantisation_rms(rng: RenderRange | None, integer: bool = False) -> float:
    """Expected RMS error that ``rng`` adds to data inside its range (0 for float storage).

    ``integer``: the data are integers, so an integer step rounds exactly.
    """
    if rng is None:
        return 0.0
    step = rng.step
    if step <= 0:
        return 0.0
    if integer:
        s = integer_step(rng)
        if s is not None:
            return math.sqrt(integer_rounding_ms(s))
        rmin, rmax = float(np.float32(rng.rmin)), float(np.float32(rng.rmax))
        if rmin.is_integer() and rmax - rmin == 1.0:  # EMAN2's unit range: both ends exact
            return 0.0
    return step / math.sqrt(12.0)


def mean_change_limit(noise: NoiseEstimate, mean: float, fraction: float) -> float | None:
    """The largest change of an image's mean (from clamping) the noise rule allows:
    ``fraction**2`` of the mean for counting data (1 % of the dose at F = 0.1), of the
    image's noise otherwise. None when the image has no measurable noise."""
    if noise.method == "none" or noise.sigma <= 0:
        return None
    scale = abs(mean) if noise.method == "poisson" else noise.sigma
    return fraction * fraction * scale


def noise_ratio(quant_rms: float, sigma: float) -> float:
    """Quantisation noise over image noise (inf when the image has no measurable noise)."""
    if quant_rms == 0.0:
        return 0.0
    return quant_rms / sigma if sigma > 0 else math.inf


@dataclass(frozen=True)
class BitsChoice:
    """The bits chosen for one image by the noise rule, and why."""

    bits: int  # 0 = lossless float32 (no bits <= 16 passes)
    rng: RenderRange | None
    quant_rms: float
    ratio: float
    exact: bool  # integer data stored exactly
    reason: str


def choose_bits(
    stats: Stats,
    sigma: float,
    fraction: float = DEFAULT_NOISE_FRACTION,
    limits: tuple[float, float] | None = None,
    *,
    min_bits: int = MIN_BITS,
    max_bits: int = MAX_BITS,
    exact_extra: int = EXACT_EXTRA_BITS,
) -> BitsChoice:
    """Fewest bits whose quantisation noise is at most ``fraction`` x ``sigma``.

    ``stats`` are those of the (clamped) data the range is chosen from, as for
    :func:`~e2compress.ranges.choose_range`, with the same ``limits``. Integer data
    are stored exactly when that needs at most ``exact_extra`` more bits. When no bits
    up to ``max_bits`` pass, the result is 0 (lossless float32).
    """
    if not fraction > 0:
        raise ValueError(f"noise fraction must be > 0, not {fraction}")
    integer = stats.all_int
    found: BitsChoice | None = None
    exact: BitsChoice | None = None
    for bits in range(min_bits, max_bits + 1):
        rng = choose_range(stats, bits, limits)
        q = quantisation_rms(rng, integer)
        ratio = noise_ratio(q, sigma)
        if found is None and ratio <= fraction:
            found = BitsChoice(bits, rng, q, ratio, q == 0.0 and integer, "noise")
        if integer and q == 0.0:
            exact = BitsChoice(bits, rng, 0.0, 0.0, True, "exact")
            break
        if found is not None and bits >= found.bits + exact_extra:
            break
    if exact is not None and (found is None or exact.bits <= found.bits + exact_extra):
        if found is not None and found.bits == exact.bits:
            return found
        return exact
    if found is not None:
        return found
    return BitsChoice(0, None, 0.0, 0.0, False, "lossless")


def bits_needed(
    stats: Stats,
    sigma: float,
    fraction: float = DEFAULT_NOISE_FRACTION,
    limits: tuple[float, float] | None = None,
) -> int:
    """The smallest bits (2..16, or 0 = lossless) that pass the noise rule (no exact bonus)."""
    return choose_bits(stats, sigma, fraction, limits, exact_extra=0).bits


# --------------------------------------------------------------------------- FRC / FSC


@dataclass
class RingSums:
    """Mergeable Fourier ring (2-D) or shell (3-D) sums of two images of one shape."""

    shape: tuple[int, ...]
    cross: np.ndarray = field(repr=False)
    power_a: np.ndarray = field(repr=False)
    power_b: np.ndarray = field(repr=False)
    count: np.ndarray = field(repr=False)

    def merge(self, other: RingSums) -> RingSums:
        """Sum of two partial results over images of the same shape."""
        if other.shape != self.shape:
            raise ValueError(f"ring sums of shapes {self.shape} and {other.shape} differ")
        return RingSums(
            self.shape,
            self.cross + other.cross,
            self.power_a + other.power_a,
            self.power_b + other.power_b,
            self.count + other.count,
        )

    @property
    def frequency(self) -> np.ndarray:
        """Ring frequencies in cycles per pixel (ring k: k / min(shape))."""
        return np.arange(self.cross.size) / min(self.shape)

    @property
    def correlation(self) -> np.ndarray:
        """The FRC/FSC per ring (NaN where either image has no power)."""
        den = np.sqrt(self.power_a * self.power_b)
        with np.errstate(invalid="ignore", divide="ignore"):
            out: np.ndarray = np.where(den > 0, self.cross / np.where(den > 0, den, 1.0), np.nan)
        return out


def _ring_index(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, int]:
    """Ring of every rfftn coefficient, its Hermitian weight, and the ring count."""
    n = min(shape)
    freqs = [np.fft.fftfreq(s) for s in shape[:-1]] + [np.fft.rfftfreq(shape[-1])]
    grids = np.meshgrid(*freqs, indexing="ij", sparse=True)
    radius = np.sqrt(sum(g * g for g in grids))
    ring = np.rint(radius * n).astype(np.intp)
    nx = shape[-1]
    weight = np.full(nx // 2 + 1, 2.0)
    weight[0] = 1.0
    if nx % 2 == 0:
        weight[-1] = 1.0
    nrings = n // 2 + 1
    return ring, np.broadcast_to(weight, ring.shape), nrings


def ring_sums(a: np.ndarray, b: np.ndarray) -> RingSums:
    """Fourier ring (2-D) or shell (3-D) sums of ``a`` against ``b`` (same shape).

    Rings have width 1 / min(shape) cycles per pixel, up to Nyquist (0.5); the corners
    beyond are left out. Computed with real FFTs, weighted so the sums equal those of the
    full complex transform.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} and {y.shape}")
    if x.ndim not in (2, 3) or min(x.shape) < 2:
        raise ValueError(f"FRC needs a 2-D or 3-D image of at least 2 pixels a side, not {x.shape}")
    fa = np.fft.rfftn(x)
    fb = np.fft.rfftn(y)
    ring, weight, nrings = _ring_index(x.shape)
    keep = ring < nrings
    idx = ring[keep]
    w = weight[keep]

    def total(values: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.bincount(idx, weights=values[keep] * w, minlength=nrings)
        return out

    return RingSums(
        tuple(x.shape),
        total((fa * fb.conj()).real),
        total(fa.real**2 + fa.imag**2),
        total(fb.real**2 + fb.imag**2),
        np.bincount(idx, weights=w, minlength=nrings),
    )


def threshold_frequency(
    frequency: np.ndarray, correlation: np.ndarray, threshold: float = FRC_THRESHOLD
) -> float | None:
    """Frequency (cycles/pixel) where the curve first drops below ``threshold``.

    Linear interpolation between the last ring at or above and the first below; ring 0
    (the mean) and rings without power are skipped. None when it never drops below.
    """
    prev_f, prev_c = 0.0, 1.0
    for f, c in zip(frequency[1:], correlation[1:], strict=True):
        if not math.isfinite(c):
            continue
        if c < threshold:
            if prev_c == c:
                return float(f)
            t = (prev_c - threshold) / (prev_c - c)
            return float(prev_f + t * (f - prev_f))
        prev_f, prev_c = float(f), float(c)
    return None


def resolution(frequency: float | None, apix: float | None = None) -> float | None:
    """1 / frequency in pixels, or in Angstrom when ``apix`` is given."""
    if frequency is None or frequency <= 0:
        return None
    return (apix or 1.0) / frequency


# --------------------------------------------------------------------------- errors


@dataclass
class ErrorStats:
    """Mergeable absolute-error statistics of decoded against original values."""

    count: int = 0
    max_abs: float = 0.0
    sumsq: float = 0.0
    inside: int = 0  # pixels inside the stored range
    inside_max: float = 0.0
    inside_sumsq: float = 0.0
    truncated: int = 0
    histogram: np.ndarray | None = field(default=None, repr=False)
    # means of original and decoded, centred sums of squares and of products
    moments: tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0)

    def merge(self, other: ErrorStats) -> ErrorStats:
        """Combine two partial results."""
        hist = self.histogram
        if hist is None:
            hist = other.histogram
        elif other.histogram is not None:
            hist = hist + other.histogram
        return ErrorStats(
            self.count + other.count,
            max(self.max_abs, other.max_abs),
            self.sumsq + other.sumsq,
            self.inside + other.inside,
            max(self.inside_max, other.inside_max),
            self.inside_sumsq + other.inside_sumsq,
            self.truncated + other.truncated,
            hist,
            _merge_moments(self.count, self.moments, other.count, other.moments),
        )

    @property
    def pearson(self) -> float:
        """Pearson correlation of decoded with original values (NaN for constant images)."""
        _, _, cxx, cyy, cxy = self.moments
        if self.count == 0 or cxx <= 0 or cyy <= 0:
            return math.nan
        return cxy / math.sqrt(cxx * cyy)

    @property
    def rms(self) -> float:
        """RMS error over all pixels."""
        return math.sqrt(self.sumsq / self.count) if self.count else 0.0

    @property
    def inside_rms(self) -> float:
        """RMS error over the pixels inside the stored range (the quantisation noise)."""
        return math.sqrt(self.inside_sumsq / self.inside) if self.inside else 0.0


def _merge_moments(
    n1: int,
    m1: tuple[float, float, float, float, float],
    n2: int,
    m2: tuple[float, float, float, float, float],
) -> tuple[float, float, float, float, float]:
    """Chan et al.'s pairwise update of means and centred co-moments."""
    if n1 == 0:
        return m2
    if n2 == 0:
        return m1
    n = n1 + n2
    dx, dy = m2[0] - m1[0], m2[1] - m1[1]
    f = n1 * n2 / n
    return (
        m1[0] + dx * n2 / n,
        m1[1] + dy * n2 / n,
        m1[2] + m2[2] + dx * dx * f,
        m1[3] + m2[3] + dy * dy * f,
        m1[4] + m2[4] + dx * dy * f,
    )


HIST_STEPS = 0.75  # the error histogram spans +-0.75 steps (in-range errors are <= 0.5)
HIST_BINS = 150


def error_stats(
    original: np.ndarray, decoded: np.ndarray, rng: RenderRange | None = None
) -> ErrorStats:
    """Errors of ``decoded`` against ``original`` (same shape), in float64.

    With ``rng`` (the stored mapping), pixels outside [rmin, rmax] count as truncated and
    the histogram of signed errors in steps is kept for in-range pixels.
    """
    x = np.asarray(original, dtype=np.float64)
    d = np.asarray(decoded, dtype=np.float64) - x
    if d.shape != x.shape:
        raise ValueError(f"shapes differ: {x.shape} and {d.shape}")
    e = np.abs(d)
    n = int(x.size)
    moments = (0.0, 0.0, 0.0, 0.0, 0.0)
    if n:
        mx = float(np.mean(x))
        xc = (x - mx).reshape(-1)
        yc = xc + d.reshape(-1)
        my = float(np.mean(yc))
        yc -= my
        moments = (mx, mx + my, float(xc @ xc), float(yc @ yc), float(xc @ yc))
    out = ErrorStats(n, float(e.max()) if n else 0.0, float(np.sum(d * d)), moments=moments)
    if rng is None:
        out.inside, out.inside_max, out.inside_sumsq = n, out.max_abs, out.sumsq
        return out
    lo, hi = range_limits(rng)
    inside = (x >= lo) & (x <= hi)
    out.truncated = n - int(np.count_nonzero(inside))
    din = d[inside]
    out.inside = int(din.size)
    out.inside_max = float(np.abs(din).max()) if din.size else 0.0
    out.inside_sumsq = float(np.sum(din * din))
    step = rng.step
    if step > 0:
        out.histogram = np.histogram(din / step, bins=HIST_BINS, range=(-HIST_STEPS, HIST_STEPS))[
            0
        ].astype(np.int64)
    return out
