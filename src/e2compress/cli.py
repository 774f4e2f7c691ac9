"""The ``e2compress`` command line (EMAN2's options, verbatim): parses, then calls the library."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from . import __version__, commands
from .batch import Inputs, Item, describe, unreadable
from .batchreport import ReportWriter, Totals
from .deletion import MANIFEST_NAME, Manifest, delete_source
from .errors import E2CompressError
from .executor import Cancel
from .fidelity import DEFAULT_NOISE_FRACTION
from .options import AUTO_BITS, Options
from .progress import Progress, human_size
from .runner import (
    SETTLE_SECONDS,
    SETTLE_WAIT,
    STATUSES,
    FileResult,
    Job,
    LocalRunner,
    Runner,
    Tick,
    make_jobs,
)

DESCRIPTION = """\
Convert image files (MRC/MRCS/MAP/CCP4 incl. .gz/.bz2, TIFF, EMAN2 HDF) to
bit-truncated, deflate-compressed EMAN2 HDF5. An .hdf input is replaced in place;
any other input gets the same name with .hdf (beside it, or in --outpath).

Values are stored as N-bit integers with the mapping in the file; EMAN2, and
e2compress.read_images / e2compress.open in Python, rescale them on read. Integer
data that fits in 2^bits levels reads back exactly; for data spanning zero, 0.0
reads back as exactly 0.0. --bits 0 stores float32 losslessly. --bits auto picks,
per image, the fewest bits whose quantisation noise stays below --noise-fraction
(default 0.1) of the image's own noise; every compression warns when the bits
given do not. Fixed bits suit only what they were chosen for: 5 for raw frames
near 1 e/px, far more for integrated micrographs, averages and maps.
--nooutliers is strongly recommended for micrographs and movies.

Subcommands (first argument): info FILE..., compare ORIGINAL COMPRESSED,
export IN.hdf OUT.mrc|OUT.tif, check ARCHIVE...; see e2compress VERB --help.
Compress a file named like a subcommand as ./info.

Recompressing an .hdf that is already quantised rounds values that were rounded
before: to fewer bits, the new rounding error adds to the old one (up to half an
old step plus half a new step); more bits gain nothing - the lost precision does
not come back - and only make the file larger. Compress from the original data
when you have it."""

EPILOG = """\
typical usage (EMAN2's example; --bits auto chooses by each image's noise):
  e2compress --nooutliers --outpath ../micrographs_5bit --threads 32 -v 2 --bits 5 *.mrc
  e2compress --nooutliers --outpath ../micrographs --threads 32 -v 2 --bits auto *.mrc

output: one line per event. stderr: "ERROR: FILE: ..." once per failed file, as it
happens, and "WARNING: FILE: ..." lines; stdout: with -v, "Processing" and
"Skipping" lines, with -v 2 one "<seconds> s  FILE: ..." line per file; and, for
more than one file, -v or any failure, a last line "N compressed, M failed, K skipped".

Inputs that would be written to the same output (x.map and x.map.bz2, a.mrc and
a.tif, or two a.mrc from different directories with --outpath) are each reported
as failed and not compressed; the others run. A file given twice is compressed once
(one WARNING line; the repeat counts as skipped).

batches: FILE may be @LIST (a file of paths, one a line) or - (paths on stdin);
--recursive DIR walks a tree (MRC and TIFF files unless --include says otherwise)
and mirrors it under --outpath. Two inputs writing one output are found before
any work, with about 16 bytes of memory a path. An input modified less than
--settle seconds ago (default 5) is waited for: it may still be being written.
--scheduler ADDRESS runs one task per file on a Dask cluster; --cluster
slurm|pbs|sge|lsf starts one with dask-jobqueue (pip install 'e2compress[dask]').
On a terminal a progress bar shows files, bytes, throughput and ETA; elsewhere -v
logs a progress line every 30 s. --report FILE appends a row per file as it ends.

watch mode: e2compress watch DIR --outpath OUT [options] compresses each new file
under DIR once its size and time have not changed for --settle seconds and it opens
complete; it runs until SIGINT/SIGTERM, and a restart skips finished files.

