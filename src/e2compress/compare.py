"""``e2compress compare``: how far a compressed file is from its original, image by image.

Reads both files as EMAN2 sees them (:func:`e2compress.open_source`) one section at a
time, except volumes small enough for a Fourier shell correlation; the numbers come
from :mod:`e2compress.fidelity`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import fidelity as fd
from .archive import EmanHdfFile
from .counts_source import GainedSource
from .errors import E2CompressError, InputError
from .gain_io import read_gain
from .quantize import RenderRange
from .readers import ImageSource, is_hdf5, open_source

PathLike = str | os.PathLike[str]
# A 3-D image gets a Fourier *shell* correlation when it is volume-like (nz at least a
# quarter of its smaller side) and no larger than this; otherwise (movies, thin or huge
# tomograms) ring sums are accumulated over its sections.
FSC_MAX_VOXELS = 1 << 24  # 256^3: about 1 GB of float64 arrays and transforms


class ImagesDiffer(E2CompressError):
    """The two files do not hold the same images (count or shapes)."""


@dataclass
class ImageComparison:
    """Fidelity figures of one image."""

    index: int
    shape: tuple[int, ...]
    bits: int | None  # None: the compressed file is not a quantised EMAN2 file
    step: float | None
    errors: fd.ErrorStats
    noise: fd.NoiseEstimate
    rings: fd.RingSums | None
    correlation_kind: str  # "FRC", "FSC" or "FRC over sections"
    apix: float | None
    threshold: float = fd.FRC_THRESHOLD

    @property
    def quant_ratio(self) -> float:
        """Quantisation noise (RMS error inside the stored range) over image noise."""
        return fd.noise_ratio(self.errors.inside_rms, self.noise.sigma)

    @property
    def lowest_correlation(self) -> float | None:
        """The lowest FRC/FSC over the rings beyond the mean (None without rings)."""
        if self.rings is None:
            return None
        values = self.rings.correlation[1:]
        values = values[np.isfinite(values)]
        return float(values.min()) if values.size else None

    @property
    def threshold_frequency(self) -> float | None:
        """Cycles per pixel where the correlation first drops below the threshold."""
        if self.rings is None:
            return None
        return fd.threshold_frequency(self.rings.frequency, self.rings.correlation, self.threshold)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return _figures(self, {"index": self.index, "shape": list(self.shape[::-1])})


@dataclass
class Comparison:
    """All images of a compared pair, and the figures over all of them."""

    original: str
    compressed: str
    images: list[ImageComparison] = field(default_factory=list)
    threshold: float = fd.FRC_THRESHOLD

    @property
    def overall(self) -> ImageComparison:
        """Every image pooled: errors and noise over all pixels, rings summed when the
        images share a shape and a correlation kind."""
        errors = fd.ErrorStats()
        weight = 0
        var = 0.0
        rings: fd.RingSums | None = None
        kinds = {im.correlation_kind for im in self.images}
        shapes = {im.shape for im in self.images}
        same = len(kinds) == 1 and len(shapes) == 1
        for im in self.images:
            errors = errors.merge(im.errors)
            var += im.noise.sigma**2 * im.errors.count
            weight += im.errors.count
            if same and im.rings is not None:
                rings = im.rings if rings is None else rings.merge(im.rings)
        methods = {im.noise.method for im in self.images}
        noise = fd.NoiseEstimate(
            math.sqrt(var / weight) if weight else 0.0,
            methods.pop() if len(methods) == 1 else "mixed",
            sum(im.noise.tiles for im in self.images),
        )
        bits = {im.bits for im in self.images}
        steps = {im.step for im in self.images}
        apix = {im.apix for im in self.images}
        return ImageComparison(
            -1,
            self.images[0].shape if len(shapes) == 1 and self.images else (),
            bits.pop() if len(bits) == 1 else None,
            steps.pop() if len(steps) == 1 else None,
            errors,
            noise,
            rings,
            kinds.pop() if same and kinds else "",
            apix.pop() if len(apix) == 1 else None,
            self.threshold,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: both paths, every image and the overall figures; shapes x first
        (``axis_order``), as in the text."""
        return {
            "original": self.original,
            "compressed": self.compressed,
            "axis_order": "x,y,z",
            "images": [im.to_dict() for im in self.images],
            "overall": _figures(self.overall, {"images": len(self.images)}),
        }


