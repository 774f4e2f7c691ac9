"""Watch mode: compress each new file in a directory tree once it is completely written.

A file is taken when its size and modification time have not changed for ``settle``
seconds and it then opens as a complete image file (the readers check every size in
its header against the file); one that changes later is taken again. File events come
from watchdog (inotify on Linux), or from its polling observer for network file systems
where inotify sees nothing; a slow full rescan catches events the kernel dropped.

A restart redoes nothing: a file seen for the first time whose output is already
complete, made from it as it is now with the same options, is skipped without writing
anything. Needs the ``watch`` extra.
"""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from .atomic import TMP_SUFFIX
from .batch import DEFAULT_PATTERNS, Item, matches, walk
from .errors import E2CompressError
from .executor import Cancel
from .options import Options
from .outputs import output_is_complete, output_path
from .readers import open_source
from .runner import FileResult

Signature = tuple[int, int]  # size, mtime in ns
SETTLE_SECONDS = 30.0
RESCAN_SECONDS = 600.0


def signature(path: str) -> Signature | None:
    """``(size, mtime_ns)`` of a regular file, None if it is gone or not a file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not os.path.isfile(path):
        return None
    return st.st_size, st.st_mtime_ns


def incomplete(path: str) -> str:
    """Why ``path`` does not open as a complete image file ('' when it does)."""
    try:
        with open_source(path) as source:
            for i in range(len(source)):
                source.shape(i)
    except E2CompressError as exc:
        return str(exc)
    except (OSError, ValueError) as exc:
        return f"{path}: {exc}"
    return ""


class _Events(FileSystemEventHandler):  # type: ignore[misc]
    """Puts the paths that watchdog reports into a queue (the watch loop reads it)."""

    def __init__(self, notify: Callable[[str], None]) -> None:
        self.notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory and event.event_type != "moved":
            return
        for p in (event.src_path, getattr(event, "dest_path", "")):
            if p:
                self.notify(os.fsdecode(p))


class Watcher:
    """Finds the files under ``root`` that are ready to compress.

    Args:
        root: the directory to watch (recursively).
        outpath: where outputs go, the tree mirrored (None: beside each input). Not
            watched when it lies inside ``root``.
        include, exclude: globs as for ``--recursive`` (default: image files).
        settle: seconds a file's size and mtime must stay unchanged.
        poll: use watchdog's polling observer, scanning every ``poll`` seconds (for
            network file systems); None uses the kernel's events.
        rescan: seconds between full rescans (events the kernel dropped).
        options: what is stored (an output made with other options is not done).
        clock: a monotonic clock (tests pass their own).
        sleep: waits between looks in :meth:`items` (tests pass one that moves their
            clock on).
        observe: take file events from watchdog; False: only from :meth:`notify` and
            the rescans (tests feed their own).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        outpath: str | os.PathLike[str] | None = None,
        include: tuple[str, ...] = (),
        exclude: tuple[str, ...] = (),
        settle: float = SETTLE_SECONDS,
        poll: float | None = None,
        rescan: float = RESCAN_SECONDS,
        options: Options | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        observe: bool = True,
    ) -> None:
        self.root = Path(root)
        self.outpath = None if outpath is None else Path(outpath)
        self.include = include or DEFAULT_PATTERNS
        self.exclude = exclude
        self.settle = settle
        self.poll = poll
        self.rescan = rescan
        self.options = options or Options()
        self.clock = clock
        self.sleep = sleep
        self.observe = observe
        self._real_root = os.path.realpath(self.root)
        self._pruned = os.path.realpath(self.outpath) if self.outpath is not None else None
        self._events: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._observer: Any = None
        self._pending: dict[str, tuple[Signature, float]] = {}  # path -> (seen, since)
        self._busy: dict[str, Signature] = {}  # handed out, not finished
        self._done: dict[str, Signature] = {}  # finished (any status), as it was then
        self._owner: dict[str, str] = {}  # output -> the input that writes it
        self._last_scan = -float("inf")

    # ----------------------------------------------------------------- events

    def start(self) -> None:
        """Start watching (kernel events, or polling), then scan what is already there.

        Raises:
            E2CompressError: ``root`` is not a readable directory.
        """
        if not self.root.is_dir() or not os.access(self.root, os.R_OK | os.X_OK):
            raise E2CompressError(f"cannot watch {self.root}: not a readable directory")
        if self.observe:
            self._observe()
        self._scan()

    def _observe(self) -> None:
        handler = _Events(self.notify)
        observer: Any = PollingObserver(timeout=self.poll) if self.poll else Observer()
        observer.schedule(handler, str(self.root), recursive=True)
        try:
            observer.start()
        except OSError:  # e.g. the inotify watch limit: poll instead
            observer = PollingObserver(timeout=self.poll or 5.0)
            observer.schedule(handler, str(self.root), recursive=True)
            observer.start()
        self._observer = observer

    def notify(self, path: str | os.PathLike[str]) -> None:
        """Note that ``path`` was created, changed or moved (any thread)."""
        self._events.put(os.fsdecode(path))

    def stop(self) -> None:
        """Stop watching."""
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=10)
            self._observer = None

    def __enter__(self) -> Watcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _scan(self) -> None:
        self._last_scan = self.clock()
        prune = [self.outpath] if self.outpath is not None else []
        for path, problem in walk(self.root, self.include, self.exclude, prune):
            if not problem:
                self._consider(str(path))

    def _wanted(self, path: str) -> bool:
        real = os.path.realpath(path)
        if self._pruned is not None and (
            real == self._pruned or real.startswith(self._pruned + os.sep)
        ):
            return False
        try:
            rel = Path(real).relative_to(self._real_root).as_posix()
        except ValueError:
            return False
        parts = rel.split("/")
        if any(p.startswith(".") for p in parts) or rel.endswith(TMP_SUFFIX):
            return False
        if any(matches("/".join(parts[: k + 1]), self.exclude) for k in range(len(parts))):
            return False
        return matches(rel, self.include)

    def _consider(self, path: str) -> None:
        """Note a file that may be new or changed."""
        if path in self._busy:
            return
        sig = signature(path)
        if sig is None or self._done.get(path) == sig:
            self._pending.pop(path, None)
            return
        seen = self._pending.get(path)
        if seen is None or seen[0] != sig:
            self._pending[path] = (sig, self.clock())

    # ----------------------------------------------------------------- ready files

    def _item(self, path: str) -> Item:
        source = Path(path)
        rel_dir = source.parent.relative_to(self.root)
        if self.outpath is None:
            return Item(path, source, output_path(source))
        target = output_path(source, self.outpath / rel_dir)
        return Item(path, source, target, rel_dir != Path("."))

    def ready(self) -> list[Item]:
        """The files that have settled since the last call (each handed out once until it
        finishes; an incomplete or clashing one as an item with a ``problem``)."""
        while True:
            try:
                path = self._events.get_nowait()
            except queue.Empty:
                break
            path = os.path.normpath(path)
            if self._wanted(path):
                self._consider(path)
        now = self.clock()
        if now - self._last_scan >= self.rescan:
            self._scan()
        out: list[Item] = []
        for path, (seen, since) in list(self._pending.items()):
            sig = signature(path)
            if sig is None:
                del self._pending[path]
            elif sig != seen:
                self._pending[path] = (sig, now)
            elif now - since >= self.settle:
                del self._pending[path]
                out.append(self._take(path, sig))
        return out

    def _take(self, path: str, sig: Signature) -> Item:
        item = self._item(path)
        self._busy[path] = sig
        target = os.path.realpath(item.target)
        owner = self._owner.setdefault(target, path)
        if owner != path:
            problem = f"{path}: {owner} is also written to {item.target}; not compressed"
            return Item(item.given, item.source, item.target, item.make_dirs, problem=problem)
        if path not in self._done and output_is_complete(path, item.target, self.options):
            skip = f"Skipping {path}: {item.target} is complete"
            return Item(item.given, item.source, item.target, item.make_dirs, skip=skip)
        why = incomplete(path)
        if why:
            problem = f"{why} (not complete yet? it is taken again when it changes)"
            return Item(item.given, item.source, item.target, item.make_dirs, problem=problem)
        return item

    def finished(self, result: FileResult) -> None:
        """Record a file's result: it is taken again only if it changes (or, when it was
        stopped or not started, on the next run)."""
        sig = self._busy.pop(result.given, None)
        if sig is not None and result.status in ("done", "skipped", "failed"):
            self._done[result.given] = sig

    @property
    def busy(self) -> int:
        """Files handed out and not finished."""
        return len(self._busy)

    def items(self, cancel: Cancel, tick: float = 0.5) -> Iterator[Item | None]:
        """The files as they become ready, and a ``None`` every ``tick`` seconds in
        between (the runners then hand back finished results), until ``cancel`` is set.
        Waits with ``sleep``."""
        while not cancel.is_set():
            yield from self.ready()
            yield None
            if not cancel.is_set():
                self.sleep(tick)