exit status:
  0            every file was compressed (the output is complete and decodes to
               within half a quantisation step) or skipped
  1            any file failed (nothing is written for it; its input is unchanged)
  2            bad options (nothing is done)
  129/130/143  stopped by SIGHUP/SIGINT/SIGTERM (143 too when the --ppid process
               exits); a file being written is not left behind, finished ones stay"""

_VALUE_OPTS = ("--range", "--sigrange")
FLAGS = {
    "bits": "--bits",
    "level": "--compresslevel",
    "value_range": "--range",
    "sigrange": "--sigrange",
    "nooutliers": "--nooutliers",
    "noise_fraction": "--noise-fraction",
    "apix": "--apix",
    "eer_grouping": "--eer-grouping",
    "counts": "--counts",
}


def _normalise_argv(argv: Sequence[str]) -> list[str]:
    """Accept ``--range -5,5`` and EMAN2's ``-v 2`` alongside ``-v``/``-vv``."""
    out: list[str] = []
    verbose = 0
    it = iter(range(len(argv)))
    args = list(argv)
    for k in it:
        token = args[k]
        if token == "--":
            out.extend(args[k:])
            break
        if token in _VALUE_OPTS and k + 1 < len(args):
            out.append(f"{token}={args[k + 1]}")
            next(it, None)
        elif token in ("-v", "--verbose"):
            if k + 1 < len(args) and re.fullmatch(r"\d+", args[k + 1]):
                verbose = max(verbose, int(args[k + 1]))
                next(it, None)
            else:
                verbose += 1
        elif re.fullmatch(r"-v+", token):
            verbose += len(token) - 1
        elif re.fullmatch(r"(-v|--verbose=)\d+", token):
            verbose = max(verbose, int(re.sub(r"\D", "", token)))
        else:
            out.append(token)
    if verbose:
        out.insert(0, f"--verbose={verbose}")
    return out


def _pair(text: str) -> tuple[float, float]:
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        return float(parts[0]), float(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers as a,b, not {text!r}") from None


def _bits(text: str) -> int:
    if text == "auto":
        return AUTO_BITS
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 0, an integer 2..16 or auto, not {text!r}"
        ) from None
    if value != 0 and not 2 <= value <= 16:
        raise argparse.ArgumentTypeError(f"expected 0 (lossless), 2..16 or auto, not {value}")
    return value


_fraction = commands.number(float, lambda v: 0 < v <= 10, "a number > 0 and <= 10")
_apix = commands.number(float, lambda v: v > 0, "a positive pixel size")
_level = commands.number(int, lambda v: 0 <= v <= 9, "an integer 0..9")
_threads = commands.number(int, lambda v: v >= 1, "a positive integer")
_positive = commands.number(float, lambda v: v > 0, "a positive number of seconds")
_seconds = commands.number(float, lambda v: v >= 0, "a number of seconds >= 0")


