"""Worker pools and cancellation, passed in by the caller (no process-global state).

A :class:`Cancel` token is handed to :func:`~e2compress.pipeline.compress_file`; the CLI's
signal handlers (or a Dask task, or a watch loop) set it, and the workers stop at their
next block. Each run gets its own token, so one interrupted file never poisons the next.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any

from .blocks import BLOCK_BYTES
from .errors import E2CompressError, Interrupted

# Blocks in flight are bounded by memory, not by the thread count: a task holds its input
# block, a float32 copy or two and its compressed chunks (about 3x the block's float bytes).
MEMORY_BUDGET = 256 << 20
TASK_BYTES = 3 * BLOCK_BYTES


def in_flight(width: int, task_bytes: int = TASK_BYTES, budget: int = MEMORY_BUDGET) -> int:
    """How many tasks to keep in flight: one per worker plus one, within ``budget``."""
    return max(2, min(width + 1, budget // max(1, task_bytes)))


class Cancel:
    """A cancellation token: :meth:`set` asks every task that checks it to stop."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum = 0

    def set(self, signum: int = 0) -> None:
        """Ask the work to stop; ``signum`` is the signal that asked, if any."""
        self.signum = self.signum or signum
        self._event.set()

    def is_set(self) -> bool:
        """True once :meth:`set` was called."""
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`~e2compress.errors.Interrupted` if the token is set."""
        if self._event.is_set():
            raise Interrupted(self.signum)


class InlineExecutor(Executor):
    """Runs tasks in the calling thread (``threads=1``)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` now; the done future holds its result or exception."""
        fut: Future[Any] = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # delivered through the future, as a pool would
            fut.set_exception(exc)
        return fut


def make_pool(threads: int | None) -> Executor:
    """A worker pool of ``threads`` (default: all cores); 1 runs inline.

    Raises:
        E2CompressError: ``threads`` is given and is not a positive integer.
    """
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise E2CompressError(f"threads must be a positive integer, not {threads!r}")
    n = threads or os.cpu_count() or 1
    return InlineExecutor() if n <= 1 else ThreadPoolExecutor(max_workers=n)


@contextmanager
def pool_or_own(pool: Executor | None, threads: int | None) -> Iterator[Executor]:
    """``pool`` (the caller's, left running), or a pool of ``threads`` made and shut
    down here (see :func:`make_pool`, which checks ``threads``)."""
    if pool is not None:
        yield pool
        return
    own = make_pool(threads)
    try:
        yield own
    finally:
        own.shutdown(wait=True, cancel_futures=True)


def pool_width(pool: Executor) -> int:
    """How many tasks ``pool`` runs at once."""
    return int(getattr(pool, "_max_workers", 1))


def bounded(
    pool: Executor, fn: Callable[..., Any], items: Iterable[Any], window: int
) -> Generator[Any, None, None]:
    """``pool.map`` in order, with at most ``window`` tasks in flight (bounded memory)."""
    pending: deque[Future[Any]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        settle(pending)


def settle(futures: Iterable[Future[Any]]) -> None:
    """Cancel what has not started and wait for what has (nothing may outlive its file)."""
    pending = list(futures)
    for fut in pending:
        fut.cancel()
    wait(pending)
