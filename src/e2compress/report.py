"""What a compression did: per file and per image, for the CLI, logs and batch reports."""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, overload

import numpy as np

from .fidelity import DEFAULT_NOISE_FRACTION

if TYPE_CHECKING:
    from .plan import Quality
    from .quantize import RenderRange


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
    # fewest bits within the noise fraction (0: lossless); only for an image that fails
    # the rule at its bits (and the bits auto chose); None where the stored bits pass
    passing_bits: int | None = None
    # how much clamping moved the image's mean (decoded - source), and the most the
    # noise rule allows (None: not measured)
    mean_change: float | None = None
    mean_limit: float | None = None

    @property
    def mean_fails(self) -> bool:
        """Clamping moved the mean by more than the noise rule allows."""
        return (
            self.mean_change is not None
            and self.mean_limit is not None
            and abs(self.mean_change) > self.mean_limit
        )


def image_report(
    index: int,
    shape: tuple[int, ...],
    rng: RenderRange | None,
    truncated: int,
    quality: Quality | None,
    auto: bool,
    shift: float,
) -> ImageReport:
    """The report of an image stored in ``rng`` (None: float32), ``truncated`` pixels
    clamped, moving the image's sum by ``shift``; ``quality``: its noise check."""
    report = ImageReport(
        index,
        shape,
        rng.bits if rng is not None else 0,
        None if rng is None else float(np.float32(rng.rmin)),
        None if rng is None else float(np.float32(rng.rmax)),
        truncated,
        "" if rng is None else rng.rule,
    )
    q = quality
    if q is not None:
        report.auto = auto
        measurable = q.noise.method != "none" and q.noise.sigma > 0
        report.noise = q.noise.sigma if measurable else None
        report.noise_method = q.noise.method
        report.quant_noise = q.quant_rms
        report.noise_ratio = q.ratio()
        report.passing_bits = q.passing_bits if report.noise is not None else None
        if rng is not None:
            report.mean_change = shift / max(1, math.prod(shape))
            report.mean_limit = q.mean_limit
    return report


def _opt(value: float | None) -> float:
    return math.nan if value is None else value


def _unopt(value: float) -> float | None:
    return None if math.isnan(value) else value