def build_parser(watch: bool = False) -> argparse.ArgumentParser:
    """The argument parser (EMAN2's options plus verify/skip, batches and clusters);
    ``watch``: the parser of ``e2compress watch DIR``."""
    p = argparse.ArgumentParser(
        prog="e2compress watch" if watch else "e2compress",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if watch:
        p.add_argument("directory", metavar="DIR", help="the directory to watch (recursively)")
    else:
        p.add_argument(
            "files", nargs="*", metavar="FILE", help="input image files, @LIST files or -"
        )
    p.add_argument(
        "--bits",
        type=_bits,
        default=10,
        help="bits to keep: 0 = lossless float32, 2..16, or auto: per image the fewest "
        "within --noise-fraction of the image's noise (default 10)",
    )
    p.add_argument(
        "--noise-fraction",
        type=_fraction,
        default=DEFAULT_NOISE_FRACTION,
        metavar="F",
        help="most quantisation noise (RMS) allowed, as a fraction of the image's own "
        f"noise, for --bits auto and the quality warning (default {DEFAULT_NOISE_FRACTION})",
    )
    p.add_argument(
        "--apix",
        type=_apix,
        default=None,
        metavar="A",
        help="pixel size in Angstrom for every input (default: from each file's header; "
        "TIFF: ImageJ description or resolution tags)",
    )
    p.add_argument(
        "--eer-grouping",
        type=_threads,
        default=1,
        metavar="N",
        help="EER movies: sum every N frames into one image (default 1: one image a "
        "frame, as EMAN2; about 1,000 mostly empty 4K images a movie)",
    )
    p.add_argument(
        "--counts",
        action="store_true",
        help="gain-normalised float32 movies: store the integer counts and the gain, "
        "exactly (refused unless every pixel is a count times its gain; docs/counts.md)",
    )
    p.add_argument(
        "--compresslevel",
        type=_level,
        default=None,
        metavar="L",
        help="deflate level 0..9 (default 1); no effect on values",
    )
    p.add_argument(
        "--nooutliers",
        action="store_true",
        help="clamp at most 1/20000 of the pixels (>= 8) at each end before ranging",
    )
    p.add_argument(
        "--range",
        type=_pair,
        default=None,
        metavar="MIN,MAX",
        help="values to keep; pixels outside are clamped",
    )
    p.add_argument(
        "--sigrange",
        type=_pair,
        default=None,
        metavar="A,B",
        help="keep mean - A*sigma .. mean + B*sigma",
    )
    p.add_argument(
        "--outpath",
        default=None,
        metavar="DIR",
        help="write outputs into this existing directory (see --mkdir)",
    )
    p.add_argument(
        "--mkdir", action="store_true", help="create the --outpath directory if it is missing"
    )
    p.add_argument(
        "--threads",
        type=_threads,
        default=None,
        metavar="N",
        help="worker threads (default: all cores)",
    )
    p.add_argument(
        "--verbose", "-v", type=int, default=0, metavar="N", help="verbosity: -v, -vv or -v N"
    )
    p.add_argument("--ppid", type=int, default=-1, help="stop cleanly if this process dies")
    p.add_argument(
        "--verify",
        dest="verify",
        action="store_true",
        default=None,
        help="decode every written file and check it before it replaces anything "
        "(default: on for in-place replacement)",
    )
    p.add_argument(
        "--no-verify", dest="verify", action="store_false", help="skip the check, also in place"
    )
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="skip inputs whose output is complete and was made from the input as it is "
        "now with the same --bits and range option (restart a batch with the same command)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace outputs that are write-protected or have several hard links, and "
        "replace an .hdf in place even when the result is larger",
    )
    if not watch:
        p.add_argument(
            "--delete-input",
            action="store_true",
            help="delete each source once its output is verified pixel by pixel, keeps its "
            "header bytes, restores to the source's SHA-256 where exact, and a manifest line "
            "is on disk (see docs/safety.md); implies --verify",
        )
        p.add_argument(
            "--manifest",
            metavar="FILE",
            default=None,
            help=f"JSON-lines manifest of deleted sources (default: {MANIFEST_NAME} in "
            "--outpath, else in the current directory)",
        )
    p.add_argument("--version", action="version", version=f"e2compress {__version__}")
    _add_scale_options(p, watch)
    return p


