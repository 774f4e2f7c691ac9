"""A batch on a Dask cluster: one task per file (needs the ``dask`` extra).

Scheduling, retries after a lost worker and worker management are Dask's: a file whose
worker died is run again on another one (the scheduler's ``allowed-failures``), which
is harmless because every output is a temporary file renamed only when complete. Each
worker compresses the chunks of its files with one pool of its own threads
(:class:`ChunkPool`), and reports per-file progress as Dask events.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Executor
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import dask.config
import yaml
from distributed import Client, WorkerPlugin, as_completed, get_worker

from .errors import E2CompressError
from .executor import Cancel, make_pool
from .runner import FileResult, Job, Tick, TickFn, precheck, quiet_tifffile, run_job

TOPIC = "e2compress-progress"
POOL_PLUGIN = "e2compress-chunk-pool"
TICK_SECONDS = 1.0  # per-file progress events from a worker, at most this often
JOBQUEUE = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster", "lsf": "LSFCluster"}


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def _keep_big_buffers() -> None:
    """Let this worker's heap keep and reuse the 16 MB block buffers, as a plain process does.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also pins
    glibc's mmap threshold at 128 kB: every block buffer is then a fresh mmap, zeroed
    page by page (measured: 45 % more time, all of it in the kernel). No-op without glibc.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, 32 << 20)
    mallopt(M_TRIM_THRESHOLD, 256 << 20)


class ChunkPool(WorkerPlugin):  # type: ignore[misc]
    """One pool of chunk threads per worker (``threads``, default the worker's own
    thread count), shared by the files the worker runs at once; its setup also quiets
    tifffile's logger there, as the command line does in its own process."""

    idempotent = False

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads
        self.pool: Executor | None = None

    def setup(self, worker: Any) -> None:
        """Make the worker's pool (``threads``, else the worker's thread count); also
        lets its heap keep the block buffers and quiets tifffile's logger."""
        _keep_big_buffers()
        quiet_tifffile()
        self.pool = make_pool(self.threads or worker.state.nthreads)

    def teardown(self, worker: Any) -> None:
        """Shut the pool down: queued chunk tasks are cancelled, running ones not waited for."""
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None