def _figures(im: ImageComparison, out: dict[str, Any]) -> dict[str, Any]:
    e = im.errors
    step = im.step
    freq = im.threshold_frequency
    out.update(
        {
            "bits": im.bits,
            "step": step,
            "max_abs_error": e.max_abs,
            "rms_error": e.rms,
            "max_error_steps": e.inside_max / step if step else None,
            "rms_error_steps": e.inside_rms / step if step else None,
            "truncated": e.truncated,
            "pearson": _finite(e.pearson),
            "noise_sigma": im.noise.sigma,
            "noise_method": im.noise.method,
            "quant_noise": e.inside_rms,
            "quant_noise_ratio": _finite(im.quant_ratio),
            "correlation": im.correlation_kind or None,
            "threshold": im.threshold,
            "threshold_frequency": freq,
            "lowest_correlation": im.lowest_correlation,
            "resolution_px": fd.resolution(freq),
            "resolution_A": fd.resolution(freq, im.apix) if im.apix else None,
            "apix": im.apix,
        }
    )
    if im.rings is not None:
        out["frc"] = [_finite(float(c)) for c in im.rings.correlation]
        out["frc_frequency"] = [float(f) for f in im.rings.frequency]
    return out


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


# --------------------------------------------------------------------------- reading


@dataclass
class _Side:
    source: ImageSource
    hdf: EmanHdfFile | None

    def header(self, index: int) -> dict[str, Any]:
        return self.hdf.header(index) if self.hdf is not None else self.source.header(index)

    def render_range(self, index: int) -> RenderRange | None:
        return self.hdf.render_range(index) if self.hdf is not None else None

    def close(self) -> None:
        if self.hdf is not None:
            self.hdf.close()
        self.source.close()


def _open(path: PathLike) -> _Side:
    source = open_source(path)
    hdf = None
    try:
        hdf = EmanHdfFile(path, threads=1) if is_hdf5(path) else None
        gain = read_gain(hdf.h5file) if hdf is not None else None
    except BaseException:
        if hdf is not None:
            hdf.close()
        source.close()
        raise
    return _Side(source if gain is None else GainedSource(source, gain), hdf)  # counts * gain


def known_apix(header: dict[str, Any]) -> float | None:
    """The header's pixel size in Angstrom; None when absent or EMAN2's unset value 1.0."""
    try:
        apix = float(header["apix_x"])
    except (KeyError, TypeError, ValueError):
        return None
    return apix if math.isfinite(apix) and apix > 0 and apix != 1.0 else None


def _read(side: _Side, path: PathLike, index: int, z: int, ny: int) -> np.ndarray:
    try:
        return side.source.read(index, z, 0, ny)
    except E2CompressError:
        raise
    except (OSError, RuntimeError, ValueError) as exc:
        raise InputError(f"cannot read image {index}: {exc}", path) from None


def compare_files(
    original: PathLike,
    compressed: PathLike,
    *,
    threshold: float = fd.FRC_THRESHOLD,
    apix: float | None = None,
) -> Comparison:
    """Compare every image of ``compressed`` with ``original`` (any formats e2compress reads).

    ``apix`` overrides the pixel size (Angstrom) from the headers. Raises
    :class:`ImagesDiffer` when the files hold different numbers or shapes of images,
    :class:`~e2compress.errors.InputError` when either cannot be read.
    """
    a = _open(original)
    try:
        b = _open(compressed)
        try:
            if len(a.source) != len(b.source):
                raise ImagesDiffer(
                    f"{original} holds {len(a.source)} images, {compressed} holds "
                    f"{len(b.source)}: not the same images"
                )
            result = Comparison(os.fspath(original), os.fspath(compressed), threshold=threshold)
            for i in range(len(a.source)):
                sa, sb = a.source.shape(i), b.source.shape(i)
                if sa != sb:
                    raise ImagesDiffer(
                        f"image {i} is {_dims(sa)} in {original} but {_dims(sb)} in "
                        f"{compressed}: not the same images"
                    )
                result.images.append(_compare_image(a, b, i, original, compressed, apix))
                result.images[-1].threshold = threshold
            return result
        finally:
            b.close()
    finally:
        a.close()


