"""The batch report (``--report out.csv`` or ``.json``) and the totals printed at the end.

Rows are written as files finish (memory does not grow with the batch), into a locked
temporary file that replaces the report only when it is closed.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .atomic import AtomicOutput, check_output_dir
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
)
FORMATS = (".csv", ".json")


def row(r: FileResult) -> dict[str, Any]:
    """One report row (None where a value does not apply)."""
    done = r.status == "done"
    return {
        "source": r.given,
        "output": r.target,
        "status": r.status,
        "bytes_in": r.bytes_in,
        "bytes_out": r.bytes_out if done else None,
        "ratio": round(r.ratio, 4) if done else None,
        "bits": r.bits if done else None,
        "rmin": r.rmin if done else None,
        "rmax": r.rmax if done else None,
        "truncated": r.truncated if done else None,
        "restorable": _restorable(r),
        "seconds": round(r.seconds, 3),
        "worker": r.worker or None,
        "message": r.message or None,
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


class ReportWriter:
    """Writes report rows as files finish; :meth:`close` adds the totals (JSON) and puts
    the report in place. Use as a context manager: on an exception nothing replaces an
    existing report.

    Args:
        path: ``*.csv`` (one row per file, header first) or ``*.json`` (``{"files":
            [...], "totals": {...}}``).

    Raises:
        E2CompressError: another format, or the report cannot be written there.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.kind = self.path.suffix.lower()
        if self.kind not in FORMATS:
            raise E2CompressError("the report must be a .csv or a .json file", self.path)
        check_output_dir(self.path)
        self._out = AtomicOutput(self.path).__enter__()
        self._fh: IO[str] = open(self._out.path, "w", encoding="utf-8", newline="")  # noqa: SIM115
        self._rows = 0
        self._csv: Any = None
        if self.kind == ".csv":
            self._csv = csv.DictWriter(self._fh, fieldnames=FIELDS)
            self._csv.writeheader()
        else:
            self._fh.write('{"files": [')

    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    def add(self, r: FileResult) -> None:
        """Write one file's row."""
        values = row(r)
        if self._csv is not None:
            self._csv.writerow({k: "" if v is None else v for k, v in values.items()})
        else:
            sep = "," if self._rows else ""
            clean = {k: _json_value(v) for k, v in values.items()}
            self._fh.write(f"{sep}\n  {json.dumps(clean, allow_nan=False)}")
        self._rows += 1
        self._fh.flush()

    def close(self, totals: Totals) -> None:
        """Finish the report (JSON: with ``totals``) and rename it into place.

        Raises:
            E2CompressError: the report could not be written.
        """
        try:
            if self._csv is None:
                body = json.dumps(totals.as_dict(), allow_nan=False)
                self._fh.write(f'\n],\n"totals": {body}}}\n')
            self._fh.close()
            self._out.commit()
        except OSError as exc:
            raise E2CompressError(
                f"cannot write the report: {exc.strerror or exc}", self.path
            ) from None
        finally:
            self.discard()

    def discard(self) -> None:
        """Drop the temporary file unless :meth:`close` put it in place."""
        if not self._fh.closed:
            self._fh.close()
        self._out.__exit__(None, None, None)