class _Ticker:
    """Sends a file's progress to the client as Dask events, at most every TICK_SECONDS
    (and always the start and the end)."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.last = 0.0

    def __call__(self, t: Tick) -> None:
        now = time.monotonic()
        if t.done and t.done < t.total and now - self.last < TICK_SECONDS:
            return
        self.last = now
        self.worker.log_event(
            TOPIC, [t.given, t.target, t.done, t.total, t.worker, t.size, t.waiting]
        )


def compress_task(job: Job, progress: bool = False) -> FileResult:
    """The Dask task for one file (runs on a worker); see :func:`~e2compress.runner.run_job`."""
    worker = get_worker()
    plugin = worker.plugins.get(POOL_PLUGIN)
    pool = getattr(plugin, "pool", None)
    return run_job(
        job,
        pool=pool,
        threads=None if pool is not None else worker.state.nthreads,
        on_tick=_Ticker(worker) if progress else None,
        worker=str(worker.address),
    )


def _key(job: Job) -> str:
    return f"e2compress-{Path(job.source).name}-{uuid.uuid4().hex[:12]}"


class DaskRunner:
    """Runs jobs on a Dask cluster through ``client``, one task per file.

    Args:
        client: a connected :class:`distributed.Client`.
        threads: chunk threads per worker (default: each worker's thread count).
        window: tasks submitted ahead of the results (default: four per worker thread,
            at least 64), so a list of any length keeps a bounded number of futures.
    """

    def __init__(self, client: Client, threads: int | None = None, window: int | None = None):
        self.client = client
        self.window = window
        client.register_plugin(ChunkPool(threads), name=POOL_PLUGIN)

    def _window(self) -> int:
        if self.window is not None:
            return max(1, self.window)
        threads: int = sum(self.client.nthreads().values())
        return max(64, 4 * threads)

    def run(
        self, jobs: Iterable[Job | None], cancel: Cancel, on_tick: TickFn | None = None
    ) -> Iterator[FileResult]:
        """Results in the order the files finish; a ``None`` in ``jobs`` hands back the
        results finished so far. Once ``cancel`` is set, the tasks not
        finished are cancelled (``stopped``; a worker already writing a file finishes it
        atomically or leaves nothing) and the rest come back ``unstarted``."""
        inflight: dict[str, tuple[Any, Job]] = {}
        done = as_completed()

        def handler(event: tuple[float, Any]) -> None:
            given, target, count, total, worker, size, waiting = event[1]
            if on_tick is not None and _key_of.get(given) in inflight:
                on_tick(Tick(given, target, count, total, worker, size, waiting))

        _key_of: dict[str, str] = {}  # given -> key, for the files in flight
        if on_tick is not None:
            self.client.subscribe_topic(TOPIC, handler)
        try:
            window = self._window()
            for job in jobs:
                if job is None:
                    while done.has_ready() and not cancel.is_set():
                        yield from self._next(done, inflight, _key_of, cancel)
                    continue
                quick = precheck(job, cancel)
                if quick is not None:
                    yield quick
                    continue
                job = replace(  # the workers' current directory is not ours
                    job, source=os.path.abspath(job.source), target=os.path.abspath(job.target)
                )
                fut = self.client.submit(
                    compress_task, job, on_tick is not None, key=_key(job), pure=False
                )
                key = str(fut.key)
                inflight[key] = (fut, job)
                _key_of[job.given] = key
                done.add(fut)
                while len(inflight) >= window:
                    yield from self._next(done, inflight, _key_of, cancel)
            while inflight:
                yield from self._next(done, inflight, _key_of, cancel)
        finally:
            if inflight:
                self.client.cancel([fut for fut, _ in inflight.values()])
            if on_tick is not None:
                self.client.unsubscribe_topic(TOPIC)

    def _next(
        self,
        done: Any,
        inflight: dict[str, tuple[Any, Job]],
        key_of: dict[str, str],
        cancel: Cancel,
    ) -> Iterator[FileResult]:
        """The next finished file (polling, so signal handlers run)."""
        while not done.has_ready():
            if cancel.is_set():
                futures = [fut for fut, _ in inflight.values()]
                self.client.cancel(futures)
                for _, job in inflight.values():
                    key_of.pop(job.given, None)
                    yield FileResult(
                        job.given,
                        job.source,
                        job.target,
                        "stopped",
                        f"{job.given}: interrupted; its task was cancelled on the cluster "
                        "(a worker already writing it finishes it or leaves nothing)",
                        bytes_in=job.size,
                    )
                inflight.clear()
                done.clear()
                return
            time.sleep(0.05)
        fut = next(done)
        _, job = inflight.pop(str(fut.key))
        key_of.pop(job.given, None)
        yield _outcome(fut, job)


def _outcome(fut: Any, job: Job) -> FileResult:
    """A finished future's result, or a failed result saying why the task failed."""
    if fut.status == "finished":
        result: FileResult = fut.result()
        return result
    if fut.status == "cancelled":
        return FileResult(
            job.given,
            job.source,
            job.target,
            "stopped",
            f"{job.given}: task cancelled",
            bytes_in=job.size,
        )
    exc = fut.exception()
    name = type(exc).__name__
    if name == "KilledWorker":
        message = f"{job.given}: the workers running it died too often (KilledWorker); not retried"
    else:
        first = (str(exc).splitlines() or [""])[0]
        message = f"{job.given}: task failed on the cluster: {name}: {first}"
    return FileResult(job.given, job.source, job.target, "failed", message, bytes_in=job.size)


WORKER_TIMEOUT = 600.0  # seconds to wait for the first worker (the CLI's --worker-timeout)


def wait_for_workers(
    client: Client,
    cancel: Cancel,
    *,
    timeout: float = WORKER_TIMEOUT,
    notify: Callable[[str], None] | None = None,
    poll: float = 0.5,
) -> bool:
    """Wait until at least one worker has joined ``client``'s scheduler.

    Args:
        client: the connected client.
        cancel: stops the wait (returns False; the batch then starts nothing).
        timeout: seconds to wait for the first worker.
        notify: called once with a line saying what is waited for, if there is no
            worker yet.
        poll: seconds between looks.

    Raises:
        E2CompressError: no worker joined within ``timeout`` seconds.
    """
    start = time.monotonic()
    told = False
    address = getattr(client.scheduler, "address", "?")
    while not client.nthreads():
        if cancel.is_set():
            return False
        waited = time.monotonic() - start
        if waited >= timeout:
            raise E2CompressError(
                f"no Dask worker joined the scheduler {address} within "
                f"{timeout:g} s (are the batch jobs still queued, or did they fail to start? "
                "see the batch system's queue and the job logs); nothing was compressed"
            )
        if not told and notify is not None:
            notify(
                f"waiting for Dask workers to join the scheduler {address} (at most {timeout:g} s)"
            )
            told = True
        time.sleep(poll)
    return True


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping) and v:
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def load_config(path: str | Path) -> dict[str, Any]:
    """A Dask YAML configuration file as dotted keys (``jobqueue.slurm.cores``: 8).

    Raises:
        E2CompressError: the file cannot be read or is not a YAML mapping.
    """
    try:
        with open(path) as fh:
            tree = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise E2CompressError(f"cannot read the Dask configuration file: {exc}", path) from None
    if tree is None:
        return {}
    if not isinstance(tree, Mapping):
        raise E2CompressError("a Dask configuration file must be a YAML mapping", path)
    return _flatten(tree)


