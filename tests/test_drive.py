"""The batch driver with a runner of the test's own: what it counts, tells the printer,
reports, and when it deletes (the real runners are tested in test_runner/test_cluster)."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from e2compress.batch import Item
from e2compress.batchreport import ReportWriter, read_report
from e2compress.deletion import Deletion, Manifest
from e2compress.drive import Settings, drive
from e2compress.executor import Cancel
from e2compress.progress import Progress
from e2compress.runner import FileResult, Job, Tick, TickFn, precheck


class Runner:
    """Runs nothing: each job is done (or failed/skipped as its item says), even after
    a cancel (as files already being written finish); ``None``s are counted; the cancel
    token is set after ``stop_after`` results."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.nones = 0
        self.jobs: list[Job] = []
        self.stop_after = stop_after

    def run(
        self, jobs: Iterable[Job | None], cancel: Cancel, on_tick: TickFn | None = None
    ) -> Iterator[FileResult]:
        for k, job in enumerate(j for j in jobs if j is not None or self._none()):
            assert job is not None
            self.jobs.append(job)
            quick = precheck(job)
            if quick is None:
                if on_tick is not None:
                    on_tick(Tick(job.given, job.target, 0, 0, size=10))
                quick = FileResult(job.given, job.source, job.target, "done", bytes_in=10)
                quick.bytes_out, quick.verified = 5, True
            yield quick
            if self.stop_after is not None and k + 1 >= self.stop_after:
                cancel.set(15)

    def _none(self) -> bool:
        self.nones += 1
        return False


class Printer:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def tick(self, t: Tick) -> None:
        self.events.append(("tick", t.given))

    def result(self, r: FileResult) -> None:
        self.events.append((r.status, r.given))

    def deletion(self, d: Deletion) -> None:
        self.events.append(("deletion", d.source))


def items(tmp_path: Path) -> list[Item]:
    a, b, c = (tmp_path / n for n in ("a.mrc", "b.mrc", "c.mrc"))
    return [
        Item(str(a), a, tmp_path / "a.hdf"),
        Item(str(b), b, tmp_path / "b.hdf", problem=f"{b}: broken"),
        Item(str(c), c, tmp_path / "c.hdf", skip=f"{c}: given twice"),
    ]


def test_counts_printer_report_and_hook(tmp_path: Path) -> None:
    printer, seen = Printer(), []
    report = ReportWriter(tmp_path / "r.json")
    out = drive(
        items(tmp_path),
        Settings(force=True, settle=2.0),
        Runner(),
        Cancel(),
        printer=printer,
        report=report,
        finished=lambda r: seen.append(r.given),
    )
    a, b, c = (str(tmp_path / n) for n in ("a.mrc", "b.mrc", "c.mrc"))
    assert out.counts == {"done": 1, "failed": 1, "skipped": 1, "stopped": 0, "unstarted": 0}
    assert out.summary() == "1 compressed, 1 failed, 1 skipped"
    assert (out.totals.bytes_in, out.totals.bytes_out) == (10, 5)
    assert printer.events == [("tick", a), ("done", a), ("failed", b), ("skipped", c)]
    assert seen == [a, b, c]  # the hook hears every result
    rows, totals = read_report(tmp_path / "r.json")
    assert [(r["source"], r["status"]) for r in rows] == [
        (a, "done"),
        (b, "failed"),
        (c, "skipped"),
    ]
    assert [t["compressed"] for t in totals] == [1]


def test_settings_reach_every_job(tmp_path: Path) -> None:
    runner = Runner()
    drive(items(tmp_path)[:1], Settings(force=True, settle=2.0), runner, Cancel())
    (job,) = runner.jobs
    assert (job.force, job.settle, job.verify, job.skip_existing) == (True, 2.0, None, False)


def test_a_live_stream_is_counted_as_it_comes(tmp_path: Path) -> None:
    runner = Runner()
    progress = Progress(0, 0, stream=io.StringIO(), bar=False)
    stream: list[Item | None] = [None, items(tmp_path)[0], None, None]
    out = drive(stream, Settings(), runner, Cancel(), progress=progress, live=True)
    assert (out.counts["done"], runner.nones, progress.files, progress.finished) == (1, 3, 1, 1)


def test_deletes_only_done_files_and_nothing_after_cancel(tmp_path: Path) -> None:
    printer = Printer()
    with Manifest(tmp_path / "m.jsonl") as manifest:
        out = drive(
            items(tmp_path)[:1] * 2,
            Settings(verify=True),
            Runner(stop_after=1),
            Cancel(),
            printer=printer,
            manifest=manifest,
        )
    a = str(tmp_path / "a.mrc")
    # a.mrc does not exist: kept (and said); once the run is cancelled, nothing is deleted
    assert printer.events == [("tick", a), ("done", a), ("deletion", a), ("tick", a), ("done", a)]
    assert (out.deleted, out.kept) == (0, 1)
    assert out.summary(deleting=True).endswith("; 0 inputs deleted, 1 kept")


def test_deleting_needs_verify(tmp_path: Path) -> None:
    with Manifest(tmp_path / "m.jsonl") as manifest, pytest.raises(ValueError, match="verify"):
        drive([], Settings(), Runner(), Cancel(), manifest=manifest)
