"""The ``e2compress`` command line (EMAN2's options, verbatim): parses, then calls the library."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from . import __version__
from .errors import E2CompressError, Interrupted
from .executor import Cancel, make_pool
from .options import Options
from .pipeline import compress_file, output_is_complete, output_path

DESCRIPTION = """\
Convert image files (MRC/MRCS/MAP/CCP4 incl. .gz/.bz2, TIFF, EMAN2 HDF) to
bit-truncated, deflate-compressed EMAN2 HDF5. An .hdf input is replaced in place;
any other input gets the same name with .hdf (beside it, or in --outpath).

Values are stored as N-bit integers with the mapping in the file; EMAN2, and
e2compress.read_images / e2compress.open in Python, rescale them on read. Integer
data that fits in 2^bits levels reads back exactly; for data spanning zero, 0.0
reads back as exactly 0.0. --bits 0 stores float32 losslessly. Guidance: 5 bits
for raw movie frames, 8-12 for averages and maps. --nooutliers is strongly
recommended for micrographs and movies.

Recompressing an .hdf that is already quantised rounds values that were rounded
before: to fewer bits, the new rounding error adds to the old one (up to half an
old step plus half a new step); more bits gain nothing - the lost precision does
not come back - and only make the file larger. Compress from the original data
when you have it."""

EPILOG = """\
typical usage:
  e2compress --nooutliers --outpath ../micrographs_5bit --threads 32 -v 2 --bits 5 *.mrc

output: one line per event. stderr: "ERROR: FILE: ..." once per failed file, as it
happens, and "WARNING: FILE: ..." lines; stdout: with -v, "Processing" and
"Skipping" lines, with -v 2 one "<seconds> s  FILE: ..." line per file; and, for
more than one file, -v or any failure, a last line "N compressed, M failed, K skipped".

Inputs that would be written to the same output (x.map and x.map.bz2, a.mrc and
a.tif, or two a.mrc from different directories with --outpath) are each reported
as failed and not compressed; the others run. A file given twice is compressed once
(one WARNING line; the repeat counts as skipped).

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
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 0 or an integer 2..16, not {text!r}") from None
    if value != 0 and not 2 <= value <= 16:
        raise argparse.ArgumentTypeError(f"expected 0 (lossless) or 2..16, not {value}")
    return value


