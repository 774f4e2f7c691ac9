"""The command line's console: whole lines on stdout/stderr, the lines for each file of a
batch, signal handling and the ``--ppid`` watch."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import replace
from types import FrameType
from typing import Any, TextIO

from .cli_args import WORDS
from .commands import flagged
from .deletion import Deletion
from .executor import Cancel
from .runner import FileResult, Tick

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Console:
    """Whole lines: each a single write of ``line + "\n"`` under one lock (shared by stdout
    and stderr), flushed at once, so lines of files running at once never mix."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed: set[int] = set()  # streams whose reader went away (``| head``)
        self.around: Callable[[], AbstractContextManager[None]] = nullcontext  # progress bars

    def out(self, text: str) -> None:
        """One line on stdout."""
        self._write(sys.stdout, text)

    def err(self, text: str) -> None:
        """One line on stderr."""
        self._write(sys.stderr, text)

    def _write(self, stream: TextIO, text: str) -> None:
        line = " ".join(text.splitlines()) + "\n"
        with self._lock, self.around():
            if id(stream) in self._closed:
                return
            try:
                stream.write(line)
                stream.flush()
            except BrokenPipeError:  # the work goes on; the exit status still tells
                self._closed.add(id(stream))


class Stop:
    """Why a run stops early: a signal, or the ``--ppid`` process exiting.

    Args:
        cancel: the run's token (set by the signal handlers and the parent watch).
        ppid: the process to outlive (None or <= 0: none).
    """

    def __init__(self, cancel: Cancel, ppid: int | None = None) -> None:
        self.cancel = cancel
        self.ppid = ppid if ppid is not None and ppid > 0 else None
        self.is_parent = self.ppid is not None and os.getppid() == self.ppid
        self.parent_gone = threading.Event()

    def cause(self) -> str:
        """Why the run stopped early (the token is set)."""
        if self.parent_gone.is_set():
            return f"stopped because the --ppid process {self.ppid} exited"
        return f"interrupted by {signal.Signals(self.cancel.signum or signal.SIGTERM).name}"

    def status(self) -> int:
        """The exit status of a stopped run (128 + the signal)."""
        return 128 + (self.cancel.signum or signal.SIGTERM)

    def check_parent(self) -> None:
        """Stop now (as SIGTERM would) if the ``ppid`` process has already exited."""
        if self.ppid is not None and not _parent_alive(self.ppid, self.is_parent):
            self.parent_gone.set()
            self.cancel.set(signal.SIGTERM)

    @contextmanager
    def watching_parent(self, every: float = 0.5) -> Iterator[None]:
        """While inside, check every ``every`` seconds whether the ``ppid`` process lives."""
        if self.ppid is None:
            yield
            return
        done = threading.Event()

        def watch() -> None:
            while not done.wait(every):
                if self.ppid is not None and not _parent_alive(self.ppid, self.is_parent):
                    self.parent_gone.set()
                    self.cancel.set(signal.SIGTERM)
                    return

        threading.Thread(target=watch, name="ppid-watch", daemon=True).start()
        try:
            yield
        finally:
            done.set()


def _parent_alive(ppid: int, is_parent: bool) -> bool:
    """Whether process ``ppid`` still runs (``is_parent``: it was our parent at start, so
    being reparented also means it died, even while it is an unreaped zombie)."""
    if is_parent and os.getppid() != ppid:
        return False
    try:
        os.kill(ppid, 0)
    except PermissionError:  # it exists, owned by another user
        return True
    except (ProcessLookupError, OverflowError):
        return False
    return True


class LinePrinter:
    """The lines of each file of a batch (a :class:`~e2compress.drive.Printer`): ERROR
    and WARNING lines on stderr; with ``verbose``, Processing/Skipping/Waiting lines,
    and at 2 one timing line per file, on stdout.

    Args:
        console: where the lines go.
        verbose: EMAN2's ``-v`` level.
        stop: names the cause in the line of a file that was stopped.
        settle: the ``--settle`` time named in the Waiting lines.
    """

    def __init__(self, console: Console, verbose: int, stop: Stop, settle: float = 0.0) -> None:
        self.console = console
        self.verbose = verbose
        self.stop = stop
        self.settle = settle

    def tick(self, t: Tick) -> None:
        """A file is waited for, or starts."""
        if t.waiting is not None and self.verbose:
            self.console.out(
                f"Waiting for {t.given}: modified {t.waiting:.1f} s ago, it may still be "
                f"being written (--settle {self.settle:g})"
            )
        elif t.done == t.total == 0 and self.verbose:
            self.console.out(f"Processing {t.given} -> {t.target}")

    def result(self, r: FileResult) -> None:
        """The lines for one finished file."""
        console, verbose = self.console, self.verbose
        r = replace(
            r,
            message=flagged(r.message, WORDS),
            warnings=[flagged(w, WORDS) for w in r.warnings],
            note=flagged(r.note, WORDS),
        )
        for line in dict.fromkeys(r.warnings):
            console.err(f"WARNING: {line}")
        if r.status == "failed":
            console.err(f"ERROR: {r.message}")
        elif r.status == "stopped":
            cause = self.stop.cause()
            console.err("ERROR: " + r.message.replace(": interrupted;", f": {cause};", 1))
        elif r.status == "skipped":
            if r.message.startswith("Skipping "):
                if verbose:
                    console.out(r.message)
            else:
                console.err(f"WARNING: {r.message}")
        elif r.status == "done" and verbose:
            for line in r.note.splitlines():
                console.out(line)
            if verbose < 2:
                return
            console.out(
                f"{r.seconds:0.1f} s  {r.given}: {r.bytes_in / 1e6:.1f} MB -> "
                f"{r.bytes_out / 1e6:.1f} MB  ({r.ratio:.2f}x)"
                + (f"  {r.truncated} pixels clamped" if r.truncated else "")
            )

    def deletion(self, d: Deletion) -> None:
        """What ``--delete-input`` did with a compressed file's source."""
        if not d.deleted:
            self.console.err(f"WARNING: {d.message}")
        elif self.verbose:
            self.console.out(d.message)


def install_signals(cancel: Cancel) -> dict[int, Any]:
    """Make SIGINT/SIGTERM/SIGHUP set ``cancel``; returns the handlers to restore.

    The handler only sets the token (it raises nothing into whatever the main thread
    is doing): the workers stop at their next block and remove their temporary files.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        cancel.set(signum)

    previous: dict[int, Any] = {}
    for s in SIGNALS:
        previous[s] = signal.signal(s, handler)
    return previous


def restore_signals(previous: dict[int, Any]) -> None:
    """Put back the handlers :func:`install_signals` replaced."""
    for s, h in previous.items():
        signal.signal(s, h)
