"""The ``e2compress`` command line: parses, builds the objects, and calls the library
(:func:`e2compress.drive.drive` for a batch and for watch mode)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

from . import commands
from .batch import Inputs, Item, describe, unreadable
from .batchreport import ReportWriter
from .cli_args import FLAGS, WORDS, build_parser, normalise_argv
from .commands import flagged
from .console import Console, LinePrinter, Stop, install_signals, restore_signals
from .deletion import MANIFEST_NAME, Manifest
from .drive import Outcome, Settings, drive
from .errors import E2CompressError
from .executor import Cancel
from .options import Options
from .progress import Progress, human_size
from .runner import LocalRunner, Runner, quiet_tifffile

__all__ = ["build_parser", "entry", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (see ``--help``).

    SIGINT/SIGTERM/SIGHUP handlers are installed first: they set a Cancel token that
    the file writers check, so an interrupt at any point cleans up. The previous
    handlers are restored on return.
    """
    quiet_tifffile()
    cancel = Cancel()
    if threading.current_thread() is not threading.main_thread():
        return _main(argv, cancel)  # only the main thread can handle signals
    previous = install_signals(cancel)
    try:
        return _main(argv, cancel)
    finally:
        restore_signals(previous)


def _main(argv: Sequence[str] | None, cancel: Cancel) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["watch"]:
        return _main_watch(argv[1:], cancel)
    if commands.is_command(argv):
        return commands.main(argv)
    parser = build_parser()
    args = parser.parse_args(normalise_argv(argv))
    console = Console()
    if not args.files and not args.recursive:
        parser.print_usage(sys.stderr)
        console.err("e2compress: error: no input files")
        return 2
    options = _options(args, console)
    if options is None:
        return 2
    if args.delete_input:
        if args.verify is False:
            console.err("e2compress: error: --delete-input needs --verify; drop --no-verify")
            return 2
        args.verify = True
    inputs = Inputs(
        args.files,
        recursive=args.recursive,
        include=args.include,
        exclude=args.exclude,
        outpath=args.outpath,
        stdin=sys.stdin,
    )
    try:
        inputs.check()
    except E2CompressError as exc:
        console.err(f"e2compress: error: {flagged(str(exc), WORDS)}")
        return 2
    with inputs:
        if args.dry_run:
            return _dry_run(inputs, console)
        return _batch(args, options, inputs, Stop(cancel, args.ppid), console)


def _options(args: argparse.Namespace, console: Console) -> Options | None:
    """The Options of the run, or None after an error line (bad --outpath or options)."""
    if args.outpath == "":  # Path("") would be the current directory: an unset variable?
        console.err("e2compress: error: --outpath is empty (give a directory; . for this one)")
        return None
    if args.outpath is not None:
        out_dir = Path(args.outpath)
        dry = getattr(args, "dry_run", False)
        if args.mkdir and not dry:
            try:
                out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                console.err(
                    f"e2compress: error: cannot create --outpath {args.outpath}: "
                    f"{exc.strerror or exc}"
                )
                return None
        to_be_made = args.mkdir and dry and not out_dir.exists()  # a dry run makes nothing
        if not to_be_made and (not out_dir.is_dir() or not os.access(out_dir, os.W_OK | os.X_OK)):
            console.err(
                f"e2compress: error: --outpath must be an existing, writable directory: "
                f"{args.outpath}"
            )
            return None
    if args.scheduler is not None and args.cluster is not None:
        console.err("e2compress: error: give --scheduler or --cluster, not both")
        return None
    level = 1 if args.compresslevel is None else args.compresslevel
    try:
        return Options(
            bits=args.bits,
            level=level,
            value_range=args.range,
            sigrange=args.sigrange,
            nooutliers=args.nooutliers,
            store_level=args.compresslevel is not None,
            noise_fraction=args.noise_fraction,
            apix=args.apix,
            eer_grouping=args.eer_grouping,
            counts=args.counts,
        ).validate(FLAGS)
    except E2CompressError as exc:
        console.err(f"e2compress: error: {flagged(str(exc), WORDS)}")
        return None


def _dry_run(inputs: Inputs, console: Console) -> int:
    """Print each input and its output (or why not), then a count; exit 1 when an input
    is missing or unreadable or collides with another."""
    inputs.scan()
    problems = 0
    for item in inputs:
        if not item.problem and not item.skip:
            why = unreadable(item)
            if why:
                item = Item(item.given, item.source, item.target, item.make_dirs, problem=why)
        problems += bool(item.problem)
        console.out(describe(item))
    size = human_size(inputs.total_bytes)
    bad = f", {problems} with a problem (ERROR lines)" if problems else ""
    console.out(f"dry run: {inputs.count} inputs{bad}, {size}; nothing written")
    return 1 if problems else 0


@contextmanager
def _runner(args: argparse.Namespace, stop: Stop, console: Console) -> Iterator[Runner]:
    """A LocalRunner, or a DaskRunner on --scheduler / a new --cluster (closed after),
    once a worker has joined (saying so while it waits)."""
    if args.scheduler is None and args.cluster is None:
        yield LocalRunner(args.threads)
        return
    try:
        from . import cluster
    except ImportError:
        raise E2CompressError(
            "--scheduler and --cluster need Dask: pip install 'e2compress[dask]'"
        ) from None
    config = cluster.load_config(args.dask_config) if args.dask_config else None
    settings = {"queue": args.queue, "cores": args.cores, "memory": args.memory}
    with cluster.open_client(
        args.scheduler,
        args.cluster,
        jobs=args.jobs,
        config=config,
        walltime=args.walltime,
        **settings,
    ) as client:
        cluster.wait_for_workers(
            client,
            stop.cancel,
            timeout=args.worker_timeout,
            notify=lambda line: console.err(f"e2compress: {line}"),
        )
        yield cluster.DaskRunner(client, threads=args.threads)


