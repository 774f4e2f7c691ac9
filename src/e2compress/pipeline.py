"""The compression pipeline: write orchestration, atomic output, ``compress_file``.

A reader (:mod:`~e2compress.readers`) gives the pixels; :mod:`~e2compress.encode`
measures each image, asks :mod:`~e2compress.plan` how to store it, and quantises and
deflates its chunks in worker threads; this module hands them to HDF5 in order from one
thread (``write_direct_chunk``, exactly what HDF5's deflate (+ shuffle) filter decodes)
with the headers of :mod:`~e2compress.layout`, then checks and renames the output.
"""

from __future__ import annotations

import math
import os
import stat
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy.typing as npt

from . import codecs, kernels
from .atomic import TMP_SUFFIX, AtomicOutput, check_output_dir, os_error, resolve_target
from .blocks import Block, dataset_shape
from .counts_source import counts_input, store_gain
from .encode import Encoded, Encoder, ImageJob, image_chunks
from .errors import E2CompressError
from .executor import (
    Cancel,
    InlineExecutor,
    bounded,
    in_flight,
    pool_or_own,
    pool_width,
    settle,
)
from .kept import stored_exactly, write_kept
from .layout import EmanHdfWriter, Headers, stack_layout
from .options import Options
from .outputs import check_existing, output_path, requantise_warning, same_file
from .provenance import Origin, Record, write_record
from .ranges import Stats
from .readers import ImageSource, open_source
from .readers.array import ArraySource
from .report import (
    CompressReport,
    ImageReport,
    ImageReports,
    image_report,
    mean_warning,
    quality_warning,
)
from .verify import check_complete, verify_output

__all__ = ["TMP_SUFFIX", "compress_file", "write_eman_hdf", "write_images"]

PathLike = str | os.PathLike[str]
SMALL_IMAGE_BYTES = 8 << 20  # images up to this size are encoded whole by one worker
# Below this, encoding an image is mostly Python and HDF5 calls that hold the GIL:
# threads only contend (measured: a 256x256 stack runs 1.3x faster inline).
INLINE_IMAGE_BYTES = 1 << 20
BATCH_BYTES = 1 << 20  # float32 bytes of small images of a stack encoded per task

Progress = Callable[[int, int], None]  # (pixels encoded so far, pixels in the file)


