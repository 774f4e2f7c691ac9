"""The SHA-256 of a source, computed from the reads its reader makes anyway.

:class:`OrderedHasher` takes blocks from several threads in any order, hashes them as
soon as they extend the hashed prefix of the file, and holds them only until then;
:class:`HashingReader` hashes a compressed input as it is decompressed; :class:`RunKeeper`
keeps the bytes outside known pixel runs (see :mod:`~e2compress.kept`) and hashes the
file; :func:`parts_digest` stands for a source of several files.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import heapq
import itertools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .kept import KEPT_LIMIT, Kept, Layout, overlapping, pieces_array

# Held out-of-order blocks beyond this are dropped and read again at the end.
PENDING_LIMIT = 64 << 20
# A reader waits for the hashing thread when this much is waiting to be hashed.
BACKLOG = 16 << 20
_READ_STEP = 1 << 22


_AGAIN: contextvars.ContextVar[bool] = contextvars.ContextVar("e2c_read_again", default=False)
_HOLDING: contextvars.ContextVar[int] = contextvars.ContextVar("e2c_holding", default=0)


@contextlib.contextmanager
def read_again_later() -> Iterator[None]:
    """Reads made in this thread inside the block will be made again (a first pass
    over an image read twice): they feed a source's hash only where that costs no
    waiting, and the hash takes the rest from the second read."""
    token = _AGAIN.set(True)
    try:
        yield
    finally:
        _AGAIN.reset(token)


@contextlib.contextmanager
def holding(nbytes: int) -> Iterator[None]:
    """Reads made in this thread inside the block are kept by the caller (an image read
    once and held, up to ``nbytes``): a source's hash may lag that much more before a
    reader waits for it, since what it holds is in memory anyway."""
    token = _HOLDING.set(nbytes)
    try:
        yield
    finally:
        _HOLDING.reset(token)


class OrderedHasher:
    """SHA-256 of a file fed from blocks read in any order, by any number of threads.

    ``feed(offset, data)`` hands over bytes read at ``offset`` and returns at once: a
    thread of the hasher's own hashes blocks in file order as they extend the hashed
    prefix, so the reading threads never wait for the hash (when they hashed
    themselves, one of them ended up hashing for all and held up the others' tasks:
    measured 1.6x the hashing time on 2 threads). Blocks beyond a gap are held until
    it is filled (at most :data:`PENDING_LIMIT` bytes; beyond that they are dropped
    and :meth:`finish` reads what is missing). A reader waits only when the hash lags
    :data:`BACKLOG` bytes behind (memory stays bounded when the machine is busy).
    Repeated reads of hashed bytes are ignored. :meth:`close` (or :meth:`finish`) stops
    the thread.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._hash = hashlib.sha256()
        self._pos = 0  # bytes of the file hashed or being hashed
        self._heap: list[tuple[int, int, memoryview]] = []
        self._held = 0
        self._seq = itertools.count()
        self._cond = threading.Condition(threading.Lock())
        self._busy = False
        self._overflow = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self.reread = 0  # bytes :meth:`finish` had to read itself
        self.peak = 0  # most bytes held at once (waiting for a gap or for the thread)

    def feed(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Bytes ``data`` read at ``offset`` of the file (kept until hashed).

        Inside :func:`read_again_later` the reader never waits: bytes the hash cannot
        take at once (not next in order, or the hash lags :data:`BACKLOG` behind) are
        left for the next read of the same bytes. Inside :func:`holding` it waits only
        when the hash lags that much more.
        """
        view = memoryview(data).cast("B")
        if not view.nbytes:
            return
        with self._cond:
            if self._closed or offset + view.nbytes <= self._pos:
                return
            if _AGAIN.get() and (offset > self._pos or self._held >= BACKLOG):
                return
            if self._overflow and offset > self._pos:
                return
            heapq.heappush(self._heap, (offset, next(self._seq), view))
            self._held += view.nbytes
            self.peak = max(self.peak, self._held)
            extra = _HOLDING.get()
            if self._held > PENDING_LIMIT + extra:
                self._drop()
            if offset <= self._pos:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="e2compress-sha256", daemon=True
                    )
                    self._thread.start()
                self._cond.notify_all()
            # back-pressure: when the hash lags BACKLOG behind, wait for it (it makes
            # progress on its own, so this cannot deadlock)
            while (
                self._held > BACKLOG + extra
                and not self._closed
                and (self._busy or (self._heap and self._heap[0][0] <= self._pos))
            ):
                self._cond.wait()

    def _drop(self) -> None:
        """Forget the held blocks that do not start the unhashed part (lock held)."""
        keep = [item for item in self._heap if item[0] <= self._pos]
        self._heap = keep
        heapq.heapify(self._heap)
        self._held = sum(item[2].nbytes for item in keep)
        self._overflow = True

    def _ready(self) -> list[memoryview]:
        """Pop the held blocks that extend the hashed prefix (lock held)."""
        ready: list[memoryview] = []
        while self._heap and self._heap[0][0] <= self._pos:
            offset, _, view = heapq.heappop(self._heap)
            self._held -= view.nbytes
            end = offset + view.nbytes
            if end > self._pos:
                ready.append(view[self._pos - offset :])
                self._pos = end
        return ready

    def _run(self) -> None:
        while True:
            with self._cond:
                ready = self._ready()
                while not ready and not self._closed:
                    self._cond.wait()
                    ready = self._ready()
                if not ready:
                    return
                self._busy = True
            try:
                for view in ready:
                    self._hash.update(view)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _settle(self) -> int:
        """Wait until everything that can be hashed is; the bytes hashed."""
        with self._cond:
            while self._busy or (self._heap and self._heap[0][0] <= self._pos):
                if self._thread is None:  # nothing started it: hash here
                    for view in self._ready():
                        self._hash.update(view)
                    continue
                self._cond.wait()
            return self._pos

    def finish(self, pread: Callable[[int, int], bytes]) -> str:
        """The hex digest, reading the bytes no one fed with ``pread(size, offset)``.

        Raises:
            OSError: a read failed or the file ended early.
        """
        try:
            while (pos := self._settle()) < self.size:
                with self._cond:
                    held = self._heap[0][0] if self._heap else self.size
                want = min(_READ_STEP, max(held, pos + 1) - pos, self.size - pos)
                block = pread(want, pos)
                if len(block) != want:
                    raise OSError(f"file ended at byte {pos + len(block)} of {self.size}")
                self.reread += want
                self.feed(pos, block)
            return self._hash.hexdigest()
        finally:
            self.close()

    def close(self) -> None:
        """Stop the hashing thread and drop what is held."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._held = 0
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()


class RunKeeper:
    """Keeps a file's bytes outside known pixel runs and hashes it from the reads (the
    readers whose pixels lie at offsets their headers give: DM, SER).

    Args:
        format: the layout's format name.
        size: bytes of the file.
        runs: (offset, bytes, image, first element, dtype string, flags) of each run.
        pread: ``pread(size, offset)`` of the file.
        name: the file's name.

    Raises:
        OSError: the bytes outside the runs cannot be read.
    """

    def __init__(
        self,
        format: str,
        size: int,
        runs: Sequence[tuple[int, int, int, int, str, int]],
        pread: Callable[[int, int], bytes],
        name: str,
    ) -> None:
        self._pread = pread
        self.name = name
        self.hasher = OrderedHasher(size)
        dtypes = sorted({run[4] for run in runs})
        index = {d: k for k, d in enumerate(dtypes)}
        rows = [(o, n, i, e, index[d], f) for o, n, i, e, d, f in runs]
        self.layout = Layout(format, size, pieces_array(rows), dtypes)
        self.kept = b""
        if overlapping(self.layout.pieces, size):
            self.layout = Layout(
                format, size, pieces_array([]), [], problem="its pixel runs overlap"
            )
            return
        gaps = self.layout.gaps()
        if sum(n for _, n in gaps) > KEPT_LIMIT:
            problem = f"it holds more than {KEPT_LIMIT} bytes besides its pixels"
            self.layout = Layout(format, size, pieces_array([]), [], problem=problem)
            return
        parts = []
        for offset, length in gaps:
            data = read_exact(pread, length, offset)
            self.hasher.feed(offset, data)
            parts.append(data)
        self.kept = b"".join(parts)

    def finish(self) -> Kept:
        """The kept bytes, the layout and the file's SHA-256 (bytes no read fed are
        read now).

        Raises:
            OSError: the file cannot be read to its end.
        """
        digest = self.hasher.finish(self._pread)
        return Kept(self.layout, self.kept, digest, digest, self.name)


class HashingReader:
    """A binary reader that hashes everything read through it (a compressed input)."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all the rest when negative), added to the hash."""
        data: bytes = self._raw.read(size)
        self.hash.update(data)
        self.size += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` from the file, hashing what was read; the number of bytes read."""
        n: int = self._raw.readinto(buffer)
        if n:
            self.hash.update(memoryview(buffer)[:n])
            self.size += n
        return n

    def readable(self) -> bool:
        """True: a reader."""
        return True

    def seekable(self) -> bool:
        """False: the hash needs every byte once, in order."""
        return False

    def close(self) -> None:
        """The caller closes the underlying file."""

    @property
    def closed(self) -> bool:
        """False: the caller closes the underlying file (see :meth:`close`)."""
        return False

    def digest(self) -> str:
        """Hex SHA-256 of everything read, after reading the rest of the file."""
        while True:
            rest = self.read(_READ_STEP)
            if not rest:
                return self.hash.hexdigest()


def parts_digest(parts: Sequence[tuple[str, str]]) -> str:
    """The SHA-256 that stands for a source of several files: of the lines
    ``name NUL sha256-hex LF`` of its files (``parts``: (name, hex digest)), in order."""
    digest = hashlib.sha256()
    for name, sha in parts:
        digest.update(os.fsencode(name) + b"\0" + sha.encode("ascii") + b"\n")
    return digest.hexdigest()


def read_exact(pread: Callable[[int, int], bytes], size: int, offset: int) -> bytes:
    """``size`` bytes at ``offset``; OSError when the file ends first."""
    parts = []
    got = 0
    while got < size:
        block = pread(min(size - got, 1 << 30), offset + got)
        if not block:
            raise OSError(f"file ended at byte {offset + got}")
        parts.append(block)
        got += len(block)
    return b"".join(parts)