def _dims(shape3: tuple[int, int, int]) -> str:
    dims = [d for d in shape3[::-1] if d > 1] or [1]
    return " x ".join(str(d) for d in dims)


def _compare_image(
    a: _Side,
    b: _Side,
    i: int,
    pa: PathLike,
    pb: PathLike,
    apix: float | None,
) -> ImageComparison:
    nz, ny, nx = a.source.shape(i)
    rng = b.render_range(i)
    if apix is None:
        apix = known_apix(b.header(i)) or known_apix(a.header(i))
    volume = nz > 1 and 4 * nz >= min(ny, nx) and nz * ny * nx <= FSC_MAX_VOXELS
    errors = fd.ErrorStats()
    tiles: list[np.ndarray] = []
    rings: fd.RingSums | None = None
    total, count, minimum, integer = 0.0, 0, math.inf, True
    originals: list[np.ndarray] = []
    decoded: list[np.ndarray] = []
    for z in range(nz):
        x = _read(a, pa, i, z, ny)
        y = _read(b, pb, i, z, ny)
        errors = errors.merge(fd.error_stats(x, y, rng))
        tiles.append(fd.residual_tiles(x))
        total += float(np.sum(x, dtype=np.float64))
        count += x.size
        minimum = min(minimum, float(np.min(x)))
        integer = integer and (x.dtype.kind in "iub" or bool(np.all(np.trunc(x) == x)))
        if volume:
            originals.append(x)
            decoded.append(y)
        elif ny >= 2 and nx >= 2:
            part = fd.ring_sums(x, y)
            rings = part if rings is None else rings.merge(part)
    if volume:
        rings = fd.ring_sums(np.stack(originals), np.stack(decoded))
        kind = "FSC"
    else:
        kind = "FRC" if nz == 1 else "FRC over sections"
    noise = fd.estimate_noise(
        tiles, mean=total / count if count else None, minimum=minimum, integer=integer
    )
    shape = tuple(d for d in (nz, ny, nx) if d > 1) or (1,)
    return ImageComparison(
        i,
        shape if nz > 1 else (ny, nx),
        rng.bits if rng is not None else (0 if b.hdf is not None else None),
        rng.step if rng is not None else (0.0 if b.hdf is not None else None),
        errors,
        noise,
        rings,
        kind if rings is not None else "",
        apix,
    )


# --------------------------------------------------------------------------- text and plot


