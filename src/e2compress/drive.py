"""One driver for every batch: a finite list of inputs (``e2compress FILES``) or a live
stream of them (watch mode).

:func:`drive` makes a :class:`~e2compress.runner.Job` of each input, runs them with a
runner (local threads or a Dask cluster), and for each result tells the printer, the
progress display and the report, and deletes the source when asked; it returns the
counts. What the items are, how they are found and how the lines look are the caller's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from .batch import Item
from .batchreport import ReportWriter, Totals
from .deletion import Deletion, Manifest, delete_source
from .executor import Cancel
from .options import Options
from .progress import Progress
from .runner import STATUSES, FileResult, Job, Runner, Tick, make_jobs


class Printer(Protocol):
    """What the driver tells about each file (the command line prints lines)."""

    def tick(self, t: Tick) -> None:
        """A file starts (``done == total == 0``), is waited for (``waiting``) or
        progresses; called from any thread."""

    def result(self, r: FileResult) -> None:
        """A file finished (any status)."""

    def deletion(self, d: Deletion) -> None:
        """What deleting a compressed file's source did."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    """How each input is compressed (see :class:`~e2compress.runner.Job`).

    Attributes:
        options: what to store.
        verify: as :func:`~e2compress.pipeline.compress_file`'s ``verify``.
        skip_existing: skip an input whose output is already complete.
        force: as :func:`~e2compress.pipeline.compress_file`'s ``force``.
        settle: seconds an input must have stayed unchanged before it is read.
    """

    options: Options = field(default_factory=Options)
    verify: bool | None = None
    skip_existing: bool = False
    force: bool = False
    settle: float = 0.0

    def jobs(self, items: Iterable[Item | None]) -> Iterator[Job | None]:
        """A job per item, streamed; a ``None`` (nothing new yet) is passed on."""
        for item in items:
            if item is None:
                yield None
                continue
            yield from make_jobs(
                [item],
                self.options,
                verify=self.verify,
                skip_existing=self.skip_existing,
                force=self.force,
                settle=self.settle,
            )


@dataclass
class Outcome:
    """What a batch did: files by status, the totals, and sources deleted or kept."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    totals: Totals = field(default_factory=Totals)
    deleted: int = 0
    kept: int = 0

    def summary(self, deleting: bool = False) -> str:
        """``N compressed, M failed, K skipped`` (and, when ``deleting``, the sources
        deleted and kept)."""
        c = self.counts
        text = f"{c['done']} compressed, {c['failed']} failed, {c['skipped']} skipped"
        if deleting:
            text += f"; {self.deleted} inputs deleted, {self.kept} kept"
        return text


def drive(
    items: Iterable[Item | None],
    settings: Settings,
    runner: Runner,
    cancel: Cancel,
    *,
    printer: Printer | None = None,
    progress: Progress | None = None,
    live: bool = False,
    report: ReportWriter | None = None,
    manifest: Manifest | None = None,
    finished: Callable[[FileResult], None] | None = None,
) -> Outcome:
    """Compress every item with ``runner`` until the items end or ``cancel`` is set.

    Args:
        items: the inputs; a ``None`` says nothing is new for now (a live stream hands
            back the results finished so far through it).
        settings: how each input is compressed.
        runner: runs the jobs (:class:`~e2compress.runner.LocalRunner`,
            :class:`~e2compress.cluster.DaskRunner`).
        cancel: stops the batch: running files stop at their next block, the rest come
            back unstarted, and no source is deleted after it is set.
        printer: told of each file's start, result and deletion.
        progress: updated with every tick and result, and closed at the end.
        live: ``items`` is a live stream: each is added to ``progress`` as it comes.
        report: gets a row per result, and is closed with the totals at the end.
        manifest: delete each compressed source (see
            :func:`~e2compress.deletion.delete_source`), recording it here first.
        finished: called with each result first (a watcher records it).

    Raises:
        ValueError: ``manifest`` is given without ``settings.verify`` True (a source is
            deleted only once its output was verified against it).
    """
    if manifest is not None and settings.verify is not True:
        raise ValueError("deleting sources (manifest) needs settings.verify=True")
    outcome = Outcome()

    def on_tick(t: Tick) -> None:
        if printer is not None:
            printer.tick(t)
        if progress is not None:
            progress.tick(t)

    jobs = settings.jobs(items)
    if live and progress is not None:
        jobs = progress.counting(jobs)
    t0 = time.perf_counter()
    try:
        for r in runner.run(jobs, cancel, on_tick):
            if finished is not None:
                finished(r)
            outcome.counts[r.status] += 1
            outcome.totals.add(r)
            if progress is not None:
                progress.done(r)
            if printer is not None:
                printer.result(r)
            if manifest is not None and r.status == "done" and not cancel.is_set():
                deletion = _delete(r, manifest)
                if deletion.deleted:
                    outcome.deleted += 1
                else:
                    outcome.kept += 1
                if printer is not None:
                    printer.deletion(deletion)
            if report is not None:
                report.add(r)
    finally:
        outcome.totals.seconds = time.perf_counter() - t0
        if progress is not None:
            progress.close()
        if report is not None:
            report.close(outcome.totals)
    return outcome


def _delete(r: FileResult, manifest: Manifest) -> Deletion:
    """Delete one compressed file's source (see :mod:`e2compress.deletion`)."""
    try:
        return delete_source(r.source, r.target, manifest, verified=r.verified, bits=r.bits)
    except Exception as exc:  # a bug: the file is kept, the batch goes on
        return Deletion(r.source, False, f"{r.source}: not deleted: unexpected error: {exc!r}")
