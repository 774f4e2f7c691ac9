"""The compression pipeline: range selection, parallel chunk encoding, atomic output.

Chunks are quantised and deflated in worker threads (the deflate engines release the
GIL) and handed to HDF5 in order from one thread with ``write_direct_chunk``; the
file is exactly what HDF5's own deflate (+ shuffle) filter would decode.
"""

from __future__ import annotations

import math
import os
import stat
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, Future
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import checksum, codecs
from .atomic import (
    TMP_SUFFIX,
    AtomicOutput,
    check_output_dir,
    check_replaceable,
    os_error,
    resolve_target,
)
from .blocks import Block, blocks, chunk_shape, dataset_shape
from .eman_hdf import DATATYPE, EmanHdfFile, EmanHdfWriter, StackLayout
from .errors import E2CompressError, InputError, OutputError
from .executor import Cancel, InlineExecutor, bounded, in_flight, make_pool, pool_width, settle
from .fidelity import (
    MAX_BITS,
    NOISE_TILE,
    NoiseEstimate,
    bits_needed,
    choose_bits,
    estimate_noise,
    mean_change_limit,
    noise_ratio,
    quantisation_rms,
    residual_tiles,
)
from .kept import stored_exactly, write_kept
from .options import Options
from .provenance import Identity, Record, check_unchanged, read_record, value_options, write_record
from .quantize import (
    F32,
    F32_MAX,
    HIST_BINS,
    RenderRange,
    Stats,
    block_stats,
    choose_range,
    clamp_shift,
    header_moments,
    histogram,
    integer_limits,
    integer_step,
    is_wide,
    merge_stats,
    nooutliers_limits,
    quantize,
    sigrange_limits,
    storage_dtype,
    valid_limits,
    window_stats,
)
from .readers import ImageSource, companions, is_hdf5, open_source, strip_compression
from .report import CompressReport, ImageReport, ImageReports, mean_warning, quality_warning
from .verify import check_complete, stored_whole, verify_output

__all__ = [
    "TMP_SUFFIX",
    "Cancel",
    "CompressReport",
    "ImageReport",
    "Options",
    "compress_file",
    "make_pool",
    "output_is_complete",
    "output_path",
    "verify_output",
    "write_eman_hdf",
]

PathLike = str | os.PathLike[str]
SMALL_IMAGE_BYTES = 8 << 20  # images up to this size are encoded whole by one worker
# Below this, encoding an image is mostly Python and HDF5 calls that hold the GIL:
# threads only contend (measured: a 256x256 stack runs 1.3x faster inline).
INLINE_IMAGE_BYTES = 1 << 20
# The image noise (quality check, bits="auto") is estimated from about this many pixels
# per image, spread over its blocks: ~500 tiles, ~5 ms, whatever the image size.
NOISE_SAMPLE_PIXELS = 1 << 19
NOISE_SAMPLED_IMAGES = 256  # images of a stack whose noise is measured (fixed bits)
BATCH_BYTES = 1 << 20  # float32 bytes of small images of a stack encoded per task
STACK_CHUNK_BYTES = 1 << 20  # stored bytes up to which a stack's image is one chunk


def output_path(src: PathLike, outpath: PathLike | None = None) -> Path:
    """EMAN2's naming: ``.hdf`` stays, anything else gets ``.hdf``; in ``outpath`` if given."""
    p = Path(src)
    name = strip_compression(p.name)
    if not name.endswith(".hdf"):
        stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
        name = stem + ".hdf"
    return (Path(outpath) if outpath is not None else p.parent) / name


BlockMap = Callable[[Callable[[Block], Any], list[Block]], list[Any]]
Progress = Callable[[int, int], None]  # (pixels encoded so far, pixels in the file)
_Pixels = dict[Block, np.ndarray] | None  # blocks already read


def _chunk_rows(shape3: tuple[int, int, int], opts: Options, stacked: bool) -> int:
    """Rows per chunk: ``opts.chunk_rows``, but a whole small image of a stack.

    A stack is read an image at a time; one chunk per image means one index entry,
    one chunk read and one deflate stream (measured: 128x128 reads 1.2x faster, and
    the file is smaller). With ``bits="auto"`` the storage is not known yet: the
    widest (float32) is assumed.
    """
    _, ny, nx = shape3
    itemsize = 4 if opts.auto else storage_dtype(opts.bits).itemsize
    if stacked and ny * nx * itemsize <= STACK_CHUNK_BYTES:
        return ny
    return opts.chunk_rows


@dataclass
class _Encoded:
    truncated: int
    chunks: list[tuple[tuple[int, ...], bytes | bytearray]]
    stats: Stats
    engine: codecs.Engine | None = None
    shift: float = 0.0  # sum of (decoded - source) over the clamped pixels


@dataclass
class _NoiseSample:
    """Noise tiles of a band of one block, with the band's sum and pixel count."""

    tiles: np.ndarray
    total: float
    count: int


@dataclass
class _Quality:
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


@dataclass
class _ImageJob:
    index: int
    shape3: tuple[int, int, int]
    rng: RenderRange | None
    stats: Stats
    quality: _Quality | None = None
    encoded: list[_Encoded] = field(default_factory=list)

    @property
    def bits(self) -> int:
        """Stored bits of this image (0: float32)."""
        return self.rng.bits if self.rng is not None else 0