def _batch(
    args: argparse.Namespace, options: Options, inputs: Inputs, stop: Stop, console: Console
) -> int:
    """Run every input; print the lines, the totals and the summary; the exit status."""
    stop.check_parent()
    if stop.cancel.is_set():  # before any work: nothing to clean up
        console.err(f"e2compress: {stop.cause()}; no file was compressed")
        return stop.status()
    inputs.scan()
    settings = Settings(
        options=options,
        verify=args.verify,
        skip_existing=args.skip_existing,
        force=args.force,
        settle=args.settle,
    )
    printer = LinePrinter(console, args.verbose, stop, args.settle)
    bar = False if args.no_progress else None
    try:
        report = ReportWriter(args.report) if args.report else None
        with (
            _manifest(args) as manifest,
            _runner(args, stop, console) as runner,
            stop.watching_parent(),
            _progress(console, inputs.count, inputs.total_bytes, bar, args.verbose) as progress,
        ):
            outcome = drive(
                inputs,
                settings,
                runner,
                stop.cancel,
                printer=printer,
                progress=progress,
                report=report,
                manifest=manifest,
            )
    except E2CompressError as exc:  # a report or a cluster that cannot be had: no work done
        console.err(f"e2compress: error: {flagged(str(exc), WORDS)}")
        return 2
    summary = outcome.summary(deleting=args.delete_input)
    many = inputs.count > 1
    if stop.cancel.is_set():  # one line for the batch unless the file's own line says it all
        if many or not outcome.counts["stopped"]:
            unwritten = outcome.counts["stopped"] + outcome.counts["unstarted"]
            console.err(f"e2compress: {stop.cause()}: {summary}, {unwritten} not written")
        return stop.status()
    if args.verbose or args.report:
        console.out(outcome.totals.line())
    if outcome.counts["failed"] or args.verbose or many:
        console.out(summary)
    return 1 if outcome.counts["failed"] else 0


@contextmanager
def _progress(
    console: Console, files: int, nbytes: int, bar: bool | None, verbose: int
) -> Iterator[Progress]:
    """The batch's progress display; while inside, the console's lines step around its
    bars (the driver closes it)."""
    progress = Progress(files, nbytes, bar=bar, verbose=verbose)
    console.around = progress.writing
    try:
        yield progress
    finally:
        console.around = nullcontext


@contextmanager
def _manifest(args: argparse.Namespace) -> Iterator[Manifest | None]:
    """The ``--delete-input`` manifest (closed after), or None."""
    if not args.delete_input:
        yield None
        return
    path = args.manifest or os.path.join(args.outpath or ".", MANIFEST_NAME)
    try:
        manifest = Manifest(path)
    except OSError as exc:
        raise E2CompressError(f"cannot open the manifest {path}: {exc.strerror or exc}") from None
    with manifest:
        yield manifest


def _main_watch(argv: Sequence[str], cancel: Cancel) -> int:
    """``e2compress watch DIR --outpath OUT [options]``: runs until a signal stops it."""
    parser = build_parser(watch=True)
    args = parser.parse_args(normalise_argv(argv))
    console = Console()
    if args.outpath is None:
        console.err("e2compress: error: watch needs --outpath (an existing directory)")
        return 2
    options = _options(args, console)
    if options is None:
        return 2
    try:
        from .watch import Watcher
    except ImportError:
        console.err("e2compress: error: watch needs watchdog: pip install 'e2compress[watch]'")
        return 2
    watcher = Watcher(
        args.directory,
        outpath=args.outpath,
        include=tuple(args.include),
        exclude=tuple(args.exclude),
        settle=args.settle,
        poll=args.poll,
        options=options,
    )
    stop = Stop(cancel, args.ppid)
    settings = Settings(options=options, verify=args.verify, force=args.force)
    outcome = Outcome()
    try:
        report = ReportWriter(args.report) if args.report else None
        with _runner(args, stop, console) as runner, stop.watching_parent():
            if args.verbose:
                console.out(f"Watching {args.directory} -> {args.outpath}")
            with watcher, _progress(console, 0, 0, False, args.verbose) as progress:
                outcome = drive(
                    watcher.items(cancel),
                    settings,
                    runner,
                    cancel,
                    printer=LinePrinter(console, args.verbose, stop),
                    progress=progress,
                    live=True,
                    report=report,
                    finished=watcher.finished,
                )
    except E2CompressError as exc:
        console.err(f"e2compress: error: {flagged(str(exc), WORDS)}")
        return 2
    console.out(f"e2compress watch: {stop.cause()}: {outcome.summary()}")
    return stop.status()


def entry() -> None:
    """Console-script entry point. A reader that goes away (``e2compress info ... |
    head``) ends a subcommand quietly with status 141, as SIGPIPE would; a compression
    batch goes on (see :class:`~e2compress.console.Console`) and keeps its own status."""
    broken = False
    try:
        status = main()
    except BrokenPipeError:
        status, broken = 128 + signal.SIGPIPE, True
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        broken = True
    if broken:  # no second error when Python flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(status)