class ImageReports(Sequence[ImageReport]):
    """Many :class:`ImageReport` in compact columns (about 60 bytes an image instead of
    about 400 as objects: a 100,000-image stack's reports take 6 MB, not 40), built
    again on access. ``rmin``/``rmax`` must be float32 values (the stored limits are)."""

    def __init__(self, reports: Iterable[ImageReport] = ()) -> None:
        self._index = array("i")  # EMAN2 counts images in an int32
        self._bits = array("b")
        self._rmin = array("f")  # the stored float32 limits, exactly
        self._rmax = array("f")
        self._mapped = array("b")  # 0: rmin/rmax are None
        self._truncated = array("q")
        self._shape = array("I")  # positions in self._shapes
        self._rule = array("I")  # positions in self._rules
        self._shapes: list[tuple[int, ...]] = []  # the distinct values
        self._rules: list[str] = []
        self._positions: dict[tuple[int, ...] | str, int] = {}
        self._auto = array("b")
        self._noise = array("d")  # NaN: None
        self._method = array("I")  # positions in self._rules
        self._quant = array("d")
        self._ratio = array("d")
        self._passing = array("b")  # -1: None
        self._mean_change = array("d")  # NaN: None
        self._mean_limit = array("d")
        for rep in reports:
            self.append(rep)

    def append(self, rep: ImageReport) -> None:
        """Add one report."""
        self._index.append(rep.index)
        self._bits.append(rep.bits)
        mapped = rep.rmin is not None and rep.rmax is not None
        self._mapped.append(int(mapped))
        self._rmin.append(rep.rmin if rep.rmin is not None else 0.0)
        self._rmax.append(rep.rmax if rep.rmax is not None else 0.0)
        self._truncated.append(rep.truncated)
        shape = tuple(rep.shape)
        if shape not in self._positions:
            self._positions[shape] = len(self._shapes)
            self._shapes.append(shape)
        for text in (rep.rule, rep.noise_method):
            if text not in self._positions:
                self._positions[text] = len(self._rules)
                self._rules.append(text)
        self._shape.append(self._positions[shape])
        self._rule.append(self._positions[rep.rule])
        self._auto.append(int(rep.auto))
        self._noise.append(_opt(rep.noise))
        self._method.append(self._positions[rep.noise_method])
        self._quant.append(_opt(rep.quant_noise))
        self._ratio.append(_opt(rep.noise_ratio))
        self._passing.append(-1 if rep.passing_bits is None else rep.passing_bits)
        self._mean_change.append(_opt(rep.mean_change))
        self._mean_limit.append(_opt(rep.mean_limit))

    def __len__(self) -> int:
        return len(self._index)

    @overload
    def __getitem__(self, i: int) -> ImageReport: ...

    @overload
    def __getitem__(self, i: slice) -> list[ImageReport]: ...

    def __getitem__(self, i: int | slice) -> ImageReport | list[ImageReport]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"image report {i} out of range ({len(self)})")
        mapped = bool(self._mapped[i])
        return ImageReport(
            self._index[i],
            self._shapes[self._shape[i]],
            self._bits[i],
            self._rmin[i] if mapped else None,
            self._rmax[i] if mapped else None,
            self._truncated[i],
            self._rules[self._rule[i]],
            auto=bool(self._auto[i]),
            noise=_unopt(self._noise[i]),
            noise_method=self._rules[self._method[i]],
            quant_noise=_unopt(self._quant[i]),
            noise_ratio=_unopt(self._ratio[i]),
            passing_bits=None if self._passing[i] < 0 else self._passing[i],
            mean_change=_unopt(self._mean_change[i]),
            mean_limit=_unopt(self._mean_limit[i]),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ImageReports({list(self)!r})"


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
    images: Sequence[ImageReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # one line each, naming the file
    notes: list[str] = field(default_factory=list)  # facts worth a line (an EER's dose)
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
    measured = sum(im.noise_method != "" for im in images)  # a long stack is sampled
    of = f"{measured} sampled" if measured < len(images) else f"{len(images)}"
    where = f"image {worst.index} ({len(failing)} of {of} fail): " if len(images) > 1 else ""
    passing = [im.passing_bits for im in images if im.passing_bits is not None]
    if any(b == 0 for b in passing):
        advice = "only bits 0 (lossless float32) would pass"
    else:
        advice = f"bits {max(passing)} would pass"
    return (
        f"{source}: {where}bits {worst.bits} add quantisation noise {_fmt(quant)}"
        f" = {_over(worst.noise_ratio or 0.0, fraction)} x the image noise {_fmt(noise)},"
        f" over the limit {fraction:g}; {advice}"
    )


def mean_warning(source: str, images: Sequence[ImageReport]) -> str | None:
    """One line when clamping (a range option) moved an image's mean by more than the
    noise rule allows (:func:`~e2compress.fidelity.mean_change_limit`), else None."""
    failing = [im for im in images if im.mean_fails]
    if not failing:
        return None
    worst = max(failing, key=lambda im: abs(im.mean_change or 0.0) / (im.mean_limit or 1.0))
    where = f"image {worst.index} ({len(failing)} of {len(images)}): " if len(images) > 1 else ""
    return (
        f"{source}: {where}{worst.truncated} clamped pixels move the mean by "
        f"{_fmt(worst.mean_change or 0.0)} (limit {_fmt(worst.mean_limit or 0.0)}); "
        "the range option costs more than it saves"
    )


def _over(ratio: float, limit: float) -> str:
    """``ratio`` with the digits that show it is above ``limit`` (0.1004, not 0.10)."""
    for digits in range(2, 8):
        text = f"{ratio:.{digits}f}"
        if float(text) > limit:
            return text
    return f"{ratio:.8g}"