def _add_scale_options(p: argparse.ArgumentParser, watch: bool) -> None:
    """Batches (lists, trees, report, progress), watch mode and Dask clusters."""
    b = p.add_argument_group("batches")
    if not watch:
        b.add_argument(
            "--recursive",
            action="append",
            default=[],
            metavar="DIR",
            help="compress the files under DIR, mirroring its tree under --outpath",
        )
    b.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="files to take in a tree (default: MRC and TIFF names, plain or .gz/.bz2); "
        "a GLOB with / matches the path under DIR",
    )
    b.add_argument(
        "--exclude", action="append", default=[], metavar="GLOB", help="files to leave out"
    )
    if not watch:
        b.add_argument(
            "--dry-run",
            action="store_true",
            help="print what would be written and check each input exists and is readable; "
            "write nothing",
        )
        b.add_argument(
            "--settle",
            type=_seconds,
            default=SETTLE_SECONDS,
            metavar="S",
            help="an input modified less than S seconds ago may still be being written: wait "
            f"until it has not changed for S seconds (at most {SETTLE_WAIT} x S, then it fails); "
            f"0: no wait (default {SETTLE_SECONDS:g})",
        )
    b.add_argument(
        "--report",
        metavar="FILE",
        help="append a row per file as it ends (and the totals, JSON): FILE.csv or FILE.json "
        "(JSON Lines)",
    )
    b.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    if watch:
        w = p.add_argument_group("watch")
        w.add_argument(
            "--settle",
            type=_positive,
            default=30.0,
            metavar="S",
            help="seconds a file must stay unchanged before it is taken (default 30)",
        )
        w.add_argument(
            "--poll",
            type=_positive,
            default=None,
            metavar="S",
            help="scan every S seconds instead of kernel events (network file systems)",
        )
    d = p.add_argument_group("Dask (pip install 'e2compress[dask]')")
    d.add_argument("--scheduler", metavar="ADDRESS", help="run on this Dask scheduler")
    d.add_argument(
        "--cluster",
        choices=("slurm", "pbs", "sge", "lsf"),
        help="start a Dask cluster through this batch system (dask-jobqueue)",
    )
    d.add_argument("--jobs", type=_threads, default=1, metavar="N", help="--cluster jobs")
    d.add_argument("--queue", help="--cluster queue (partition)")
    d.add_argument("--cores", type=_threads, metavar="N", help="--cluster cores per job")
    d.add_argument("--memory", metavar="SIZE", help="--cluster memory per job, e.g. 64GB")
    d.add_argument("--walltime", metavar="TIME", help="--cluster time limit, e.g. 04:00:00")
    d.add_argument(
        "--dask-config", metavar="FILE", help="Dask YAML configuration (e.g. jobqueue.slurm)"
    )
    d.add_argument(
        "--worker-timeout",
        type=_positive,
        default=600.0,
        metavar="S",
        help="give up (nothing compressed) when no Dask worker has joined after S seconds "
        "(default 600)",
    )


_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Console:
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


def _install_signals(cancel: Cancel) -> dict[int, Any]:
    """Make SIGINT/SIGTERM/SIGHUP set ``cancel``; returns the handlers to restore.

    The handler only sets the token (it raises nothing into whatever the main thread
    is doing): the workers stop at their next block and remove their temporary files.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        cancel.set(signum)

    previous: dict[int, Any] = {}
    for s in _SIGNALS:
        previous[s] = signal.signal(s, handler)
    return previous


def _restore_signals(previous: dict[int, Any]) -> None:
    for s, h in previous.items():
        signal.signal(s, h)


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


def _watch_parent(
    ppid: int, is_parent: bool, cancel: Cancel, gone: threading.Event, done: threading.Event
) -> None:
    """Set ``gone`` and ``cancel`` (as SIGTERM would) once ``ppid`` has exited."""

    def watch() -> None:
        while not done.wait(0.5):
            if not _parent_alive(ppid, is_parent):
                gone.set()
                cancel.set(signal.SIGTERM)
                return

    threading.Thread(target=watch, name="ppid-watch", daemon=True).start()


@dataclass
class _Batch:
    """What every file of one run shares."""

    args: argparse.Namespace
    options: Options
    cancel: Cancel
    console: _Console
    parent_gone: threading.Event
    manifest: Manifest | None = None
    deleted: int = 0
    kept: int = 0

    def cause(self) -> str:
        """Why the run stopped early (the token is set)."""
        if self.parent_gone.is_set():
            return f"stopped because the --ppid process {self.args.ppid} exited"
        return f"interrupted by {signal.Signals(self.cancel.signum or signal.SIGTERM).name}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (see ``--help``).

    SIGINT/SIGTERM/SIGHUP handlers are installed first: they set a Cancel token that
    the file writers check, so an interrupt at any point cleans up. The previous
    handlers are restored on return.
    """
    _quiet_tifffile()
    cancel = Cancel()
    if threading.current_thread() is not threading.main_thread():
        return _main(argv, cancel)  # only the main thread can handle signals
    previous = _install_signals(cancel)
    try:
        return _main(argv, cancel)
    finally:
        _restore_signals(previous)


def _quiet_tifffile() -> None:
    """tifffile logs damaged tags; the CLI reports every problem itself, on one line.

    Logging is the application's to configure: the library installs no handler, the CLI
    gives tifffile's logger a NullHandler (once) so Python's last-resort handler does not
    print its lines on stderr.
    """
    logger = logging.getLogger("tifffile")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())


