"""The batch report (``--report out.csv`` or ``.json``) and the totals printed at the end.

A report is appended to, never replaced: a rerun or a restarted watch adds its rows
below the earlier ones. Each row is written and flushed when its file ends, so the
report can be read while the batch runs and keeps every finished file's row even if
the process is killed (``kill -9``). CSV: a header, then one row per file. JSON: JSON
Lines, one object per file and, when a run ends, one ``{"totals": {...}}`` object
(:func:`read_report` reads both).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from .atomic import check_output_dir
from .errors import E2CompressError
from .kept import restorable
from .progress import human_size
from .runner import STATUSES, FileResult

FIELDS = (
    "source",
    "output",
    "status",
    "bytes_in",
    "bytes_out",
    "ratio",
    "bits",
    "rmin",
    "rmax",
    "truncated",
    "restorable",
    "seconds",
    "worker",
    "message",
    "finished",
)
FORMATS = (".csv", ".json", ".jsonl")


def row(r: FileResult, finished: datetime | None = None) -> dict[str, Any]:
    """One report row (None where a value does not apply); ``finished``: when the file
    ended (default now), as UTC ISO 8601."""
    done = r.status == "done"
    when = finished or datetime.now(timezone.utc)
    return {
        "source": r.given,
        "output": r.target,
        "status": r.status,
        "bytes_in": r.bytes_in,
        "bytes_out": r.bytes_out if done or r.bytes_out else None,
        "ratio": round(r.ratio, 4) if done else None,
        "bits": r.bits if done else None,
        "rmin": r.rmin if done else None,
        "rmax": r.rmax if done else None,
        "truncated": r.truncated if done else None,
        "restorable": _restorable(r),
        "seconds": round(r.seconds, 3),
        "worker": r.worker or None,
        "message": r.message or None,
        "finished": when.isoformat(timespec="seconds"),
    }


def _restorable(r: FileResult) -> str | None:
    """Whether the output rebuilds its source byte for byte (``e2compress restore``):
    "yes", "no" (headers identical, values quantised) or None (it keeps no source bytes,
    or there is no output)."""
    if r.status not in ("done", "skipped") or not r.target:
        return None
    answer = restorable(r.target)
    return None if answer is None else "yes" if answer else "no"


@dataclass
class Totals:
    """Counts by status and bytes of the compressed files; ``seconds`` is the wall time."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0

    def add(self, r: FileResult) -> None:
        """Count one file."""
        self.counts[r.status] = self.counts.get(r.status, 0) + 1
        if r.status == "done":
            self.bytes_in += r.bytes_in
            self.bytes_out += r.bytes_out

    @property
    def saved(self) -> int:
        """Bytes saved over the compressed files."""
        return self.bytes_in - self.bytes_out

    @property
    def ratio(self) -> float:
        """Input bytes over output bytes of the compressed files."""
        return self.bytes_in / self.bytes_out if self.bytes_out else 0.0

    @property
    def throughput(self) -> float:
        """Input bytes compressed per second of wall time."""
        return self.bytes_in / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The totals as a JSON-ready mapping."""
        return {
            "files": sum(self.counts.values()),
            **{("compressed" if k == "done" else k): v for k, v in self.counts.items()},
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "bytes_saved": self.saved,
            "ratio": round(self.ratio, 4),
            "seconds": round(self.seconds, 3),
            "throughput_mb_s": round(self.throughput / 1e6, 3),
        }

    def line(self) -> str:
        """One line: bytes in and out, saved, overall ratio, throughput, failures."""
        failed = self.counts.get("failed", 0)
        return (
            f"total: {human_size(self.bytes_in)} -> {human_size(self.bytes_out)}, "
            f"{human_size(self.saved)} saved ({self.ratio:.2f}x), {self.seconds:.1f} s, "
            f"{self.throughput / 1e6:.1f} MB/s, {failed} failed"
        )


def _json_value(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _header_line() -> str:
    buf = io.StringIO()
    csv.writer(buf).writerow(FIELDS)
    return buf.getvalue()


class ReportWriter:
    """Appends report rows as files finish, each flushed at once; :meth:`close` adds the
    run's totals (JSON). Use as a context manager.

    Args:
        path: ``*.csv`` (a header when the file is new, then one row per file) or
            ``*.json``/``*.jsonl`` (JSON Lines: one object per file, then
            ``{"totals": {...}}``). An existing report is appended to.

    Raises:
        E2CompressError: another format, the report cannot be written there, or an
            existing CSV report has other columns.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.kind = ".csv" if self.path.suffix.lower() == ".csv" else ".json"
        if self.path.suffix.lower() not in FORMATS:
            raise E2CompressError("the report must be a .csv or a .json file", self.path)
        check_output_dir(self.path)
        try:
            self._fh: IO[str] = open(  # noqa: SIM115 (closed by close())
                self.path, "a+", encoding="utf-8", errors="surrogateescape", newline=""
            )
            self._start()
        except OSError as exc:
            raise E2CompressError(
                f"cannot write the report: {exc.strerror or exc}", self.path
            ) from None
        self._csv: Any = None
        if self.kind == ".csv":
            self._csv = csv.DictWriter(self._fh, fieldnames=FIELDS)

    def _start(self) -> None:
        """Check an existing report and end its last line (a row cut by a kill);
        write the CSV header into a new one."""
        fh = self._fh
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            if self.kind == ".csv":
                fh.write(_header_line())
                fh.flush()
            return
        fh.seek(0)
        first = fh.readline()
        if self.kind == ".csv" and first != _header_line():
            fh.close()
            raise E2CompressError(
                "the report exists with other columns; give a new report file", self.path
            )
        if self.kind == ".json" and not _json_object(first):
            fh.close()
            raise E2CompressError(
                "the report exists and is not JSON Lines (one object a line); give a new "
                "report file",
                self.path,
            )
        with open(self.path, "rb") as raw:
            raw.seek(-1, os.SEEK_END)
            cut = raw.read(1) != b"\n"
        fh.seek(0, os.SEEK_END)
        if cut:
            fh.write("\n")
            fh.flush()

    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    def _write(self, text: str) -> None:
        try:
            self._fh.write(text)
            self._fh.flush()
        except OSError as exc:
            raise E2CompressError(
                f"cannot write the report: {exc.strerror or exc}", self.path
            ) from None

    def add(self, r: FileResult) -> None:
        """Append one file's row and flush it.

        Raises:
            E2CompressError: the row could not be written.
        """
        values = row(r)
        if self._csv is not None:
            buf = io.StringIO()
            csv.DictWriter(buf, fieldnames=FIELDS).writerow(
                {k: "" if v is None else v for k, v in values.items()}
            )
            self._write(buf.getvalue())
        else:
            clean = {k: _json_value(v) for k, v in values.items()}
            self._write(json.dumps(clean, allow_nan=False) + "\n")

    def close(self, totals: Totals) -> None:
        """End the run's part of the report (JSON: with a ``totals`` line) and close it.

        Raises:
            E2CompressError: the report could not be written.
        """
        try:
            if self._csv is None:
                self._write(json.dumps({"totals": totals.as_dict()}, allow_nan=False) + "\n")
        finally:
            self.discard()

    def discard(self) -> None:
        """Close the report (the rows written so far stay)."""
        if not self._fh.closed:
            self._fh.close()


def read_report(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of a report and the totals of each run that ended (JSON only), oldest
    first. CSV values are text ('' where none applies), JSON values typed; a JSON line
    cut short (the process was killed while writing it) is left out.

    Raises:
        E2CompressError: the file cannot be read or is not a report.
    """
    p = Path(path)
    rows: list[dict[str, Any]] = []
    totals: list[dict[str, Any]] = []
    try:
        with open(p, encoding="utf-8", errors="surrogateescape", newline="") as fh:
            if p.suffix.lower() == ".csv":
                return list(csv.DictReader(fh)), totals
            for line in fh:
                try:
                    obj = json.loads(line)
                except ValueError:  # blank, or a row cut short by a kill
                    continue
                if isinstance(obj, dict) and set(obj) == {"totals"}:
                    totals.append(obj["totals"])
                else:
                    rows.append(obj)
    except (OSError, ValueError) as exc:
        raise E2CompressError(f"cannot read the report: {exc}", p) from None
    return rows, totals
