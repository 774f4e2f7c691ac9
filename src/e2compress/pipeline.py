"""The compression pipeline: write orchestration, atomic output, ``compress_file``.

The data flow, one module each: a reader (:mod:`~e2compress.readers`) gives the pixels;
:mod:`~e2compress.encode` measures each image, asks :mod:`~e2compress.plan` how to
store it, and quantises and deflates its chunks in worker threads (the deflate engines
release the GIL); this module hands the chunks to HDF5 in order from one thread with
``write_direct_chunk`` beside the headers of :mod:`~e2compress.layout` (the file is
exactly what HDF5's own deflate (+ shuffle) filter would decode), then records,
checks and renames the output into place (:mod:`~e2compress.atomic`).
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
from pathlib import Path
from typing import Any

from . import codecs
from .atomic import (
    TMP_SUFFIX,
    AtomicOutput,
    check_output_dir,
    check_replaceable,
    os_error,
    resolve_target,
)
from .blocks import Block, blocks, chunk_shape, dataset_shape
from .eman_hdf import EmanHdfWriter
from .encode import Encoded, Encoder, ImageJob, chunk_rows
from .errors import E2CompressError, OutputError
from .executor import Cancel, InlineExecutor, bounded, in_flight, make_pool, pool_width, settle
from .kept import stored_exactly, write_kept
from .layout import Headers, stack_layout
from .options import Options
from .outputs import foreign_hdf5, output_path, requantise_warning, same_file
from .provenance import Identity, Record, check_unchanged, write_record
from .quantize import F32, Stats
from .readers import ImageSource, companions, open_source
from .report import CompressReport, ImageReport, ImageReports, mean_warning, quality_warning
from .verify import check_complete, verify_output

__all__ = [
    "TMP_SUFFIX",
    "Cancel",
    "CompressReport",
    "ImageReport",
    "Options",
    "compress_file",
    "make_pool",
    "verify_output",
    "write_eman_hdf",
]

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
        chunks=chunk_shape(job.shape3, chunk_rows(job.shape3, opts, headers.stacked)),
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
    q = job.plan.quality
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
    stacked = len(source) > 1
    stack = None
    if stacked:
        shape3 = source.shape(0)
        stack = stack_layout(shape3, chunk_rows(shape3, opts, stacked=True), len(source))
    enc = Encoder(source, opts, cancel or Cancel(), stacked=stacked)
    headers = Headers(source, opts, stacked=stacked)
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
    parts = blocks(shape3, enc.rows(shape3))
    window = in_flight(width)

    def run(fn: Callable[[Block], Any], items: list[Block]) -> list[Any]:
        with closing(bounded(pool, fn, items, window)) as results:
            return list(results)

    job = ImageJob(index, shape3, *enc.choose(index, parts, run))
    rng = job.rng
    encoded = bounded(pool, lambda b: enc.encode(index, shape3, b, rng), parts, window)
    with closing(encoded):
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
            warnings += getattr(source, "notices", [])
            in_place = same_file(source_path, target)
            if in_place and source.kind != "hdf":
                raise OutputError(
                    f"the output would replace this {source.kind.upper()} input with HDF5 "
                    "data under the same name; choose another output name",
                    named,
                )
            warnings += check_replaceable(target, force=force)
            if not in_place and not force and foreign_hdf5(target):
                raise OutputError(
                    "output exists and is an HDF5 file with no EMAN2 images (someone "
                    "else's data?); not replaced (force=True replaces it)",
                    target,
                )
            do_verify = in_place if verify is None else verify
            note = requantise_warning(source, opts)
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