def _level(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 9:
        raise argparse.ArgumentTypeError(f"expected an integer 0..9, not {text!r}")
    return value


def _threads(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (EMAN2's options plus verify/skip)."""
    p = argparse.ArgumentParser(
        prog="e2compress",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="*", metavar="FILE", help="input image files")
    p.add_argument(
        "--bits",
        type=_bits,
        default=10,
        help="bits to keep: 0 = lossless float32, 2..16 (default 10)",
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
        "--outpath", default=None, metavar="DIR", help="write outputs into this existing directory"
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
    p.add_argument("--version", action="version", version=f"e2compress {__version__}")
    return p


_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Console:
    """Whole lines: each a single write of ``line + "\n"`` under one lock (shared by stdout
    and stderr), flushed at once, so lines of files running at once never mix."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed: set[int] = set()  # streams whose reader went away (``| head``)

    def out(self, text: str) -> None:
        """One line on stdout."""
        self._write(sys.stdout, text)

    def err(self, text: str) -> None:
        """One line on stderr."""
        self._write(sys.stderr, text)

    def _write(self, stream: TextIO, text: str) -> None:
        line = " ".join(text.splitlines()) + "\n"
        with self._lock:
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
    pool: Executor | None = None

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
    cancel = Cancel()
    if threading.current_thread() is not threading.main_thread():
        return _main(argv, cancel)  # only the main thread can handle signals
    previous = _install_signals(cancel)
    try:
        return _main(argv, cancel)
    finally:
        _restore_signals(previous)


def _main(argv: Sequence[str] | None, cancel: Cancel) -> int:
    parser = build_parser()
    args = parser.parse_args(_normalise_argv(sys.argv[1:] if argv is None else argv))
    console = _Console()
    if not args.files:
        parser.print_usage(sys.stderr)
        console.err("e2compress: error: no input files")
        return 2
    if args.outpath == "":  # Path("") would be the current directory: an unset variable?
        console.err("e2compress: error: --outpath is empty (give a directory; . for this one)")
        return 2
    if args.outpath is not None:
        out_dir = Path(args.outpath)
        if not out_dir.is_dir() or not os.access(out_dir, os.W_OK | os.X_OK):
            console.err(
                f"e2compress: error: --outpath must be an existing, writable directory: "
                f"{args.outpath}"
            )
            return 2
    level = 1 if args.compresslevel is None else args.compresslevel
    try:
        options = Options(
            bits=args.bits,
            level=level,
            value_range=args.range,
            sigrange=args.sigrange,
            nooutliers=args.nooutliers,
            store_level=args.compresslevel is not None,
        ).validate(FLAGS)
    except E2CompressError as exc:
        console.err(f"e2compress: error: {exc}")
        return 2
    batch = _Batch(args, options, cancel, console, threading.Event())
    watching = args.ppid is not None and args.ppid > 0
    is_parent = watching and os.getppid() == args.ppid
    if watching and not _parent_alive(args.ppid, is_parent):
        batch.parent_gone.set()
        cancel.set(signal.SIGTERM)
    if cancel.is_set():  # before any work: nothing to clean up
        console.err(f"e2compress: {batch.cause()}; no file was compressed")
        return 128 + (cancel.signum or signal.SIGTERM)
    run, collided, repeated = _plan(args.files, args.outpath)
    for line in collided:
        console.err(f"ERROR: {line}")
    for line in repeated:
        console.err(f"WARNING: {line}")
    counts = {"done": 0, "failed": len(collided), "skipped": len(repeated)}
    counts.update(stopped=0, unstarted=0)
    watch_done = threading.Event()
    if watching:
        _watch_parent(args.ppid, is_parent, cancel, batch.parent_gone, watch_done)
    try:
        _run(batch, run, counts)
    finally:
        watch_done.set()
    summary = f"{counts['done']} compressed, {counts['failed']} failed, {counts['skipped']} skipped"
    if cancel.is_set():  # one line for the batch unless the file's own line says it all
        if len(args.files) > 1 or not counts["stopped"]:
            unwritten = counts["stopped"] + counts["unstarted"]
            console.err(f"e2compress: {batch.cause()}: {summary}, {unwritten} not written")
        return 128 + (cancel.signum or signal.SIGTERM)
    if counts["failed"] or args.verbose or len(args.files) > 1:
        console.out(summary)
    return 1 if counts["failed"] else 0


def _plan(files: Sequence[str], outpath: str | None) -> tuple[list[str], list[str], list[str]]:
    """Split ``files`` into the inputs to compress, one failure line for each input whose
    output another input would also write (naming both), and one warning line for each
    repeat of an input already listed (it is compressed once)."""

    def place(p: Path) -> str:  # where a name lands: the directory resolved, not the name
        return os.path.join(os.path.realpath(p.parent), p.name)

    targets = [output_path(f, outpath) for f in files]
    keys = [(os.path.realpath(f), place(t)) for f, t in zip(files, targets, strict=True)]
    writers: dict[str, dict[str, str]] = {}  # output -> {input: its first name given}
    for f, (src, dst) in zip(files, keys, strict=True):
        writers.setdefault(dst, {}).setdefault(src, f)
    run: list[str] = []
    collided: list[str] = []
    repeated: list[str] = []
    seen: set[tuple[str, str]] = set()
    for f, target, (src, dst) in zip(files, targets, keys, strict=True):
        if (src, dst) in seen:
            repeated.append(f"{f}: given more than once; compressed once")
            continue
        seen.add((src, dst))
        others = [name for other, name in writers[dst].items() if other != src]
        if others:
            collided.append(
                f"{f}: {' and '.join(others)} would also be written to {target}; "
                + ("neither is compressed" if len(others) == 1 else "none of them is compressed")
            )
        else:
            run.append(f)
    return run, collided, repeated


def _compress_one(f: str, batch: _Batch) -> tuple[str, str]:
    """Compress one input; returns (status, message) with status done/skipped/failed.

    Raises:
        Interrupted: the batch's token was set while this file was being written.
    """
    args = batch.args
    verbose = args.verbose
    target = output_path(f, args.outpath)
    if args.skip_existing and output_is_complete(f, target, batch.options):
        return "skipped", f"Skipping {f}: {target} is complete"
    if verbose:
        batch.console.out(f"Processing {f} -> {target}")
    try:
        report = compress_file(
            f,
            target,
            options=batch.options,
            verify=args.verify,
            force=args.force,
            pool=batch.pool,
            cancel=batch.cancel,
        )
    except E2CompressError as exc:
        return "failed", str(exc) if exc.path else f"{f}: {exc}"
    except Exception as exc:  # a bug, reported without a traceback
        return "failed", f"{f}: unexpected error: {type(exc).__name__}: {exc}".splitlines()[0]
    for line in dict.fromkeys(report.warnings):
        batch.console.err(f"WARNING: {line}")
    trunc = report.truncated
    return "done", (
        f"{report.seconds:0.1f} s  {f}: {report.bytes_in / 1e6:.1f} MB -> "
        f"{report.bytes_out / 1e6:.1f} MB  ({report.ratio:.2f}x)"
        + (f"  {trunc} pixels clamped" if trunc else "")
    )


def _job(f: str, batch: _Batch) -> str:
    """Compress ``f`` and print its lines; returns its status: done, skipped, failed,
    stopped (interrupted while being written) or unstarted."""
    if batch.cancel.is_set():
        return "unstarted"
    try:
        status, message = _compress_one(f, batch)
    except Interrupted:
        batch.console.err(f"ERROR: {f}: {batch.cause()}; output not written, input unchanged")
        return "stopped"
    if status == "failed":
        batch.console.err(f"ERROR: {message}")
    elif batch.args.verbose > (1 if status == "done" else 0):
        batch.console.out(message)
    return status


def _run(batch: _Batch, files: list[str], counts: dict[str, int]) -> None:
    """Compress ``files`` (two at a time when there are threads to spare) into ``counts``."""
    threads = batch.args.threads
    batch.pool = make_pool(threads)
    width = threads or os.cpu_count() or 1
    runner = ThreadPoolExecutor(max_workers=2 if width > 1 and len(files) > 1 else 1)
    try:
        futures = [runner.submit(_job, f, batch) for f in files]
        pending = set(futures)
        while pending:  # wake now and then: a signal taken by a worker thread runs its
            _, pending = wait(pending, timeout=0.25)  # Python handler only in this one
        for fut in futures:
            counts[fut.result()] += 1
    finally:
        runner.shutdown(wait=True, cancel_futures=True)
        batch.pool.shutdown(wait=True, cancel_futures=True)


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