def _main(argv: Sequence[str] | None, cancel: Cancel) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["watch"]:
        return _main_watch(argv[1:], cancel)
    if commands.is_command(argv):
        return commands.main(argv)
    parser = build_parser()
    args = parser.parse_args(_normalise_argv(argv))
    console = _Console()
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
        console.err(f"e2compress: error: {exc}")
        return 2
    with inputs:
        if args.dry_run:
            return _dry_run(inputs, console)
        batch = _Batch(args, options, cancel, console, threading.Event())
        return _batch(batch, inputs)


def _options(args: argparse.Namespace, console: _Console) -> Options | None:
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
        console.err(f"e2compress: error: {exc}")
        return None


def _dry_run(inputs: Inputs, console: _Console) -> int:
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
def _runner(batch: _Batch) -> Iterator[Runner]:
    """A LocalRunner, or a DaskRunner on --scheduler / a new --cluster (closed after),
    once a worker has joined (saying so while it waits)."""
    args = batch.args
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
            batch.cancel,
            timeout=args.worker_timeout,
            notify=lambda line: batch.console.err(f"e2compress: {line}"),
        )
        yield cluster.DaskRunner(client, threads=args.threads)


def _batch(batch: _Batch, inputs: Inputs) -> int:
    """Run every input; print the lines, the totals and the summary; the exit status."""
    args, console, cancel = batch.args, batch.console, batch.cancel
    watching = args.ppid is not None and args.ppid > 0
    is_parent = watching and os.getppid() == args.ppid
    if watching and not _parent_alive(args.ppid, is_parent):
        batch.parent_gone.set()
        cancel.set(signal.SIGTERM)
    if cancel.is_set():  # before any work: nothing to clean up
        console.err(f"e2compress: {batch.cause()}; no file was compressed")
        return 128 + (cancel.signum or signal.SIGTERM)
    inputs.scan()
    counts = dict.fromkeys(STATUSES, 0)
    totals = Totals()
    watch_done = threading.Event()
    try:
        report = ReportWriter(args.report) if args.report else None
        if args.delete_input:
            batch.manifest = _open_manifest(args)
        with _runner(batch) as runner:
            if watching:
                _watch_parent(args.ppid, is_parent, cancel, batch.parent_gone, watch_done)
            jobs = make_jobs(
                inputs,
                batch.options,
                verify=args.verify,
                skip_existing=args.skip_existing,
                force=args.force,
                settle=args.settle,
            )
            _run(batch, runner, jobs, counts, totals, report, inputs)
    except E2CompressError as exc:  # a report or a cluster that cannot be had: no work done
        console.err(f"e2compress: error: {exc}")
        return 2
    finally:
        watch_done.set()
        if batch.manifest is not None:
            batch.manifest.close()
    summary = f"{counts['done']} compressed, {counts['failed']} failed, {counts['skipped']} skipped"
    if args.delete_input:
        summary += f"; {batch.deleted} inputs deleted, {batch.kept} kept"
    many = inputs.count > 1
    if cancel.is_set():  # one line for the batch unless the file's own line says it all
        if many or not counts["stopped"]:
            unwritten = counts["stopped"] + counts["unstarted"]
            console.err(f"e2compress: {batch.cause()}: {summary}, {unwritten} not written")
        return 128 + (cancel.signum or signal.SIGTERM)
    if args.verbose or args.report:
        console.out(totals.line())
    if counts["failed"] or args.verbose or many:
        console.out(summary)
    return 1 if counts["failed"] else 0


def _run(
    batch: _Batch,
    runner: Runner,
    jobs: Iterable[Job | None],
    counts: dict[str, int],
    totals: Totals,
    report: ReportWriter | None,
    inputs: Inputs | None = None,
) -> None:
    """Run ``jobs``, printing each file's lines; counts, totals and report rows."""
    args = batch.args
    progress = Progress(
        inputs.count if inputs else 0,
        inputs.total_bytes if inputs else 0,
        bar=False if args.no_progress or inputs is None else None,
        verbose=args.verbose,
    )
    batch.console.around = progress.writing
    t0 = time.perf_counter()

    def on_tick(t: Tick) -> None:
        if t.waiting is not None and args.verbose:
            batch.console.out(
                f"Waiting for {t.given}: modified {t.waiting:.1f} s ago, it may still be "
                f"being written (--settle {args.settle:g})"
            )
        elif t.done == t.total == 0 and args.verbose:
            batch.console.out(f"Processing {t.given} -> {t.target}")
        progress.tick(t)

    if inputs is None:  # watch mode: the files are counted as they come
        jobs = progress.counting(jobs)
    try:
        for r in runner.run(jobs, batch.cancel, on_tick):
            counts[r.status] += 1
            totals.add(r)
            progress.done(r)
            _print_result(batch, r)
            if batch.manifest is not None and r.status == "done" and not batch.cancel.is_set():
                _delete(batch, r)
            if report is not None:
                report.add(r)
    finally:
        totals.seconds = time.perf_counter() - t0
        progress.close()
        batch.console.around = nullcontext
        if report is not None:
            report.close(totals)