def _num(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    if not math.isfinite(x):
        return "inf"
    return f"{x:.4g}{unit}"


def format_image(im: ImageComparison, label: str) -> list[str]:
    """Human-readable lines for one image (or the overall figures)."""
    d = im.to_dict()
    e = im.errors
    head = f"{label}: " + " x ".join(str(s) for s in im.shape[::-1])
    if im.bits is not None:
        head += f"  bits {im.bits}" + (f"  step {_num(im.step)}" if im.step else "  (float32)")
    lines = [head]
    err = f"  error: max {_num(e.max_abs)}, RMS {_num(e.rms)}"
    if im.step:
        err += (
            f"; inside the range max {_num(d['max_error_steps'])} step,"
            f" RMS {_num(d['rms_error_steps'])} step"
        )
    err += f"; {e.truncated} pixels truncated; correlation {_num(e.pearson)}"
    lines.append(err)
    lines.append(
        f"  noise: image {_num(im.noise.sigma)} ({im.noise.method}), quantisation "
        f"{_num(e.inside_rms)} = {_num(im.quant_ratio)} x image noise"
    )
    if im.correlation_kind:
        freq = im.threshold_frequency
        if freq is None:
            where = "stays at or above it up to Nyquist"
            if im.apix:
                where += f" ({_num(2 * im.apix, ' A')})"
        else:
            res_px = fd.resolution(freq)
            where = f"drops below it at {_num(res_px, ' px')}"
            if im.apix:
                where += f" = {_num(fd.resolution(freq, im.apix), ' A')}"
            where += f" ({_num(freq / 0.5)} of Nyquist)"
        where += f"; lowest {_num(im.lowest_correlation)}"
        lines.append(f"  {im.correlation_kind} threshold {im.threshold}: {where}")
    return lines


def format_comparison(result: Comparison, *, summary: bool = False) -> str:
    """The report ``e2compress compare`` prints."""
    n = len(result.images)
    lines = [f"{result.compressed} against {result.original}: {n} image{'s' * (n != 1)}"]
    if not summary:
        for im in result.images:
            lines += format_image(im, f"image {im.index}")
    if len(result.images) != 1 or summary:
        lines += format_image(result.overall, "overall")
    return "\n".join(lines)


def plot_title(result: Comparison) -> str:
    """The figure's title: the compressed file's name, its bits and the ratio of
    quantisation noise to the image's noise (over all images)."""
    overall = result.overall
    bits = sorted({im.bits for im in result.images if im.bits is not None})
    if not bits:
        stored = "not quantised"
    elif bits == [0]:
        stored = "bits 0 (lossless float32)"
    else:
        stored = f"bits {bits[0]}" if len(bits) == 1 else f"bits {bits[0]}-{bits[-1]}"
    ratio = overall.quant_ratio
    noise = f"quantisation noise {ratio:.3g} x image noise" if math.isfinite(ratio) else ""
    parts = [f"{Path(result.compressed).name} against {Path(result.original).name}", stored]
    return ", ".join(p for p in [*parts, noise] if p)


def plot_comparison(result: Comparison, path: PathLike) -> None:
    """Write a figure of the correlation curve(s) and the error histogram to ``path``.

    Needs matplotlib (``pip install 'e2compress[plot]'``); written atomically.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise E2CompressError(
            "plotting needs matplotlib: pip install 'e2compress[plot]'", path
        ) from None
    overall = result.overall
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    try:
        shown = [overall] if overall.rings is not None else result.images[:8]
        for im in shown:
            if im.rings is None:
                continue
            f = im.rings.frequency
            x = f / im.apix if im.apix else f
            label = "all images" if im.index < 0 else f"image {im.index}"
            ax1.plot(x[1:], im.rings.correlation[1:], label=label)
        ax1.axhline(result.threshold, color="grey", linestyle="--", linewidth=1)
        ax1.set_xlabel("spatial frequency (1/A)" if overall.apix else "cycles per pixel")
        ax1.set_ylabel(overall.correlation_kind or "correlation")
        ax1.set_title("original vs decoded")
        ax1.legend(loc="lower left", fontsize="small")
        hist = overall.errors.histogram
        if hist is not None:
            edges = np.linspace(-fd.HIST_STEPS, fd.HIST_STEPS, fd.HIST_BINS + 1)
            ax2.stairs(hist, edges, fill=True)
            ax2.set_xlabel("decoded - original (steps), pixels inside the range")
        else:
            ax2.text(0.5, 0.5, "no quantisation step (float storage)", ha="center")
        ax2.set_ylabel("pixels")
        ax2.set_title(f"errors: RMS {overall.errors.rms:.4g}, {overall.errors.truncated} truncated")
        fig.suptitle(plot_title(result))
        fig.tight_layout()
        target = Path(path)
        tmp = target.with_name(f".{target.name}.e2compress.tmp")
        try:
            fig.savefig(tmp, format=target.suffix.lstrip(".") or "png", dpi=110)
            os.replace(tmp, target)
        except (OSError, ValueError) as exc:
            tmp.unlink(missing_ok=True)
            raise E2CompressError(f"cannot write the plot: {exc}", path) from None
    finally:
        plt.close(fig)
