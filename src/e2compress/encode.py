"""Chunk encoding: measure an image block by block, plan it, quantise and deflate it.

The :class:`Encoder` runs in worker threads (the deflate engines release the GIL):
per block it reads the pixels, gathers statistics and noise tiles for the plan (see
:mod:`~e2compress.plan`), and turns the block into finished chunks (quantised,
shuffled, deflated, with their checksum) that the writer hands to HDF5 as they are.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import checksum, codecs
from .blocks import Block, blocks, chunk_shape, dataset_shape
from .errors import InputError
from .executor import Cancel
from .fidelity import NOISE_TILE, residual_tiles
from .hashing import holding, read_again_later
from .options import Options
from .plan import (
    Limits,
    Measured,
    NoiseSample,
    Plan,
    clips,
    needs_histogram,
    plan_image,
    stored_limits,
    wanted_limits,
)
from .quantize import F32, RenderRange, clamp_shift, is_wide, quantize, storage_dtype
from .ranges import (
    HIST_BINS,
    Stats,
    block_stats,
    header_moments,
    histogram,
    merge_stats,
    nooutliers_limits,
    valid_limits,
    window_stats,
)
from .readers import ImageSource

# The image noise (quality check, bits="auto") is estimated from about this many pixels
# per image, spread over its blocks: ~500 tiles, ~5 ms, whatever the image size.
NOISE_SAMPLE_PIXELS = 1 << 19
NOISE_SAMPLED_IMAGES = 256  # images of a stack whose noise is measured (fixed bits)
STACK_CHUNK_BYTES = 1 << 20  # stored bytes up to which a stack's image is one chunk
VOLUME_CHUNK_BYTES = 1 << 20  # stored bytes of whole sections a volume's chunk holds
# Larger images up to this size (as stored) are read once and held for both passes (range,
# encoding); larger ones are read twice: memory does not grow with them (a 3-D movie).
HELD_IMAGE_BYTES = 64 << 20

BlockMap = Callable[[Callable[[Block], Any], list[Block]], list[Any]]
Pixels = dict[Block, np.ndarray] | None  # blocks already read


def chunk_grid(shape3: tuple[int, int, int], opts: Options, stacked: bool) -> tuple[int, int]:
    """(sections, rows) of a chunk: ``opts.chunk_rows`` rows of a section, but a whole
    small image of a stack, and for a volume whose sections are small, whole sections
    up to ``VOLUME_CHUNK_BYTES`` a chunk (see :func:`~e2compress.blocks.chunk_shape`).

    A stack is read an image at a time; one chunk per image means one index entry,
    one chunk read and one deflate stream (measured: 128x128 reads 1.2x faster, and
    the file is smaller). A volume in one chunk per section lost up to 26 % of the
    ratio of small maps (deflate starts afresh per chunk; docs/performance.md). With
    ``bits="auto"`` the storage is not known yet: the widest (float32) is assumed.
    """
    nz, ny, nx = shape3
    itemsize = 4 if opts.auto else storage_dtype(opts.bits).itemsize
    section = ny * nx * itemsize
    if nz > 1 and section <= VOLUME_CHUNK_BYTES:
        return max(1, min(nz, VOLUME_CHUNK_BYTES // section)), ny
    if stacked and section <= STACK_CHUNK_BYTES:
        return 1, ny
    return 1, opts.chunk_rows


def image_chunks(shape3: tuple[int, int, int], opts: Options, stacked: bool) -> tuple[int, ...]:
    """The HDF5 chunk shape of an image (see :func:`chunk_grid`)."""
    sections, rows = chunk_grid(shape3, opts, stacked)
    return chunk_shape(shape3, rows, sections)


@dataclass
class Encoded:
    """The finished chunks of one block, with what encoding it counted."""

    truncated: int
    chunks: list[tuple[tuple[int, ...], bytes | bytearray]]
    stats: Stats
    engine: codecs.Engine | None = None
    shift: float = 0.0  # sum of (decoded - source) over the clamped pixels


@dataclass
class ImageJob:
    """One image: its plan, its unclamped statistics and (small images) its chunks."""

    index: int
    shape3: tuple[int, int, int]
    plan: Plan
    stats: Stats
    encoded: list[Encoded] = field(default_factory=list)

    @property
    def rng(self) -> RenderRange | None:
        """The stored range (None: float32)."""
        return self.plan.range

    @property
    def bits(self) -> int:
        """Stored bits of this image (0: float32)."""
        return self.plan.bits


class Encoder:
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
        self, index: int, block: Block, rows: int, data: Pixels = None
    ) -> tuple[Stats, NoiseSample]:
        """Statistics of a block, and noise tiles of its first ``rows`` rows (one read)."""
        self.cancel.check()
        pixels = self.read(index, block, data)
        st = block_stats(pixels, None, with_moments=self.moments)
        if st.nonfinite:  # refused by the plan; nothing to measure
            return st, NoiseSample()
        band = pixels[: min(rows, block.y1 - block.y0)]  # within one section
        return st, NoiseSample(
            [residual_tiles(band)], float(np.sum(band, dtype=np.float64)), band.size
        )

    @property
    def moments(self) -> bool:
        """Whether the range pass sums the pixels (``sigrange`` needs mean and sigma)."""
        return self.opts.sigrange is not None

    def grid(self, shape3: tuple[int, int, int]) -> tuple[int, int]:
        """(sections, rows) of a chunk of an image of this file."""
        return chunk_grid(shape3, self.opts, self.stacked)

    def blocks(self, shape3: tuple[int, int, int]) -> list[Block]:
        """The blocks of whole chunks an image of this file is encoded in."""
        sections, rows = self.grid(shape3)
        return blocks(shape3, rows, sections=sections)

    def read(self, index: int, block: Block, data: Pixels = None) -> np.ndarray:
        """The pixels of ``block`` (from ``data`` when the caller has read them)."""
        if data is not None:
            return data[block]
        if block.sections > 1:  # whole sections, one after the other as rows
            parts = [
                self.source.read(index, z, block.y0, block.y1)
                for z in range(block.z, block.z + block.sections)
            ]
            return np.concatenate(parts)
        return self.source.read(index, block.z, block.y0, block.y1)

    def stats(self, index: int, block: Block, limits: Limits | None, data: Pixels = None) -> Stats:
        """Statistics of a block, clamped to ``limits``."""
        self.cancel.check()
        pixels = self.read(index, block, data)
        return block_stats(pixels, limits, with_moments=self.moments)

    def hist(
        self, index: int, block: Block, h0: float, h1: float, data: Pixels = None
    ) -> np.ndarray:
        """EMAN2's histogram of a block over ``h0``..``h1``."""
        return histogram(self.read(index, block, data), h0, h1)

    def choose(
        self, index: int, blocks: list[Block], run: BlockMap, data: Pixels = None
    ) -> tuple[Plan, Stats]:
        """Measure the image and plan it: its stored range and quality, and its
        unclamped min/max/integer test.

        ``run(fn, blocks)`` applies ``fn`` to every block (inline or in the pool);
        ``data``: the blocks' pixels, when already read.
        """
        try:
            measured = self.measure(index, blocks, run, data)
            return plan_image(measured, self.opts), measured.stats
        except InputError as exc:
            if exc.path is not None:
                raise
            raise InputError(f"image {index}: {exc}", self.source.path) from None

    def measure(
        self, index: int, blocks: list[Block], run: BlockMap, data: Pixels = None
    ) -> Measured:
        """What :func:`~e2compress.plan.plan_image` needs to know about the image."""
        opts = self.opts
        dtype = self.source.dtype(index)

        def stats_of(limits: Limits | None) -> Stats:
            return merge_stats(run(lambda b: self.stats(index, b, limits, data), blocks))

        if opts.bits == 0:  # only the values float32 cannot hold matter
            return Measured(dtype, stats_of(None) if is_wide(dtype) else Stats())
        noise: NoiseSample | None = None
        if index % self.noise_stride == 0:
            rows = _noise_rows(len(blocks), self.source.shape(index)[2])
            surveyed = run(lambda b: self.survey(index, b, rows, data), blocks)
            st = merge_stats(p[0] for p in surveyed)
            noise = NoiseSample()
            for p in surveyed:
                noise = noise.merge(p[1])
        else:
            st = stats_of(None)
        hist = None
        if not st.nonfinite and needs_histogram(st, opts):
            hist = _sum_hist(
                run(lambda b: self.hist(index, b, st.minimum, st.maximum, data), blocks)
            )
        wanted = wanted_limits(st, opts, hist)
        if hist is not None and wanted is not None:
            wanted = self._refine(index, st, wanted, blocks, run, data)
        limits = stored_limits(wanted, st)
        clamped = stats_of(limits) if clips(limits, st) else None
        return Measured(dtype, st, limits, clamped, noise)

    def _refine(
        self,
        index: int,
        st: Stats,
        limits: Limits,
        blocks: list[Block],
        run: BlockMap,
        data: Pixels,
    ) -> Limits:
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

    def encode(
        self,
        index: int,
        shape3: tuple[int, int, int],
        block: Block,
        rng: RenderRange | None,
        engine: codecs.Engine | None = None,
        pixels: Pixels = None,
    ) -> Encoded:
        """Quantise and deflate the chunks of one block (runs in a worker thread).

        The deflate engine is probed on the block's first chunk unless ``engine`` is given.
        """
        self.cancel.check()
        data = self.read(index, block, pixels)
        nz, ny, nx = shape3
        rank = len(dataset_shape(shape3))
        sections, rows = self.grid(shape3)  # rows of a chunk, sections one after another
        rows = min(sections, nz) * ny if rank == 3 and sections > 1 else min(rows, ny)
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
                    for part in self._sum_parts(codes[:n], ny):
                        stats = stats.merge(block_stats(part))
            else:
                if moments:
                    for part in self._sum_parts(piece, ny):
                        stats = stats.merge(header_moments(part, work))
                clamped = quantize(piece, rng, out=codes[:n], work=work)[1]
                if clamped:
                    truncated += clamped
                    shift += clamp_shift(piece, rng)
            if n < rows:
                codes[n:] = 0
            z, y = divmod(block.z * ny + block.y0 + r, ny)
            offset: tuple[int, ...] = (z, y, 0) if rank == 3 else (y, 0) if rank == 2 else (0,)
            if engine is None:
                probe = max(1, min(rows, codecs.PROBE_BYTES // (nx * dtype.itemsize)))
                margin = 0.0 if self.opts.level <= 1 else 0.02
                sampled = self._bytes(codes[:probe], shuffle)
                engine, sample = codecs.choose(self.engines, sampled, margin)
                if probe == rows:  # the probe was the whole chunk: keep its stream
                    chunks.append((offset, self._sealed(sample)))
                    continue
            chunks.append((offset, self._sealed(engine.compress(self._bytes(codes, shuffle)))))
        return Encoded(truncated, chunks, stats, engine, shift)

    def _sum_parts(self, piece: np.ndarray, ny: int) -> Iterator[np.ndarray]:
        """``piece`` (rows of whole sections, or of one) cut into the pieces the header
        sums are taken over: ``chunk_rows`` rows of one section at most, whatever the
        chunk, so a volume's mean and sigma do not depend on its chunking (float32 sums)."""
        step = min(self.opts.chunk_rows, ny)
        for s in range(0, piece.shape[0], ny):
            section = piece[s : s + ny]
            for r in range(0, section.shape[0], step):
                yield section[r : r + step]

    def _sealed(self, stream: bytes | bytearray) -> bytes | bytearray:
        """A deflated chunk as stored: with its Fletcher-32 checksum when asked for."""
        return checksum.append(stream) if self.opts.checksum else stream

    def _bytes(self, codes: np.ndarray, shuffle: bool) -> memoryview:
        buf = codecs.shuffle(codes) if shuffle else codes.reshape(-1)
        return buf.data.cast("B")

    def large(
        self, index: int, shape3: tuple[int, int, int], run: BlockMap
    ) -> tuple[ImageJob, list[Block], Callable[[Block], Encoded]]:
        """Plan a large image, its blocks measured by ``run`` (across the pool), and
        return its plan, its blocks and the task that encodes a block.

        An image of up to ``HELD_IMAGE_BYTES`` as stored is read once and held for both
        passes (its reads feed the source's hash without waiting: they are in memory
        anyway); a larger one is read again to encode it, its first pass feeding the
        hash only what costs no waiting (the hash takes the rest from the second).
        """
        parts = self.blocks(shape3)
        held = math.prod(shape3) * self.source.dtype(index).itemsize
        held = held if held <= HELD_IMAGE_BYTES else 0

        def first_pass(fn: Callable[[Block], Any], block: Block) -> Any:
            with holding(held) if held else read_again_later():
                return fn(block)

        def measure(fn: Callable[[Block], Any], items: list[Block]) -> list[Any]:
            return run(functools.partial(first_pass, fn), items)

        read = measure(lambda b: self.read(index, b), parts) if held else []
        data = dict(zip(parts, read, strict=True)) if held else None
        job = ImageJob(index, shape3, *self.choose(index, parts, measure, data))

        def encode(block: Block) -> Encoded:
            pixels = None if data is None else {block: data.pop(block)}  # dropped once encoded
            return self.encode(index, shape3, block, job.rng, pixels=pixels)

        return job, parts, encode

    def whole_image(self, index: int, engine: codecs.Engine | None = None) -> ImageJob:
        """Plan and encoding of a small image, all in the calling thread (its pixels
        are read once, for both passes)."""
        shape3 = self.source.shape(index)
        parts = self.blocks(shape3)
        data = {b: self.read(index, b) for b in parts}
        run: BlockMap = lambda fn, items: [fn(b) for b in items]  # noqa: E731
        job = ImageJob(index, shape3, *self.choose(index, parts, run, data))
        for b in parts:
            job.encoded.append(self.encode(index, shape3, b, job.rng, engine, data))
            engine = job.encoded[-1].engine
        return job

    def whole_images(self, indices: list[int]) -> list[ImageJob]:
        """:meth:`whole_image` for a batch of small images of a stack.

        The deflate engine is probed on the batch's first image only: the images of a
        stack are alike, and probing costs more than coding a small image.
        """
        jobs: list[ImageJob] = []
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
