"""What a compression did: per file and per image, for the CLI, logs and batch reports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .fidelity import DEFAULT_NOISE_FRACTION


@dataclass
class ImageReport:
    """How one image was stored, and what the quantisation cost against its noise.

    The quality fields are None for float storage chosen by the caller (bits 0), and
    ``noise`` is None when the image has no measurable noise (too small or noiseless).
    """

    index: int
    shape: tuple[int, ...]
    bits: int
    rmin: float | None
    rmax: float | None
    truncated: int
    rule: str
    auto: bool = False  # bits chosen by the noise rule
    noise: float | None = None  # the image's noise (standard deviation, data units)
    noise_method: str = ""  # "differences", "poisson" or "none"
    quant_noise: float | None = None  # expected RMS error inside the stored range
    noise_ratio: float | None = None  # quant_noise / noise
    passing_bits: int | None = None  # fewest bits within the noise fraction (0: lossless)


@dataclass
class CompressReport:
    """The outcome of compressing one file."""

    source: str
    output: str
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    engine: str = ""
    verified: bool = False
    images: list[ImageReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # one line each, naming the file
    noise_fraction: float = DEFAULT_NOISE_FRACTION

    @property
    def ratio(self) -> float:
        """Input file size over output file size."""
        return self.bytes_in / self.bytes_out if self.bytes_out else 0.0

    @property
    def truncated(self) -> int:
        """Clamped pixels over all images."""
        return sum(im.truncated for im in self.images)


def bits_text(images: Sequence[ImageReport]) -> str:
    """The stored bits of a file: ``"9"``, or ``"7-9"`` when its images differ (0: float32)."""
    values = sorted({im.bits for im in images})
    if not values:
        return "-"
    return str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def quality_warning(
    source: str, images: Sequence[ImageReport], fraction: float = DEFAULT_NOISE_FRACTION
) -> str | None:
    """One line when quantisation noise exceeds ``fraction`` of an image's noise, else None.

    Names the file, the bits, the worst image's figures and the bits that would pass
    for every image (with the same range options).
    """
    failing = [im for im in images if im.noise_ratio is not None and im.noise_ratio > fraction]
    if not failing:
        return None
    worst = max(failing, key=lambda im: im.noise_ratio or 0.0)
    noise, quant = worst.noise or 0.0, worst.quant_noise or 0.0
    where = (
        f"image {worst.index} ({len(failing)} of {len(images)} fail): " if len(images) > 1 else ""
    )
    passing = [im.passing_bits for im in images if im.passing_bits is not None]
    if any(b == 0 for b in passing):
        advice = "only bits 0 (lossless float32) would pass"
    else:
        advice = f"bits {max(passing)} would pass"
    return (
        f"{source}: {where}bits {worst.bits} add quantisation noise {_fmt(quant)}"
        f" = {worst.noise_ratio:.2f} x the image noise {_fmt(noise)}"
        f" (limit {fraction:g}); {advice}"
    )