class _Encoder:
    """Per-file state shared by the worker tasks.

    ``stacked``: the images go into a stack, whose image headers carry no statistics
    (EMAN2 recomputes them on read), so none are computed while encoding.
    """

    def __init__(
        self, source: ImageSource, opts: Options, cancel: Cancel, *, stacked: bool = False
    ) -> None:
        self.source = source
        self.opts = opts
        self.cancel = cancel
        self.engines = codecs.candidates(opts.level)
        self.stacked = stacked
        # With fixed bits the quality check of a long stack samples its images: the
        # noise estimate costs more than encoding a small image (a third of the time of
        # a 128x128 stack), and the images of a stack are alike. Auto measures them all.
        count = len(source)
        self.noise_stride = 1 if opts.auto else max(1, count // NOISE_SAMPLED_IMAGES)

    def survey(
        self, index: int, block: Block, rows: int, data: _Pixels = None
    ) -> tuple[Stats, _NoiseSample]:
        """Statistics of a block, and noise tiles of its first ``rows`` rows (one read)."""
        self.cancel.check()
        pixels = self.read(index, block, data)
        st = block_stats(pixels, None, with_moments=self.moments)
        if st.nonfinite:  # refused by choose(); nothing to measure
            return st, _NoiseSample(np.empty(0), 0.0, 0)
        band = pixels[:rows]
        return st, _NoiseSample(
            residual_tiles(band), float(np.sum(band, dtype=np.float64)), band.size
        )

    @property
    def moments(self) -> bool:
        """Whether the range pass sums the pixels (``sigrange`` needs mean and sigma)."""
        return self.opts.sigrange is not None

    def rows(self, shape3: tuple[int, int, int]) -> int:
        """Rows per chunk of an image of this file."""
        return _chunk_rows(shape3, self.opts, self.stacked)

    def read(self, index: int, block: Block, data: _Pixels = None) -> np.ndarray:
        """The pixels of ``block`` (from ``data`` when the caller has read them)."""
        if data is not None:
            return data[block]
        return self.source.read(index, block.z, block.y0, block.y1)

    def stats(
        self, index: int, block: Block, limits: tuple[float, float] | None, data: _Pixels = None
    ) -> Stats:
        self.cancel.check()
        pixels = self.read(index, block, data)
        return block_stats(pixels, limits, with_moments=self.moments)

    def hist(
        self, index: int, block: Block, h0: float, h1: float, data: _Pixels = None
    ) -> np.ndarray:
        return histogram(self.read(index, block, data), h0, h1)

    def choose(
        self, index: int, blocks: list[Block], run: BlockMap, data: _Pixels = None
    ) -> tuple[RenderRange | None, Stats, _Quality | None]:
        """The image's stored range, its unclamped min/max/integer test, and its quality.

        ``run(fn, blocks)`` applies ``fn`` to every block (inline or in the pool);
        ``data``: the blocks' pixels, when already read. With ``bits="auto"`` the bits
        are the fewest that pass the noise rule (None: lossless).
        """
        opts = self.opts

        def stats_of(limits: tuple[float, float] | None) -> Stats:
            return merge_stats(run(lambda b: self.stats(index, b, limits, data), blocks))

        def hist_of(h0: float, h1: float) -> np.ndarray:
            return _sum_hist(run(lambda b: self.hist(index, b, h0, h1, data), blocks))

        if opts.bits == 0:
            if is_wide(self.source.dtype(index)):
                self._lossless(index, stats_of(None))
            return None, Stats(), None
        measure = index % self.noise_stride == 0
        surveyed: list[tuple[Stats, _NoiseSample]] = []
        if measure:
            rows = _noise_rows(len(blocks), self.source.shape(index)[2])
            surveyed = run(lambda b: self.survey(index, b, rows, data), blocks)
            st = merge_stats(p[0] for p in surveyed)
        else:
            st = stats_of(None)
        if st.nonfinite:
            raise InputError(
                f"image {index}: {st.nonfinite} pixels are NaN or infinite; quantised "
                "output cannot hold them (bits=0, --bits 0, keeps them exactly)",
                self.source.path,
            )
        limits: tuple[float, float] | None = None
        if opts.value_range is not None:
            limits = opts.value_range
        elif opts.sigrange is not None:
            limits = sigrange_limits(st, *opts.sigrange)
        elif opts.nooutliers and st.maximum > st.minimum:
            hist = hist_of(st.minimum, st.maximum)
            limits = nooutliers_limits(hist, st.minimum, st.maximum, st.count)
            limits = self._refine(index, st, limits, blocks, run, data)
        if limits is not None and st.all_int:  # keep integers integers (an integer mapping)
            limits = integer_limits(limits)
        if limits is not None and not valid_limits(*limits):
            limits = None
        clamped = st
        if limits is not None and not (
            F32(limits[0]) <= F32(st.minimum) and F32(st.maximum) <= F32(limits[1])
        ):
            clamped = stats_of(limits)
        if not measure:
            return self._range(index, clamped, st, opts.bits, limits), st, None
        samples = [p[1] for p in surveyed]
        count = sum(p.count for p in samples)
        noise_mean = sum(p.total for p in samples) / count if count else 0.0
        noise = estimate_noise(
            [p.tiles for p in samples],
            mean=noise_mean if count else None,
            minimum=st.minimum,
            integer=st.all_int,
        )
        sigma = noise.sigma if noise.method != "none" else 0.0
        mean_limit = mean_change_limit(noise, noise_mean, opts.noise_fraction)
        bits = opts.bits
        if opts.auto:
            bits = choose_bits(clamped, sigma, opts.noise_fraction, limits).bits
            if bits == 0 and st.inexact:  # float32 cannot hold them: the finest grid
                bits = MAX_BITS
            if bits == 0:  # no bits up to 16 keep the noise rule: store float32 exactly
                return None, Stats(), _Quality(noise, 0.0, 0)
        rng = self._range(index, clamped, st, bits, limits)
        quant = quantisation_rms(rng, clamped.all_int)
        quality = _Quality(noise, quant, None, mean_limit)
        ratio = quality.ratio()
        if opts.auto:
            quality.passing_bits = bits
        elif ratio is not None and ratio > opts.noise_fraction:  # only failures need advice
            quality.passing_bits = bits_needed(clamped, sigma, opts.noise_fraction, limits)
        return rng, st, quality

    def _refine(
        self,
        index: int,
        st: Stats,
        limits: tuple[float, float],
        blocks: list[Block],
        run: BlockMap,
        data: _Pixels,
    ) -> tuple[float, float]:
        """``nooutliers`` beside values near +-3.4e38: EMAN2's 1024 bins over that span
        cannot see the data between (its limits land beyond 1e28 and are ignored), so
        look again at the pixels inside the limits, with the room left at each tail."""
        maxout = max(st.count // 20000, 8)
        clipped = [0, 0]
        for _ in range(8):
            if valid_limits(*limits) or not limits[0] < limits[1]:
                break
            lo, hi = limits

            def window(b: Block, lo: float = lo, hi: float = hi) -> tuple[int, int, Stats]:
                return window_stats(self.read(index, b, data), lo, hi)

            parts = run(window, blocks)
            clipped = [sum(p[0] for p in parts), sum(p[1] for p in parts)]
            inside = merge_stats(p[2] for p in parts)
            if not inside.maximum > inside.minimum:
                break
            h0, h1 = inside.minimum, inside.maximum

            def hist(
                b: Block, lo: float = lo, hi: float = hi, h0: float = h0, h1: float = h1
            ) -> np.ndarray:
                x = self.read(index, b, data)
                return histogram(x[(x >= lo) & (x <= hi)], h0, h1)

            room = (max(0, maxout - clipped[0]), max(0, maxout - clipped[1]))
            limits = nooutliers_limits(_sum_hist(run(hist, blocks)), h0, h1, st.count, room)
        return limits

    def _range(
        self,
        index: int,
        clamped: Stats,
        st: Stats,
        bits: int,
        limits: tuple[float, float] | None,
    ) -> RenderRange:
        """The stored range for ``bits``; refused when no float32 reader could decode it."""
        rng = choose_range(clamped, bits, limits)
        if not rng.is_finite:
            lo, hi = (clamped.minimum, clamped.maximum) if limits else (st.minimum, st.maximum)
            fix = "give a value range that holds the real data"
            if self.opts.nooutliers and limits is None:
                fix = "nooutliers cannot narrow them (EMAN2's limits must lie within 1e28); " + fix
            elif limits is None:
                fix = "clamp a few such pixels with nooutliers, or " + fix
            if abs(lo) <= F32_MAX and abs(hi) <= F32_MAX:
                fix += ", or use bits 0 to keep them exactly"
            raise InputError(
                f"image {index}: values span {lo:.3g}..{hi:.3g}, too wide for a quantised "
                f"range in float32 (corrupt or uninitialised data?); {fix}",
                self.source.path,
            )
        return rng

    def _lossless(self, index: int, st: Stats) -> None:
        """Refuse bits 0 for values float32 (EMAN2's only lossless storage) cannot hold,
        saying which bits would store them."""
        if not st.inexact:
            return
        dtype = self.source.dtype(index)
        head = (
            f"image {index}: {st.inexact} of {st.count} {dtype} values are not exact in "
            "float32, EMAN2's only lossless storage (bits 0)"
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
        raise InputError(f"{head}; {fix}", self.source.path)

    def encode(
        self,
        index: int,
        shape3: tuple[int, int, int],
        block: Block,
        rng: RenderRange | None,
        engine: codecs.Engine | None = None,
        pixels: _Pixels = None,
    ) -> _Encoded:
        """Quantise and deflate the chunks of one block (runs in a worker thread).

        The deflate engine is probed on the block's first chunk unless ``engine`` is given.
        """
        self.cancel.check()
        data = self.read(index, block, pixels)
        _, ny, nx = shape3
        rank = len(dataset_shape(shape3))
        rows = min(self.rows(shape3), ny)
        bits = rng.bits if rng is not None else 0
        dtype = storage_dtype(bits)
        shuffle = self.opts.shuffle_for(bits)
        codes = np.zeros((rows, nx), dtype=dtype)  # one chunk, zero-padded at the edge
        work = np.empty(rows * nx, dtype=F32)
        truncated = 0
        shift = 0.0
        stats = Stats()
        moments = not self.stacked
        chunks: list[tuple[tuple[int, ...], bytes | bytearray]] = []
        for r in range(0, data.shape[0], rows):
            piece = data[r : r + rows]
            n = piece.shape[0]
            if rng is None:
                codes[:n] = piece
                if moments:
                    stats = stats.merge(block_stats(codes[:n]))
            else:
                if moments:
                    stats = stats.merge(header_moments(piece, work))
                clamped = quantize(piece, rng, out=codes[:n], work=work)[1]
                if clamped:
                    truncated += clamped
                    shift += clamp_shift(piece, rng)
            if n < rows:
                codes[n:] = 0
            y = block.y0 + r
            offset: tuple[int, ...] = (
                (block.z, y, 0) if rank == 3 else (y, 0) if rank == 2 else (0,)
            )
            if engine is None:
                probe = max(1, min(rows, codecs.PROBE_BYTES // (nx * dtype.itemsize)))
                margin = 0.0 if self.opts.level <= 1 else 0.02
                sampled = self._bytes(codes[:probe], shuffle)
                engine, sample = codecs.choose(self.engines, sampled, margin)
                if probe == rows:  # the probe was the whole chunk: keep its stream
                    chunks.append((offset, self._sealed(sample)))
                    continue
            chunks.append((offset, self._sealed(engine.compress(self._bytes(codes, shuffle)))))
        return _Encoded(truncated, chunks, stats, engine, shift)

    def _sealed(self, stream: bytes | bytearray) -> bytes | bytearray:
        """A deflated chunk as stored: with its Fletcher-32 checksum when asked for."""
        return checksum.append(stream) if self.opts.checksum else stream

    def _bytes(self, codes: np.ndarray, shuffle: bool) -> memoryview:
        buf = codecs.shuffle(codes) if shuffle else codes.reshape(-1)
        return buf.data.cast("B")

    def whole_image(self, index: int, engine: codecs.Engine | None = None) -> _ImageJob:
        """Range and encoding of a small image, all in the calling thread (its pixels
        are read once, for both passes)."""
        shape3 = self.source.shape(index)
        parts = blocks(shape3, self.rows(shape3))
        data = {b: self.read(index, b) for b in parts}
        run: BlockMap = lambda fn, items: [fn(b) for b in items]  # noqa: E731
        rng, st, quality = self.choose(index, parts, run, data)
        job = _ImageJob(index, shape3, rng, st, quality)
        for b in parts:
            job.encoded.append(self.encode(index, shape3, b, rng, engine, data))
            engine = job.encoded[-1].engine
        return job

    def whole_images(self, indices: list[int]) -> list[_ImageJob]:
        """:meth:`whole_image` for a batch of small images of a stack.

        The deflate engine is probed on the batch's first image only: the images of a
        stack are alike, and probing costs more than coding a small image.
        """
        jobs: list[_ImageJob] = []
        engine: codecs.Engine | None = None
        for index in indices:
            jobs.append(self.whole_image(index, engine))
            engine = jobs[-1].encoded[-1].engine if jobs[-1].encoded else None
        return jobs


def _noise_rows(nblocks: int, nx: int) -> int:
    """Rows of each block whose noise is measured: NOISE_SAMPLE_PIXELS per image in all,
    whole tiles (plus the 2 rows the residual needs)."""
    per_block = NOISE_SAMPLE_PIXELS // max(1, nblocks) // max(1, nx)
    return max(1, per_block // NOISE_TILE) * NOISE_TILE + 2


def _sum_hist(parts: Iterable[np.ndarray]) -> np.ndarray:
    total = np.zeros(HIST_BINS, dtype=np.int64)
    for part in parts:
        total += part
    return total


# Header keys a stack does not store per image: statistics, which EMAN2 recomputes from
# the pixels on read; keys EMAN2 sets itself on read (size and type from the dataset,
# source_n, endianness); EMAN2's defaults for real images. (spec §5.3)
STACK_DROPPED = frozenset(
    (
        "minimum",
        "maximum",
        "mean",
        "sigma",
        "square_sum",
        "mean_nonzero",
        "sigma_nonzero",
        "all_int",
        "nx",
        "ny",
        "nz",
        "datatype",
        "source_n",
        "source_path",
        "HostEndian",
        "ImageEndian",
        "is_complex",
        "is_complex_x",
        "is_complex_ri",
        "changecount",
    )
)
# Kept on every image of a stack even when the same for all: to EMAN2 a ``Group.*`` key
# is not a pixel size. So is a non-zero origin (EMAN2 reads an absent origin as 0).
STACK_APIX = ("apix_x", "apix_y", "apix_z")
STACK_ORIGIN = ("origin_x", "origin_y", "origin_z")


class _Headers:
    """The EMAN2 header of each image, and for a stack the keys stored once for all."""

    def __init__(self, source: ImageSource, opts: Options, *, stacked: bool) -> None:
        self.source = source
        self.opts = opts
        self.stacked = stacked
        self.shared: frozenset[str] = frozenset()
        if stacked:
            first = source.header(0)
            per_image = set(STACK_APIX)
            if any(float(first.get(k, 0.0)) != 0.0 for k in STACK_ORIGIN):
                per_image.update(STACK_ORIGIN)
            self.shared = frozenset(source.shared_keys()) - per_image

    def group(self) -> dict[str, Any]:
        """``/MDF/images`` attributes: those of an HDF source, and for a stack the keys
        that are the same for every image."""
        out = dict(self.source.group_attrs())
        if self.stacked:
            out["source_path"] = self.source.path.name
            out.update((k, v) for k, v in self.source.header(0).items() if k in self.shared)
        return out

    def raw(self, index: int) -> dict[str, Any]:
        """Attributes of an HDF source's image without the ``EMAN.`` prefix, copied as is."""
        return {
            name: value
            for name, value in self.source.raw_attrs(index).items()
            if not name.startswith("EMAN.")
        }

    def image(self, job: _ImageJob, truncated: int) -> dict[str, Any]:
        """The ``EMAN.*`` keys of one image."""
        if not self.stacked:
            return _image_header(self.source, job, self.opts, truncated)
        header: dict[str, Any] = {}
        if job.rng is not None:  # first: the reader looks these up by name
            header["stored_renderbits"] = job.rng.bits
            header["stored_rendermin"] = F32(job.rng.rmin)
            header["stored_rendermax"] = F32(job.rng.rmax)
            header["stored_truncated"] = truncated
        header.update(apix_x=F32(1.0), apix_y=F32(1.0), apix_z=F32(1.0))
        for name, value in self.source.raw_attrs(job.index).items():
            if name.startswith("EMAN.") and name[5:] not in STACK_DROPPED:
                header[name[5:]] = value
        for key, value in self.source.header(job.index).items():
            if key not in self.shared and key not in STACK_DROPPED:
                header[key] = value
        if self.opts.apix is not None:
            header.update({f"apix_{axis}": F32(self.opts.apix) for axis in "xyz"})
        if self.opts.store_level:
            header["render_compress_level"] = self.opts.level
        return header


def _image_header(
    source: ImageSource, job: _ImageJob, opts: Options, truncated: int
) -> dict[str, Any]:
    """The full header EMAN2 writes for an image (files of one image)."""
    nz, ny, nx = job.shape3
    st = job.stats
    header: dict[str, Any] = {
        "nx": nx,
        "ny": ny,
        "nz": nz,
        "apix_x": F32(1.0),
        "apix_y": F32(1.0),
        "apix_z": F32(1.0),
        "is_complex": 0,
        "is_complex_ri": 1,
        "is_complex_x": 0,
        "HostEndian": "little",
        "ImageEndian": "little",
    }
    for name, value in source.raw_attrs(job.index).items():
        if name.startswith("EMAN."):
            header[name[5:]] = value
    header.update(source.header(job.index))
    if opts.apix is not None:
        for axis in "xyz":
            header[f"apix_{axis}"] = F32(opts.apix)
    with np.errstate(over="ignore"):  # sums beyond float32 are stored as inf, as EMAN2 does
        computed = {
            "minimum": F32(st.minimum if st.count else 0.0),
            "maximum": F32(st.maximum if st.count else 0.0),
            "mean": F32(st.mean),
            "sigma": F32(st.sigma),
            "square_sum": F32(st.sumsq),
            "all_int": int(st.all_int and not st.nonfinite),
            "datatype": DATATYPE[storage_dtype(job.bits).itemsize if job.bits else 0],
            "source_path": source.path.name,
            "source_n": job.index,
        }
    header.update(computed)
    if opts.store_level:
        header["render_compress_level"] = opts.level
    if job.rng is not None:
        header["stored_rendermin"] = F32(job.rng.rmin)
        header["stored_rendermax"] = F32(job.rng.rmax)
        header["stored_renderbits"] = job.rng.bits
        header["stored_truncated"] = truncated
    return header


def _write_job(
    writer: EmanHdfWriter,
    headers: _Headers,
    job: _ImageJob,
    encoded: Iterable[_Encoded],
    cancel: Cancel,
    advance: Callable[[int], None] | None = None,
) -> ImageReport:
    opts = headers.opts
    shape = dataset_shape(job.shape3)
    dsid = writer.create_image(
        job.index,
        shape,
        job.bits,
        level=opts.level,
        chunks=chunk_shape(job.shape3, _chunk_rows(job.shape3, opts, headers.stacked)),
        shuffle=opts.shuffle_for(job.bits),
        checksum=opts.checksum,
    )
    truncated = 0
    shift = 0.0
    written = Stats()
    counted = 0  # pixels reported to ``advance`` (blocks of a stack have no counts)
    for enc in encoded:
        cancel.check()
        truncated += enc.truncated
        shift += enc.shift
        written = written.merge(enc.stats)
        for offset, data in enc.chunks:
            dsid.write_direct_chunk(offset, data)
        if advance is not None and enc.stats.count:
            advance(enc.stats.count)
            counted += enc.stats.count
    if advance is not None and math.prod(job.shape3) > counted:
        advance(math.prod(job.shape3) - counted)
    if job.rng is not None:  # min/max/integer test come from the range pass
        written.minimum, written.maximum = job.stats.minimum, job.stats.maximum
        written.all_int = job.stats.all_int
    job.stats = written
    writer.write_header(job.index, headers.image(job, truncated), headers.raw(job.index))
    rng = job.rng
    report = ImageReport(
        job.index,
        shape,
        job.bits,
        None if rng is None else float(F32(rng.rmin)),
        None if rng is None else float(F32(rng.rmax)),
        truncated,
        "" if rng is None else rng.rule,
    )
    q = job.quality
    if q is not None:
        report.auto = opts.auto
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


def _stack_layout(source: ImageSource, opts: Options) -> StackLayout | None:
    """The stack layout for a source of several images (None: one image)."""
    if len(source) < 2:
        return None
    shape3 = source.shape(0)
    chunk = chunk_shape(shape3, _chunk_rows(shape3, opts, stacked=True))
    grid = math.prod(-(-d // c) for d, c in zip(dataset_shape(shape3), chunk, strict=True))
    return StackLayout(chunks_per_image=grid, images=len(source))


def _counter(progress: Progress, source: ImageSource) -> Callable[[int], None]:
    """``advance(pixels)``: adds to a running count and reports it to ``progress``."""
    total = sum(math.prod(source.shape(i)) for i in range(len(source)))
    done = 0

    def advance(pixels: int) -> None:
        nonlocal done
        done += pixels
        progress(done, total)

    return advance


def write_eman_hdf(
    source: ImageSource,
    path: PathLike,
    opts: Options,
    pool: Executor,
    cancel: Cancel | None = None,
    progress: Progress | None = None,
) -> Sequence[ImageReport]:
    """Compress every image of ``source`` into a new EMAN2 HDF file at ``path``.

    ``pool`` runs the chunk tasks; ``cancel``, when set, stops them at the next block;
    ``progress(done, total)`` is called with pixel counts after each block is written.
    Small images are encoded in batches of about ``BATCH_BYTES`` (one task each, in
    ``pool`` or inline, see ``INLINE_IMAGE_BYTES``) while this thread writes the
    finished ones; large images are split into blocks across the pool. A source of
    several images is written in the stack layout (see :mod:`~e2compress.eman_hdf`).
    """
    stack = _stack_layout(source, opts)
    enc = _Encoder(source, opts, cancel or Cancel(), stacked=stack is not None)
    headers = _Headers(source, opts, stacked=stack is not None)
    width = pool_width(pool)
    reports = ImageReports()  # compact: memory does not grow with the image count
    advance = None if progress is None else _counter(progress, source)
    with EmanHdfWriter(path, stack) as writer:
        writer.write_group_header(headers.group())
        window: deque[Future[list[_ImageJob]]] = deque()
        batch: list[int] = []
        batch_bytes = 0

        def drain(keep: int) -> None:
            while len(window) > keep:
                for job in window.popleft().result():
                    reports.append(
                        _write_job(writer, headers, job, job.encoded, enc.cancel, advance)
                    )

        def submit() -> None:
            nonlocal batch, batch_bytes
            if batch:
                run = InlineExecutor() if batch_bytes <= INLINE_IMAGE_BYTES else pool
                window.append(run.submit(enc.whole_images, batch))
                drain(in_flight(width, 3 * batch_bytes))
                batch, batch_bytes = [], 0

        try:
            for index in range(len(source)):
                shape3 = source.shape(index)
                nbytes = math.prod(shape3) * 4
                if nbytes <= SMALL_IMAGE_BYTES:
                    batch.append(index)
                    batch_bytes += nbytes
                    if batch_bytes >= BATCH_BYTES:
                        submit()
                    continue
                submit()
                drain(0)
                reports.append(
                    _write_large(writer, enc, headers, index, shape3, pool, width, advance)
                )
            submit()
            drain(0)
        finally:
            settle(window)
    return reports


def _write_large(
    writer: EmanHdfWriter,
    enc: _Encoder,
    headers: _Headers,
    index: int,
    shape3: tuple[int, int, int],
    pool: Executor,
    width: int,
    advance: Callable[[int], None] | None = None,
) -> ImageReport:
    parts = blocks(shape3, enc.rows(shape3))
    window = in_flight(width)

    def run(fn: Callable[[Block], Any], items: list[Block]) -> list[Any]:
        with closing(bounded(pool, fn, items, window)) as results:
            return list(results)

    rng, st, quality = enc.choose(index, parts, run)
    job = _ImageJob(index, shape3, rng, st, quality)
    encoded = bounded(pool, lambda b: enc.encode(index, shape3, b, rng), parts, window)
    with closing(encoded):
        return _write_job(writer, headers, job, encoded, enc.cancel, advance)


def output_is_complete(src: PathLike, target: PathLike, options: Options | int) -> bool:
    """True when ``target`` already holds what compressing ``src`` would write
    (``--skip-existing``).

    A separate output counts only when its record (see :mod:`~e2compress.provenance`)
    names ``src`` with its current size and modification time and the same value
    options (bits, range option and numbers), and every image is present, readable
    and stored at ``bits``. An ``.hdf`` replaced in place counts when every image is
    already deflate-compressed at the requested bits and, if the file carries a
    record, with the same range option (an EMAN2-compressed file at those bits is
    skipped: compressing it again could only add rounding). With ``bits="auto"`` any
    stored bits count (a record must name the same noise fraction); in place without a
    record, every image must already be quantised.

    Args:
        src: the input file.
        target: its output (a symbolic link is followed).
        options: the :class:`~e2compress.options.Options` of the run (or just bits).
    """
    opts = options if isinstance(options, Options) else Options(bits=options)
    target = Path(target)
    ident = Identity.of(src)
    if ident is None or not target.is_file():
        return False
    try:
        in_place = os.path.samefile(src, target)
        record = read_record(target)
        if record is None:
            if not in_place:
                return False
        elif in_place:
            if record.value_options != value_options(opts):
                return False
        elif not record.matches(src, ident, opts):
            return False
        with EmanHdfFile(target, locking=False, threads=1) as out:
            if record is not None and not in_place and len(out) != record.source_images:
                return False
            size = target.stat().st_size
            for i in range(len(out)):
                rng = out.render_range(i)
                stored = rng.bits if rng else 0
                if opts.auto:
                    if stored == 0 and record is None:
                        return False
                elif stored != opts.bits:
                    return False
                if not stored_whole(out.dataset(i), size, need_deflate=in_place):
                    return False
            return len(out) > 0
    except (E2CompressError, OSError, KeyError, ValueError, RuntimeError):
        return False


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # either is missing
        return False


def _requantise_warning(source: ImageSource, opts: Options) -> str | None:
    """A warning when ``source`` holds quantised images and ``opts`` asks for more bits."""
    if source.kind != "hdf":
        return None
    try:
        with EmanHdfFile(source.path, threads=1) as f:  # locking as the source opened it
            stored = [f.render_range(i) for i in range(len(f))]
    except E2CompressError:
        return None
    wanted = opts.bits or 33  # float32 holds more than any quantised code
    lower = sorted({r.bits for r in stored if r is not None and r.bits < wanted})
    if not lower:
        return None
    n = sum(1 for r in stored if r is not None and r.bits < wanted)
    at = f"{lower[0]}" if len(lower) == 1 else f"{lower[0]}..{lower[-1]}"
    into = "as float32" if opts.bits == 0 else f"at {opts.bits} bits"
    if len(stored) == 1:
        return f"{source.path}: image stored at {at} bits; storing it {into} gains nothing"
    return (
        f"{source.path}: {n} of {len(stored)} images stored at {at} bits; "
        f"storing them {into} gains nothing"
    )


def _foreign_hdf5(target: Path) -> bool:
    """True when ``target`` is a readable HDF5 file without EMAN2's ``/MDF/images``.

    A damaged HDF5 file (say, a copy cut short) is not foreign: it may be replaced.
    """
    if not target.is_file() or not is_hdf5(target):
        return False
    try:
        with h5py.File(target, "r", locking=False) as f:
            return not isinstance(f.get("MDF/images"), h5py.Group)
    except (OSError, RuntimeError, KeyError, ValueError):
        return False


def compress_file(
    src: PathLike,
    dst: PathLike | None = None,
    *,
    bits: int | str | None = None,
    level: int | None = None,
    value_range: tuple[float, float] | None = None,
    sigrange: tuple[float, float] | None = None,
    nooutliers: bool | None = None,
    threads: int | None = None,
    verify: bool | None = None,
    shuffle: bool | None = None,
    chunk_rows: int | None = None,
    store_level: bool | None = None,
    noise_fraction: float | None = None,
    apix: float | None = None,
    eer_grouping: int | None = None,
    checksum: bool | None = None,
    force: bool = False,
    options: Options | None = None,
    pool: Executor | None = None,
    cancel: Cancel | None = None,
    progress: Progress | None = None,
) -> CompressReport:
    """Compress ``src`` (MRC, TIFF or EMAN2 HDF) into EMAN2 compressed HDF at ``dst``.

    A pure task: everything it uses is passed in (settings, pool, cancel token); it
    changes no process-wide state (warning filters, logging handlers, signal handlers)
    and may run in several threads at once.

    Args:
        src: the input file.
        dst: the output file; default EMAN2's naming (see :func:`output_path`). A
            symbolic link is followed: its target is replaced and the link kept.
        bits, level, value_range, sigrange, nooutliers, shuffle, chunk_rows, store_level,
        noise_fraction, apix, eer_grouping, checksum: what to store, as the fields of
            :class:`~e2compress.options.Options` of the same names (``bits="auto"``
            chooses per image by the noise rule); None (not given) keeps the field's
            default. Give these or ``options``, not both.
        threads: worker threads when no ``pool`` is given (default: all cores).
        verify: decode the written file and check every pixel against the source before
            the rename; default only when replacing the input in place.
        force: replace an output that is write-protected or has several hard links,
            and replace an input in place even when the result is larger.
        options: a prepared :class:`~e2compress.options.Options` (instead of the
            per-field keywords).
        pool: an executor shared between files (the caller shuts it down).
        cancel: a :class:`~e2compress.executor.Cancel` token; setting it stops the work
            at the next block and raises :class:`~e2compress.errors.Interrupted`.
        progress: called as ``progress(done, total)`` (pixels encoded so far, pixels in
            the file) after each block is written, in the calling thread.

    The output appears atomically; on any error the input and any previous output are
    untouched. The source must not change while it is read: its size, times and inode
    are checked after the last read and again just before the rename. The output
    records what it was made from (see :func:`output_is_complete`).

    Compressing an already quantised EMAN2 file again (e.g. 10 -> 5 bits) rounds values
    that were already rounded: the error bound is the sum of both half steps. Asking
    for more bits than an image holds gains nothing; ``report.warnings`` says so. An
    ``.hdf`` replaced in place whose result would be larger is kept as it was (unless
    ``force``): the report then has a warning, ``bytes_out == bytes_in`` and no images.

    Raises:
        InputError: the input cannot be read, holds values that cannot be stored, or
            changed while it was being compressed.
        OutputError: the output cannot be written, or must not be replaced (another
            kind of file, the input itself when it is not HDF, write-protected or
            hard-linked without ``force``).
        VerificationError: the written file does not decode to the source.
        E2CompressError: impossible settings or ``threads``, or both ``options`` and
            per-field keywords given.
        Interrupted: ``cancel`` was set.
    """
    fields: dict[str, Any] = {
        "bits": bits,
        "level": level,
        "value_range": value_range,
        "sigrange": sigrange,
        "nooutliers": nooutliers,
        "shuffle": shuffle,
        "chunk_rows": chunk_rows,
        "store_level": store_level,
        "noise_fraction": noise_fraction,
        "apix": apix,
        "eer_grouping": eer_grouping,
        "checksum": checksum,
    }
    given = {name: value for name, value in fields.items() if value is not None}
    if options is not None and given:
        raise E2CompressError(
            f"give options or the keywords {', '.join(given)}, not both "
            f"(options=dataclasses.replace(options, {next(iter(given))}=...) changes one field)"
        )
    opts = (options if options is not None else Options(**given)).validate()
    cancel = cancel or Cancel()
    source_path = Path(src)
    named = Path(dst) if dst is not None else output_path(source_path)
    ident = Identity.of(source_path)  # before the first read
    partners = [(p, Identity.of(p)) for p in companions(source_path)]  # an IMAGIC pair
    t0 = time.perf_counter()
    own_pool = pool is None
    workers = pool or make_pool(threads)  # checks threads
    warnings: list[str] = []
    notes: list[str] = []
    try:
        target = resolve_target(named)
        check_output_dir(target)
        # a .gz/.bz2 input is decompressed into a nameless file beside the output
        with open_source(
            source_path, scratch_dir=target.parent, eer_grouping=opts.eer_grouping, keep=True
        ) as source:
            warnings += source.notices()
            in_place = _same_file(source_path, target)
            if in_place and source.kind != "hdf":
                raise OutputError(
                    f"the output would replace this {source.kind.upper()} input with HDF5 "
                    "data under the same name; choose another output name",
                    named,
                )
            warnings += check_replaceable(target, force=force)
            if not in_place and not force and _foreign_hdf5(target):
                raise OutputError(
                    "output exists and is an HDF5 file with no EMAN2 images (someone "
                    "else's data?); not replaced (--force, or force=True, replaces it)",
                    target,
                )
            do_verify = in_place if verify is None else verify
            note = _requantise_warning(source, opts)
            warnings += [note] if note else []
            bytes_in = ident.size if ident is not None else 0

            def unchanged() -> None:
                check_unchanged(source_path, ident)
                for path, before in partners:
                    check_unchanged(path, before)

            with AtomicOutput(target) as out:
                try:
                    images = write_eman_hdf(source, out.path, opts, workers, cancel, progress)
                    if ident is not None:
                        write_record(out.path, Record.make(src, ident, len(images), opts))
                    kept = source.kept()
                    if kept is not None:
                        write_kept(out.path, kept, exact=stored_exactly(source, images))
                    check_complete(out.path, images, len(source))
                    if do_verify:
                        verify_output(source, out.path, opts, images, workers, cancel)
                    unchanged()
                    notes = source.notes()
                    grown = os.stat(out.path).st_size
                    if in_place and grown > bytes_in and not force:
                        warnings.append(
                            f"{named}: kept as it was: the new file would be larger "
                            f"({grown} bytes, now {bytes_in})"
                        )
                        images = []
                    else:
                        out.commit(before_replace=unchanged)
                except (OSError, RuntimeError) as exc:  # h5py reports failed writes as either
                    unchanged()  # a source changed under us is the cause to report
                    raise os_error(exc, target) from None
                except E2CompressError:
                    unchanged()
                    raise
    finally:
        if own_pool:
            workers.shutdown(wait=True, cancel_futures=True)
    mode = target.stat()
    report = CompressReport(
        source=str(source_path),
        output=str(named),
        bytes_in=bytes_in,
        bytes_out=mode.st_size if stat.S_ISREG(mode.st_mode) else 0,
        seconds=time.perf_counter() - t0,
        engine=codecs.engine_names(opts.level),
        verified=do_verify,
        images=images,
        noise_fraction=opts.noise_fraction,
        warnings=warnings,
        notes=notes,
    )
    warning = quality_warning(str(source_path), images, opts.noise_fraction)
    if warning is not None:
        report.warnings.append(warning)
    warning = mean_warning(str(source_path), images)
    if warning is not None:
        report.warnings.append(warning)
    return report
