"""Batch progress on stderr: tqdm bars on a terminal, plain log lines otherwise.

On a terminal: one bar over files and bytes with throughput and ETA, and one bar per big
file being written. Not on a terminal: at ``-v 1`` and above, one line every
``interval`` seconds (``-v 0`` stays quiet, as in EMAN2). Events may come from any
thread (file threads, the Dask client's event loop).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from tqdm import tqdm

from .runner import FileResult, Job, Tick

BIG_FILE_BYTES = 100_000_000  # files at least this big get a bar of their own
LOG_SECONDS = 30.0


def human_size(n: float) -> str:
    """``1234567`` -> ``1.2 MB`` (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # unreachable


def _duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
    """Progress of a batch of ``files`` inputs holding ``nbytes`` bytes.

    Args:
        files, nbytes: the batch's size (both may grow with :meth:`grow`).
        stream: where to draw (default stderr).
        bar: draw bars (default: when ``stream`` is a terminal).
        verbose: EMAN2's level; log lines need at least 1.
        interval: seconds between log lines.
        big: files of at least this many bytes get a bar of their own.
        clock: a monotonic clock (tests pass their own).
    """

    def __init__(
        self,
        files: int,
        nbytes: int,
        *,
        stream: TextIO | None = None,
        bar: bool | None = None,
        verbose: int = 0,
        interval: float = LOG_SECONDS,
        big: int = BIG_FILE_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream or sys.stderr
        self.files = files
        self.nbytes = nbytes
        self.finished = 0
        self.credited = 0  # bytes counted as done, partial files included
        self.verbose = verbose
        self.interval = interval
        self.big = big
        self.clock = clock
        self.start = clock()
        self.last_log = self.start
        self._lock = threading.RLock()
        self._partial: dict[str, int] = {}  # given -> bytes credited so far
        self._bars: dict[str, Any] = {}
        isatty = getattr(self.stream, "isatty", lambda: False)()
        self.bar: Any = None
        if bar if bar is not None else isatty:
            self.bar = tqdm(
                total=nbytes,
                unit="B",
                unit_scale=True,
                unit_divisor=1000,
                file=self.stream,
                dynamic_ncols=True,
                desc=self._desc(),
                smoothing=0.05,
            )

    def _desc(self) -> str:
        return f"{self.finished}/{self.files} files"

    def grow(self, files: int, nbytes: int) -> None:
        """More inputs were found (watch mode)."""
        with self._lock:
            self.files += files
            self.nbytes += nbytes
            if self.bar is not None:
                self.bar.total = self.nbytes
                self.bar.set_description_str(self._desc(), refresh=True)

    def _credit(self, given: str, upto: int) -> None:
        delta = upto - self._partial.get(given, 0)
        if delta:
            self._partial[given] = upto
            self.credited += delta
            if self.bar is not None:
                self.bar.update(delta)

    def tick(self, t: Tick) -> None:
        """One file's progress (see :class:`~e2compress.runner.Tick`)."""
        with self._lock:
            if t.total:
                self._credit(t.given, min(t.size, t.size * t.done // t.total))
            if self.bar is not None and t.size >= self.big and t.total:
                sub = self._bars.get(t.given)
                if sub is None:
                    name = t.given if len(t.given) <= 40 else "..." + t.given[-37:]
                    sub = tqdm(
                        total=t.total,
                        unit="px",
                        unit_scale=True,
                        file=self.stream,
                        leave=False,
                        desc=name,
                        dynamic_ncols=True,
                    )
                    self._bars[t.given] = sub
                sub.update(t.done - sub.n)
            self._maybe_log()

    def counting(self, jobs: Iterable[Job | None]) -> Iterator[Job | None]:
        """``jobs``, adding each to the batch's size as it is handed out (watch mode,
        where the files are not known in advance)."""
        for job in jobs:
            if job is not None:
                self.grow(1, job.size)
            yield job

    def done(self, r: FileResult) -> None:
        """One file finished (any status); a file stopped or never started is not
        counted as work done."""
        with self._lock:
            self.finished += 1
            if r.status in ("stopped", "unstarted"):
                self._credit(r.given, 0)
            else:
                self._credit(r.given, max(r.bytes_in, self._partial.get(r.given, 0)))
            self._partial.pop(r.given, None)
            sub = self._bars.pop(r.given, None)
            if sub is not None:
                sub.close()
            if self.bar is not None:
                self.bar.set_description_str(self._desc(), refresh=True)
            self._maybe_log()

    def _maybe_log(self) -> None:
        if self.bar is not None or self.verbose < 1:
            return
        now = self.clock()
        if now - self.last_log >= self.interval:
            self.last_log = now
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def line(self) -> str:
        """``progress: 3/10 files, 1.2 GB/4.0 GB (30%), 250.0 MB/s, ETA 0:00:11``."""
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = self.credited / elapsed
        pct = 100.0 * self.credited / self.nbytes if self.nbytes else 100.0
        left = max(self.nbytes - self.credited, 0)
        eta = _duration(left / rate) if rate > 0 else "?"
        return (
            f"progress: {self.finished}/{self.files} files, {human_size(self.credited)}/"
            f"{human_size(self.nbytes)} ({pct:.0f}%), {rate / 1e6:.1f} MB/s, ETA {eta}"
        )

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Around a line written to stdout or stderr: the bars step aside and come back."""
        if self.bar is None:
            yield
            return
        with tqdm.external_write_mode(file=self.stream):
            yield

    def close(self) -> None:
        """Remove the bars (the totals line says the rest)."""
        with self._lock:
            for sub in self._bars.values():
                sub.close()
            self._bars.clear()
            if self.bar is not None:
                self.bar.close()
                self.bar = None