def _write_job(
    writer: EmanHdfWriter,
    headers: Headers,
    job: ImageJob,
    encoded: Iterable[Encoded],
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
        chunks=image_chunks(job.shape3, opts, headers.stacked),
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
    header = headers.image(job.index, job.shape3, job.rng, job.stats, truncated)
    writer.write_header(job.index, header, headers.raw(job.index))
    return image_report(job.index, shape, job.rng, truncated, job.plan.quality, opts.auto, shift)


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
    several images is written in the stack layout (see :mod:`~e2compress.layout`).
    """
    stacked = len(source) > 1
    stack = None
    if stacked:
        shape3 = source.shape(0)
        stack = stack_layout(shape3, image_chunks(shape3, opts, True), len(source))
    enc = Encoder(source, opts, cancel or Cancel(), stacked=stacked)
    headers = Headers(source, opts, stacked=stacked)
    kernels.prepare(len(source) * math.prod(source.shape(0)) * 4 if len(source) else 0)
    width = pool_width(pool)
    reports = ImageReports()  # compact: memory does not grow with the image count
    advance = None if progress is None else _counter(progress, source)
    with EmanHdfWriter(path, stack) as writer:
        writer.write_group_header(headers.group())
        window: deque[Future[list[ImageJob]]] = deque()
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
    enc: Encoder,
    headers: Headers,
    index: int,
    shape3: tuple[int, int, int],
    pool: Executor,
    width: int,
    advance: Callable[[int], None] | None = None,
) -> ImageReport:
    window = in_flight(width)

    def run(fn: Callable[[Block], Any], items: list[Block]) -> list[Any]:
        with closing(bounded(pool, fn, items, window)) as results:
            return list(results)

    job, parts, encode = enc.large(index, shape3, run)
    with closing(bounded(pool, encode, parts, window)) as encoded:
        return _write_job(writer, headers, job, encoded, enc.cancel, advance)


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
    counts: bool | None = None,
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
        bits: 2..16 bits per stored value (0: lossless float32; ``"auto"``: by the noise rule).
        level: deflate level 0..9 (size and time only, never the values).
        value_range: keep values in [min, max].
        sigrange: keep values in mean - a*sigma .. mean + b*sigma, given (a, b).
        nooutliers: clamp the histogram's extreme tails, as EMAN2 does.
        threads: worker threads when no ``pool`` is given (default: all cores).
        verify: check each decoded pixel against the source before renaming (default: if in place).
        shuffle: the HDF5 shuffle filter (None: on for multi-byte storage).
        chunk_rows: rows per HDF5 chunk.
        store_level: record ``level`` in each image header, as EMAN2 does.
        noise_fraction: the most quantisation noise allowed, as a fraction of the image's noise.
        apix: pixel size in Angstrom for every image, instead of the input's.
        eer_grouping: EER frames summed into each stored image.
        checksum: end every chunk with HDF5's Fletcher-32 checksum.
        counts: store a gain-normalised float32 movie as its integer counts and gain, exactly.
        force: replace an output that is write-protected or has several hard links,
            and replace an input in place even when the result is larger.
        options: a prepared :class:`~e2compress.options.Options` instead of the settings
            above (its fields of the same names; a setting not given keeps the default), not both.
        pool: an executor shared between files (the caller shuts it down).
        cancel: a :class:`~e2compress.executor.Cancel` token; setting it stops the work
            at the next block and raises :class:`~e2compress.errors.Interrupted`.
        progress: called as ``progress(done, total)`` (pixels encoded so far, pixels in
            the file) after each block is written, in the calling thread.

    The output appears atomically; on any error the input and any previous output are
    untouched. The source must not change while it is read: its size, times and inode
    are checked after the last read and again just before the rename. The output
    records what it was made from (see :func:`~e2compress.outputs.output_is_complete`).

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
    opts = _settings(
        options,
        bits=bits,
        level=level,
        value_range=value_range,
        sigrange=sigrange,
        nooutliers=nooutliers,
        shuffle=shuffle,
        chunk_rows=chunk_rows,
        store_level=store_level,
        noise_fraction=noise_fraction,
        apix=apix,
        eer_grouping=eer_grouping,
        checksum=checksum,
        counts=counts,
    )
    source_path = Path(src)
    named = Path(dst) if dst is not None else output_path(source_path)
    origin = Origin.of(source_path)  # before the first read
    t0 = time.perf_counter()
    with pool_or_own(pool, threads) as workers:
        target = resolve_target(named)
        check_output_dir(target)
        # a .gz/.bz2 input is decompressed into a nameless file beside the output
        with open_source(
            source_path, scratch_dir=target.parent, eer_grouping=opts.eer_grouping, keep=True
        ) as source:
            run = _Run(opts, workers, cancel or Cancel(), progress, force, verify, t0)
            return _write(source, named, target, run, origin)


def write_images(
    path: PathLike,
    images: Sequence[npt.ArrayLike],
    *,
    headers: Sequence[Mapping[str, Any] | None] | None = None,
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
    checksum: bool | None = None,
    force: bool = False,
    options: Options | None = None,
    pool: Executor | None = None,
    cancel: Cancel | None = None,
    progress: Progress | None = None,
) -> CompressReport:
    """Compress in-memory images into EMAN2 compressed HDF at ``path``, as
    :func:`compress_file` does a file (the same settings, atomic output and checks).

    Args:
        path: the output file (a symbolic link is followed: its target is replaced).
        images: 2-D ``(ny, nx)`` or 3-D ``(nz, ny, nx)`` arrays of any integer or float
            type (see :class:`~e2compress.readers.array.ArraySource`); several make a
            stack. Do not change them until this returns.
        headers: per image, EMAN2 header keys to store with it (None: none).
        bits: 2..16 bits per stored value (0: lossless float32; ``"auto"``: by the noise rule).
        level: deflate level 0..9 (size and time only, never the values).
        value_range: keep values in [min, max].
        sigrange: keep values in mean - a*sigma .. mean + b*sigma, given (a, b).
        nooutliers: clamp the histogram's extreme tails, as EMAN2 does.
        threads: worker threads when no ``pool`` is given (default: all cores).
        verify: check every decoded pixel against ``images`` before the rename (default: no).
        shuffle: the HDF5 shuffle filter (None: on for multi-byte storage).
        chunk_rows: rows per HDF5 chunk.
        store_level: record ``level`` in each image header, as EMAN2 does.
        noise_fraction: the most quantisation noise allowed, as a fraction of the image's noise.
        apix: pixel size in Angstrom for every image, instead of the headers'.
        checksum: end every chunk with HDF5's Fletcher-32 checksum.
        force: replace an output that is write-protected or has several hard links.
        options: a prepared ``Options`` instead of the settings, as for :func:`compress_file`.
        pool: an executor shared between files (the caller shuts it down).
        cancel: a ``Cancel`` token; setting it stops the work and raises ``Interrupted``.
        progress: called as ``progress(done, total)``, as for :func:`compress_file`.

    Raises:
        InputError: an image that is not 2-D or 3-D, is empty, is not of an integer or float type
            or holds values the settings cannot store; ``headers`` of another length.
        OutputError, VerificationError, E2CompressError, Interrupted: as for :func:`compress_file`.
    """
    opts = _settings(
        options,
        bits=bits,
        level=level,
        value_range=value_range,
        sigrange=sigrange,
        nooutliers=nooutliers,
        shuffle=shuffle,
        chunk_rows=chunk_rows,
        store_level=store_level,
        noise_fraction=noise_fraction,
        apix=apix,
        checksum=checksum,
    )
    named = Path(path)
    t0 = time.perf_counter()
    source = ArraySource(images, headers=headers)
    with pool_or_own(pool, threads) as workers:
        target = resolve_target(named)
        check_output_dir(target)
        run = _Run(opts, workers, cancel or Cancel(), progress, force, verify, t0)
        return _write(source, named, target, run, None)


def _settings(options: Options | None, **fields: Any) -> Options:
    """``options``, or an :class:`Options` of the keywords given (not both), validated."""
    given = {name: value for name, value in fields.items() if value is not None}
    if options is not None and given:
        raise E2CompressError(
            f"give options or the keywords {', '.join(given)}, not both "
            f"(options=dataclasses.replace(options, {next(iter(given))}=...) changes one field)"
        )
    return (options if options is not None else Options(**given)).validate()


@dataclass(frozen=True)
class _Run:
    """How to write one output: settings, workers and the caller's choices."""

    opts: Options
    workers: Executor
    cancel: Cancel
    progress: Progress | None
    force: bool
    verify: bool | None
    t0: float


def _write(
    source: ImageSource, named: Path, target: Path, run: _Run, origin: Origin | None
) -> CompressReport:
    """Write ``source`` to ``target`` (``named``, a link resolved) atomically, checked.

    ``origin``: the input file ``source`` reads (None: images in memory); it is
    recorded in the output and must not change while it is read. With ``counts`` the
    source's gain is estimated (after the output checks) and its counts are stored.
    """
    opts, force = run.opts, run.force
    warnings: list[str] = source.notices()
    notes: list[str] = []
    in_place = origin is not None and same_file(origin.path, target)
    warnings += check_existing(named, target, source.kind, in_place=in_place, force=force)
    do_verify = in_place if run.verify is None else run.verify
    note = requantise_warning(source, opts)
    warnings += [note] if note else []
    whole = range(len(source))
    if origin is None:
        bytes_in = sum(math.prod(source.shape(i)) * source.dtype(i).itemsize for i in whole)
    else:
        bytes_in = origin.ident.size if origin.ident is not None else 0
    source, opts = counts_input(source, opts, run.cancel.check, run.workers)  # after the checks

    def unchanged() -> None:
        if origin is not None:
            origin.unchanged()

    with AtomicOutput(target) as out:
        try:
            images = write_eman_hdf(source, out.path, opts, run.workers, run.cancel, run.progress)
            store_gain(source, out.path)  # counts: the gain beside the images
            if origin is not None and origin.ident is not None:
                write_record(out.path, Record.make(origin.path, origin.ident, len(images), opts))
            kept = source.kept()
            if kept is not None:
                write_kept(out.path, kept, exact=stored_exactly(source, images))
            check_complete(out.path, images, len(source))
            if do_verify:
                verify_output(source, out.path, opts, images, run.workers, run.cancel)
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
    mode = target.stat()
    name = str(origin.path if origin is not None else source.path)
    report = CompressReport(
        source=name,
        output=str(named),
        bytes_in=bytes_in,
        bytes_out=mode.st_size if stat.S_ISREG(mode.st_mode) else 0,
        seconds=time.perf_counter() - run.t0,
        engine=codecs.engine_names(opts.level),
        verified=do_verify,
        images=images,
        noise_fraction=opts.noise_fraction,
        warnings=warnings,
        notes=notes,
    )
    for warning in (
        quality_warning(name, images, opts.noise_fraction),
        mean_warning(name, images),
    ):
        if warning is not None:
            report.warnings.append(warning)
    return report