def _open_manifest(args: argparse.Namespace) -> Manifest:
    path = args.manifest or os.path.join(args.outpath or ".", MANIFEST_NAME)
    try:
        return Manifest(path)
    except OSError as exc:
        raise E2CompressError(f"cannot open the manifest {path}: {exc.strerror or exc}") from None


def _delete(batch: _Batch, r: FileResult) -> None:
    """``--delete-input`` for one compressed file (see :mod:`e2compress.deletion`)."""
    assert batch.manifest is not None
    try:
        outcome = delete_source(
            r.source, r.target, batch.manifest, verified=r.verified, bits=r.bits
        )
    except Exception as exc:  # a bug: the file is kept, the batch goes on
        batch.kept += 1
        batch.console.err(f"WARNING: {r.source}: not deleted: unexpected error: {exc!r}")
        return
    if outcome.deleted:
        batch.deleted += 1
        if batch.args.verbose:
            batch.console.out(outcome.message)
    else:
        batch.kept += 1
        batch.console.err(f"WARNING: {outcome.message}")


def _print_result(batch: _Batch, r: FileResult) -> None:
    """The lines for one finished file."""
    console, verbose = batch.console, batch.args.verbose
    for line in dict.fromkeys(r.warnings):
        console.err(f"WARNING: {line}")
    if r.status == "failed":
        console.err(f"ERROR: {r.message}")
    elif r.status == "stopped":
        console.err("ERROR: " + r.message.replace(": interrupted;", f": {batch.cause()};", 1))
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


def _main_watch(argv: Sequence[str], cancel: Cancel) -> int:
    """``e2compress watch DIR --outpath OUT [options]``: runs until a signal stops it."""
    parser = build_parser(watch=True)
    args = parser.parse_args(_normalise_argv(argv))
    console = _Console()
    if args.outpath is None:
        console.err("e2compress: error: watch needs --outpath (an existing directory)")
        return 2
    options = _options(args, console)
    if options is None:
        return 2
    try:
        from .watch import Watcher, WatchRunner
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
    batch = _Batch(args, options, cancel, console, threading.Event())
    counts = dict.fromkeys(STATUSES, 0)
    totals = Totals()
    watch_done = threading.Event()

    def make_job(item: Item) -> Job:
        (job,) = make_jobs([item], options, verify=args.verify, force=args.force)
        return job

    try:
        report = ReportWriter(args.report) if args.report else None
        with _runner(batch) as runner:
            if args.ppid is not None and args.ppid > 0:
                is_parent = os.getppid() == args.ppid
                _watch_parent(args.ppid, is_parent, cancel, batch.parent_gone, watch_done)
            if args.verbose:
                console.out(f"Watching {args.directory} -> {args.outpath}")
            with watcher:
                jobs = watcher.jobs(make_job, cancel)
                _run(batch, WatchRunner(runner, watcher), jobs, counts, totals, report)
    except E2CompressError as exc:
        console.err(f"e2compress: error: {exc}")
        return 2
    finally:
        watch_done.set()
    summary = f"{counts['done']} compressed, {counts['failed']} failed, {counts['skipped']} skipped"
    console.out(f"e2compress watch: {batch.cause()}: {summary}")
    return 128 + (cancel.signum or signal.SIGTERM)


def entry() -> None:
    """Console-script entry point. A reader that goes away (``e2compress info ... |
    head``) ends a subcommand quietly with status 141, as SIGPIPE would; a compression
    batch goes on (see :class:`_Console`) and keeps its own status."""
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
