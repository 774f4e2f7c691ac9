"""Per-file tasks of a batch and their local execution.

A :class:`Job` is a picklable description of one file's work; :func:`run_job` does it
and returns a picklable :class:`FileResult` whatever happens (a bad file is a result,
never an exception), so the same task runs in a local thread or on a Dask worker
(:mod:`e2compress.cluster`). Outputs are written to a temporary file and renamed, so
running a job again after its worker was lost is harmless.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from . import kernels
from .batch import Item
from .errors import E2CompressError, InputError, Interrupted
from .executor import Cancel, make_pool
from .options import Options
from .outputs import output_is_complete
from .pipeline import compress_file
from .report import CompressReport, bits_text

STATUSES = ("done", "skipped", "failed", "stopped", "unstarted")
SETTLE_SECONDS = 5.0  # the default minimum age of an input (the CLI's --settle)
SETTLE_WAIT = 10  # a younger input is waited for up to this many times the settle time
AUTO_CHOSE = ": bits=auto chose "  # in the note of a file stored with bits=auto


@dataclass(frozen=True)
class Job:
    """One file of a batch: what to read, where to write, how.

    Attributes:
        given: the input as the user gave it (used in messages).
        source: the input path.
        target: the output path.
        options: what to store.
        verify: as :func:`~e2compress.pipeline.compress_file`'s ``verify``.
        skip_existing: skip when ``target`` is already a complete output of this input.
        force: as :func:`~e2compress.pipeline.compress_file`'s ``force``.
        make_dirs: create ``target``'s directory if missing (a mirrored tree).
        settle: seconds the input must have stayed unchanged before it is read (see
            :func:`wait_settled`); 0 reads it at once.
        size: the input's size in bytes when the batch was planned (for progress).
        problem: non-empty: do not run; fail with this line.
        skip: non-empty: do not run; skip with this line.
    """

    given: str
    source: str
    target: str
    options: Options
    verify: bool | None = None
    skip_existing: bool = False
    force: bool = False
    make_dirs: bool = False
    settle: float = 0.0
    size: int = 0
    problem: str = ""
    skip: str = ""


@dataclass
class FileResult:
    """What happened to one file (one row of the batch report).

    ``status`` is one of done, skipped, failed, stopped (interrupted while being
    written: nothing written) or unstarted (the batch stopped before it began).
    ``bytes_in`` is the input's size (as planned, unless it was compressed).
    ``rmin``/``rmax`` are the lowest and highest stored limits over the file's images
    (None for lossless ``bits`` 0); ``truncated`` counts clamped pixels. ``bits`` is a
    text such as ``"7-9"`` when the images of a file were stored at different bits
    (``--bits auto``); ``note`` says what ``--bits auto`` chose and holds the report's
    notes (an EER movie's dose), one a line; ``verified``: the output was decoded and
    checked against the source pixel by pixel before it replaced anything.
    """

    given: str
    source: str
    target: str
    status: str
    message: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    bits: int | str | None = None
    rmin: float | None = None
    rmax: float | None = None
    truncated: int = 0
    seconds: float = 0.0
    worker: str = ""
    warnings: list[str] = field(default_factory=list)
    note: str = ""
    verified: bool = False

    @property
    def ratio(self) -> float:
        """Input size over output size (0 when nothing was written)."""
        return self.bytes_in / self.bytes_out if self.bytes_out else 0.0


@dataclass(frozen=True)
class Tick:
    """Progress of one file: ``done`` of ``total`` pixels encoded (0 of 0: just started);
    ``size`` is the input's size in bytes; ``waiting`` (not None): the input was modified
    that many seconds ago and is waited for (see :func:`wait_settled`), nothing read yet."""

    given: str
    target: str
    done: int
    total: int
    worker: str = ""
    size: int = 0
    waiting: float | None = None


TickFn = Callable[[Tick], None]


def quiet_tifffile() -> None:
    """Give tifffile's logger a NullHandler (once), so Python's last-resort handler does
    not print its lines about damaged tags on stderr: every problem is reported in the
    file's result instead.

    Logging is the application's to configure, so the library installs no handler at
    import; the command line calls this, and so does each Dask worker's setup
    (:class:`~e2compress.cluster.ChunkPool`), as it is a process of the batch's own.
    """
    logger = logging.getLogger("tifffile")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())


def file_size(path: Path) -> int:
    """Size of ``path`` in bytes, 0 if it cannot be read (the job then fails, with why)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def make_jobs(
    items: Iterable[Item],
    options: Options,
    *,
    verify: bool | None = None,
    skip_existing: bool = False,
    force: bool = False,
    settle: float = 0.0,
) -> Iterator[Job]:
    """One :class:`Job` per input item (streamed); ``settle`` as :class:`Job`'s."""
    for item in items:
        yield Job(
            item.given,
            str(item.source),
            str(item.target),
            options,
            verify=verify,
            skip_existing=skip_existing,
            force=force,
            make_dirs=item.make_dirs,
            settle=settle,
            size=0 if item.problem else file_size(item.source),
            problem=item.problem,
            skip=item.skip,
        )


def _result(job: Job, status: str, message: str = "", **kw: object) -> FileResult:
    return FileResult(job.given, job.source, job.target, status, message, **kw)  # type: ignore[arg-type]


def from_report(job: Job, report: CompressReport, worker: str) -> FileResult:
    """The result of a compressed file, from its :class:`CompressReport`."""
    ranged = [im for im in report.images if im.rmin is not None and im.rmax is not None]
    text = bits_text(report.images)
    bits: int | str = job.options.bits
    if report.images:
        bits = int(text) if text.isdigit() else text
    return FileResult(
        job.given,
        job.source,
        job.target,
        "done",
        bytes_in=report.bytes_in,
        bytes_out=report.bytes_out,
        bits=bits,
        rmin=min((im.rmin for im in ranged if im.rmin is not None), default=None),
        rmax=max((im.rmax for im in ranged if im.rmax is not None), default=None),
        truncated=report.truncated,
        seconds=report.seconds,
        worker=worker,
        warnings=list(report.warnings),
        note="\n".join(([auto_note(job.given, report)] if job.options.auto else []) + report.notes),
        verified=report.verified,
    )


def auto_note(given: str, report: CompressReport) -> str:
    """What ``bits=auto`` chose for one file (the command line prints it with -v)."""
    noisy = [im for im in report.images if im.noise is not None]
    text = f"{given}{AUTO_CHOSE}{bits_text(report.images)}"
    if noisy:
        worst = max(noisy, key=lambda im: im.noise_ratio or 0.0)
        ratio = worst.noise_ratio or 0.0
        text += f" (image noise {worst.noise:.3g}, "
        exact = "exact inside the range" if report.truncated else "stored exactly"
        text += f"quantisation noise {ratio:.3g} x that" if ratio else exact
        if len(report.images) > 1:
            text += f" in the worst of {len(report.images)} images"
        if report.truncated:  # clamped by a range option: not exact, and it moves the mean
            change = max((abs(im.mean_change or 0.0) for im in report.images), default=0.0)
            text += f"; {report.truncated} pixels clamped, mean moved by up to {change:.3g}"
        text += ")"
    return text


def _signature(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def wait_settled(
    path: str,
    settle: float,
    cancel: Cancel,
    *,
    limit: float | None = None,
    on_wait: Callable[[float], None] | None = None,
    poll: float = 0.2,
) -> None:
    """Return once ``path`` has not changed for ``settle`` seconds.

    A file still being written can look complete: a TIFF appended page by page, an
    OME-TIFF before its XML is written, an MRC whose writer updates nz after each frame
    (as IMOD does). So a file modified less than ``settle`` seconds ago is watched until
    it was last modified ``settle`` seconds ago, or its size and modification time
    stayed the same for ``settle`` seconds of watching (a clock that differs from the
    file server's cannot make it wait forever). A missing file returns at once (the
    read then says why).

    Args:
        path: the input file.
        settle: the minimum age in seconds; 0 or less returns at once.
        cancel: stops the wait (raising :class:`~e2compress.errors.Interrupted`).
        limit: the longest wait in seconds (default ``SETTLE_WAIT`` times ``settle``).
        on_wait: called once, with the file's age in seconds, when it is waited for.
        poll: seconds between looks at the file.

    Raises:
        InputError: the file was still changing after ``limit`` seconds.
        Interrupted: ``cancel`` was set.
    """
    if settle <= 0:
        return
    limit = SETTLE_WAIT * settle if limit is None else limit
    sig = _signature(path)
    start = since = time.monotonic()
    told = False
    while sig is not None:
        age = time.time() - sig[1] / 1e9
        now = time.monotonic()
        if age >= settle or now - since >= settle:
            return
        if now - start >= limit:
            raise InputError(
                f"still being written: modified {max(age, 0.0):.1f} s ago, still changing "
                f"after {now - start:.0f} s of waiting (settle time {settle:g} s); "
                "not compressed, give it again once it is complete",
                path,
            )
        if not told and on_wait is not None:
            on_wait(max(age, 0.0))
            told = True
        cancel.check()
        time.sleep(min(poll, settle))
        cancel.check()
        new = _signature(path)
        if new != sig:
            sig, since = new, time.monotonic()


def precheck(job: Job, cancel: Cancel | None = None) -> FileResult | None:
    """The result of a job that need not run (a conflict, a skip, a stopped batch)."""
    if job.problem:
        return _result(job, "failed", job.problem, bytes_in=job.size)
    if job.skip:
        return _result(job, "skipped", job.skip, bytes_in=job.size)
    if cancel is not None and cancel.is_set():
        return _result(job, "unstarted", f"{job.given}: not started", bytes_in=job.size)
    return None


def run_job(
    job: Job,
    *,
    pool: Executor | None = None,
    threads: int | None = None,
    cancel: Cancel | None = None,
    on_tick: TickFn | None = None,
    worker: str = "local",
) -> FileResult:
    """Compress one file; never raises for a problem with the file.

    Args:
        job: the file's work.
        pool: the chunk pool (shared between files); default a pool of ``threads``.
        threads: chunk threads when no ``pool`` is given.
        cancel: stops the work at the next block; the result is then ``stopped``.
        on_tick: called with a :class:`Tick` at the start and after every block.
        worker: names who ran the job in the result.
    """
    cancel = cancel or Cancel()
    quick = precheck(job, cancel)
    if quick is not None:
        return quick
    t0 = time.perf_counter()
    try:
        if job.settle > 0:

            def waiting(age: float) -> None:
                if on_tick is not None:
                    on_tick(Tick(job.given, job.target, 0, 0, worker, job.size, waiting=age))

            wait_settled(job.source, job.settle, cancel, on_wait=waiting)
        if job.skip_existing and output_is_complete(job.source, job.target, job.options):
            return _result(
                job,
                "skipped",
                f"Skipping {job.given}: {job.target} is complete",
                bytes_in=job.size,
                bytes_out=file_size(Path(job.target)),
                seconds=time.perf_counter() - t0,
                worker=worker,
            )
        if job.make_dirs:
            try:
                Path(job.target).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise E2CompressError(
                    f"cannot create the output directory {Path(job.target).parent}: "
                    f"{exc.strerror or exc}",
                    job.given,
                ) from None
        progress = None
        if on_tick is not None:
            on_tick(Tick(job.given, job.target, 0, 0, worker, job.size))

            def progress(done: int, total: int) -> None:
                on_tick(Tick(job.given, job.target, done, total, worker, job.size))

        report = compress_file(
            job.source,
            job.target,
            options=job.options,
            verify=job.verify,
            force=job.force,
            pool=pool,
            threads=None if pool is not None else threads,
            cancel=cancel,
            progress=progress,
        )
    except Interrupted:
        return _result(
            job,
            "stopped",
            f"{job.given}: interrupted; output not written, input unchanged",
            bytes_in=job.size,
            seconds=time.perf_counter() - t0,
            worker=worker,
        )
    except E2CompressError as exc:
        message = str(exc) if exc.path else f"{job.given}: {exc}"
        return _result(
            job,
            "failed",
            message,
            bytes_in=job.size,
            seconds=time.perf_counter() - t0,
            worker=worker,
        )
    except Exception as exc:  # a bug, reported without a traceback
        first = f"{job.given}: unexpected error: {type(exc).__name__}: {exc}".splitlines()[0]
        return _result(
            job, "failed", first, bytes_in=job.size, seconds=time.perf_counter() - t0, worker=worker
        )
    return from_report(job, report, worker)


class Runner(Protocol):
    """What runs a batch's jobs (for :func:`~e2compress.drive.drive`): :class:`LocalRunner`
    or :class:`~e2compress.cluster.DaskRunner`."""

    def run(
        self, jobs: Iterable[Job | None], cancel: Cancel, on_tick: TickFn | None = None
    ) -> Iterator[FileResult]:
        """Each job's result as it finishes. A ``None`` in ``jobs`` hands back the results
        finished so far; once ``cancel`` is set, the jobs not started come back
        ``unstarted``. ``on_tick`` receives progress ticks from running files."""
        ...


class LocalRunner:
    """Runs jobs in this process: a few files at once sharing one pool of chunk threads.

    Args:
        threads: chunk threads (default: all cores).
        files_at_once: files in progress at once (default 2 when there are threads to
            spare, else 1).
    """

    def __init__(self, threads: int | None = None, files_at_once: int | None = None) -> None:
        self.threads = threads
        width = threads or os.cpu_count() or 1
        self.files_at_once = files_at_once or (2 if width > 1 else 1)

    def run(
        self, jobs: Iterable[Job | None], cancel: Cancel, on_tick: TickFn | None = None
    ) -> Iterator[FileResult]:
        """Results in the order the files finish, with at most ``2 * files_at_once`` jobs
        queued (memory does not grow with the number of jobs). A ``None`` in ``jobs``
        (a source with nothing new, such as a watched directory) hands back the results
        finished so far. Once ``cancel`` is set, running files stop at their next block
        and the rest come back ``unstarted``."""
        pool = make_pool(self.threads)
        files = ThreadPoolExecutor(max_workers=self.files_at_once, thread_name_prefix="e2c-file")
        pending: set[Future[FileResult]] = set()
        planned = 0  # input bytes handed out: the compiled kernels pay from 2 GB on

        def drain(keep: int, timeout: float = 0.25) -> Iterator[FileResult]:
            nonlocal pending
            while len(pending) > keep:
                # wake now and then so a signal handler in the main thread can run
                done, pending = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
                if timeout == 0:
                    return

        try:
            for job in jobs:
                if job is None:
                    yield from drain(0, timeout=0)
                    continue
                quick = precheck(job, cancel)
                if quick is not None:
                    yield quick
                    continue
                planned += job.size
                kernels.prepare(planned)
                pending.add(files.submit(run_job, job, pool=pool, cancel=cancel, on_tick=on_tick))
                yield from drain(2 * self.files_at_once - 1)
            yield from drain(0)
        finally:  # a caller that stops early waits for the files already running
            files.shutdown(wait=True, cancel_futures=True)
            pool.shutdown(wait=True, cancel_futures=True)