def _import_jobqueue() -> Any:
    """``import dask_jobqueue``, keeping our SIGINT handler (its runner module installs
    its own at import time).

    Raises:
        E2CompressError: dask-jobqueue is not installed.
    """
    previous = signal.getsignal(signal.SIGINT)
    try:
        import dask_jobqueue
    except ImportError:
        raise E2CompressError(
            "a jobqueue cluster needs dask-jobqueue: pip install 'e2compress[dask]'"
        ) from None
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)
    return dask_jobqueue


def jobqueue_cluster(kind: str, **settings: Any) -> Any:
    """A dask-jobqueue cluster of ``kind`` (slurm, pbs, sge, lsf), with no job started.

    ``settings`` that are None are left to the Dask configuration (``jobqueue.<kind>.*``);
    a worker is one process per job unless the configuration says otherwise.

    Raises:
        E2CompressError: dask-jobqueue is missing, the batch system's submit command is
            not on PATH, or the settings are incomplete.
    """
    dask_jobqueue = _import_jobqueue()
    if kind not in JOBQUEUE:
        raise E2CompressError(f"unknown cluster kind {kind!r}; one of {', '.join(JOBQUEUE)}")
    cls = getattr(dask_jobqueue, JOBQUEUE[kind])
    submit = cls.job_cls.submit_command
    if shutil.which(submit) is None:
        raise E2CompressError(
            f"cluster={kind!r}: {submit} is not on PATH (run on a {kind.upper()} submit host)"
        )
    kwargs = {k: v for k, v in settings.items() if v is not None}
    if dask.config.get(f"jobqueue.{kind}.processes", None) is None:
        kwargs.setdefault("processes", 1)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise E2CompressError(f"cluster={kind!r}: {exc}") from None


@contextmanager
def open_client(
    scheduler: str | None = None,
    cluster: str | None = None,
    *,
    jobs: int = 1,
    config: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
    **settings: Any,
) -> Iterator[Client]:
    """A Dask client: to the scheduler at ``scheduler``, or to a new dask-jobqueue
    ``cluster`` of ``jobs`` jobs (closed on exit). ``config`` (dotted keys) is in force
    for the lifetime of the client; ``settings`` go to :func:`jobqueue_cluster`.

    Raises:
        E2CompressError: the scheduler cannot be reached, or the cluster cannot start.
    """
    with ExitStack() as stack:
        if config:
            stack.enter_context(dask.config.set(dict(config)))
        if scheduler is not None:
            try:
                client = Client(scheduler, timeout=timeout)
            except (OSError, TimeoutError, ValueError) as exc:
                raise E2CompressError(
                    f"cannot connect to the Dask scheduler at {scheduler}: {exc}"
                ) from None
            stack.callback(client.close)
        elif cluster is not None:
            jq = jobqueue_cluster(cluster, **settings)
            stack.callback(jq.close)
            jq.scale(jobs=jobs)
            client = Client(jq)
            stack.callback(client.close)
        else:
            raise E2CompressError("give a Dask scheduler address or a cluster kind")
        yield client
