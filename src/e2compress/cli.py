"""The ``e2compress`` command line (EMAN2's options, verbatim): parses, then calls the library."""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

from . import __version__, commands
from .errors import E2CompressError, Interrupted
from .executor import Cancel, make_pool
from .fidelity import DEFAULT_NOISE_FRACTION
from .options import AUTO_BITS, Options
from .pipeline import compress_file, output_is_complete, output_path
from .report import CompressReport, bits_text

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
export IN.hdf OUT.mrc|OUT.tif; see e2compress VERB --help. Compress a file
named like a subcommand as ./info."""

EPILOG = """\
typical usage (EMAN2's example; --bits auto chooses by each image's noise):
  e2compress --nooutliers --outpath ../micrographs_5bit --threads 32 -v 2 --bits 5 *.mrc
  e2compress --nooutliers --outpath ../micrographs --threads 32 -v 2 --bits auto *.mrc

exit status: 0 if every file was compressed (or skipped), 1 if any failed,
2 for bad options, 130/143 when interrupted (SIGINT/SIGTERM)."""

_VALUE_OPTS = ("--range", "--sigrange")
FLAGS = {
    "bits": "--bits",
    "level": "--compresslevel",
    "value_range": "--range",
    "sigrange": "--sigrange",
    "nooutliers": "--nooutliers",
    "noise_fraction": "--noise-fraction",
    "apix": "--apix",
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


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and 0 < value <= 10):
        raise argparse.ArgumentTypeError(f"expected a number > 0 and <= 10, not {text!r}")
    return value


def _apix(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive pixel size, not {text!r}")
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
        help="skip inputs whose output already exists and is a valid EMAN2 file "
        "(restart an interrupted batch with the same command)",
    )
    p.add_argument("--version", action="version", version=f"e2compress {__version__}")
    return p


_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _install_signals(cancel: Cancel) -> dict[int, Any]:
    """Make SIGINT/SIGTERM/SIGHUP cancel the run; returns the handlers to restore."""

    def handler(signum: int, frame: FrameType | None) -> None:
        cancel.set(signum)
        raise Interrupted(signum)

    previous: dict[int, Any] = {}
    for s in _SIGNALS:
        previous[s] = signal.signal(s, handler)
    return previous


def _restore_signals(previous: dict[int, Any]) -> None:
    for s, h in previous.items():
        signal.signal(s, h)


def _watch_parent(ppid: int, done: threading.Event) -> None:
    def watch() -> None:
        while not done.is_set():
            try:
                os.kill(ppid, 0)
            except ProcessLookupError:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            except PermissionError:
                pass
            time.sleep(0.5)

    threading.Thread(target=watch, name="ppid-watch", daemon=True).start()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    Signal handlers are installed first (an interrupt at any point cleans up) and the
    previous ones are restored on return.
    """
    if threading.current_thread() is not threading.main_thread():
        return _main(argv, Cancel())
    cancel = Cancel()
    previous = _install_signals(cancel)
    try:
        return _main(argv, cancel)
    except Interrupted as exc:  # before or after the run itself: nothing half-written
        name = signal.Signals(exc.signum or signal.SIGTERM).name
        print(f"e2compress: interrupted by {name}", file=sys.stderr)
        return 128 + (exc.signum or signal.SIGTERM)
    finally:
        _restore_signals(previous)


def _main(argv: Sequence[str] | None, cancel: Cancel) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if commands.is_command(argv):
        return commands.main(argv)
    parser = build_parser()
    watch_done = threading.Event()
    args = parser.parse_args(_normalise_argv(argv))
    if not args.files:
        parser.print_usage(sys.stderr)
        print("e2compress: error: no input files", file=sys.stderr)
        return 2
    if args.ppid is not None and args.ppid > 0:
        _watch_parent(args.ppid, watch_done)
    if args.outpath is not None:
        out_dir = Path(args.outpath)
        if not out_dir.is_dir() or not os.access(out_dir, os.W_OK | os.X_OK):
            print(
                f"e2compress: error: --outpath must be an existing, writable directory: "
                f"{args.outpath}",
                file=sys.stderr,
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
            noise_fraction=args.noise_fraction,
            apix=args.apix,
        ).validate(FLAGS)
    except E2CompressError as exc:
        print(f"e2compress: error: {exc}", file=sys.stderr)
        return 2
    targets: dict[Path, str] = {}
    for f in args.files:
        target = output_path(f, args.outpath)
        key = Path(os.path.abspath(target))
        if key in targets:
            print(
                f"e2compress: error: {f} and {targets[key]} would both be written to {target}",
                file=sys.stderr,
            )
            return 2
        targets[key] = f
    try:
        return _run(args, options, cancel)
    finally:
        watch_done.set()


def _compress_one(
    f: str,
    args: argparse.Namespace,
    options: Options,
    pool: Executor,
    cancel: Cancel,
    in_progress: dict[str, None],
) -> tuple[str, str, CompressReport | None]:
    """Compress one input; returns (status, message, report) with status
    done/skipped/failed (the report only when done)."""
    verbose = args.verbose
    target = output_path(f, args.outpath)
    if args.skip_existing and output_is_complete(f, target, args.bits):
        return "skipped", f"Skipping {f}: {target} is complete", None
    if verbose:
        print(f"Processing {f} -> {target}")
    in_progress[f] = None
    try:
        report = compress_file(
            f, target, options=options, verify=args.verify, pool=pool, cancel=cancel
        )
    except E2CompressError as exc:
        return "failed", str(exc), None
    except Exception as exc:  # a bug, reported without a traceback
        message = f"{f}: unexpected error: {type(exc).__name__}: {exc}".splitlines()[0]
        return "failed", message, None
    finally:
        in_progress.pop(f, None)
    trunc = report.truncated
    return (
        "done",
        (
            f"{report.seconds:0.1f} s  {f}: {report.bytes_in / 1e6:.1f} MB -> "
            f"{report.bytes_out / 1e6:.1f} MB  ({report.ratio:.2f}x)"
            + (f"  {trunc} pixels clamped" if trunc else "")
        ),
        report,
    )


def _auto_note(f: str, report: CompressReport) -> str:
    """What --bits auto chose for one file (printed with -v)."""
    noisy = [im for im in report.images if im.noise is not None]
    text = f"{f}: --bits auto chose {bits_text(report.images)}"
    if noisy:
        worst = max(noisy, key=lambda im: im.noise_ratio or 0.0)
        ratio = worst.noise_ratio or 0.0
        text += f" (image noise {worst.noise:.3g}, "
        text += f"quantisation noise {ratio:.3g} x that" if ratio else "stored exactly"
        if len(report.images) > 1:
            text += f" in the worst of {len(report.images)} images"
        text += ")"
    return text


def _run(args: argparse.Namespace, options: Options, cancel: Cancel) -> int:
    """Compress every file (two at a time when there are threads to spare)."""
    verbose = args.verbose
    failed: list[str] = []
    counts = {"done": 0, "skipped": 0, "failed": 0}
    in_progress: dict[str, None] = {}  # inputs being written now, in start order
    pool = make_pool(args.threads)
    width = args.threads or os.cpu_count() or 1
    files = ThreadPoolExecutor(max_workers=2 if width > 1 and len(args.files) > 1 else 1)
    try:
        futures = [
            files.submit(_compress_one, f, args, options, pool, cancel, in_progress)
            for f in args.files
        ]
        for f, fut in zip(args.files, futures, strict=True):
            status, message, report = fut.result()
            counts[status] += 1
            if status == "failed":
                print(f"ERROR: {message}", file=sys.stderr)
                failed.append(message)
            elif verbose > (1 if status == "done" else 0):
                print(message)
            if report is not None:
                if verbose and options.auto:
                    print(_auto_note(f, report))
                for warning in report.warnings:
                    print(f"WARNING: {warning}", file=sys.stderr)
    except Interrupted as exc:
        cancel.set(exc.signum)
        stopped = list(in_progress)
        files.shutdown(wait=True, cancel_futures=True)
        signum = exc.signum or signal.SIGTERM
        name = signal.Signals(signum).name
        for f in stopped:
            print(
                f"ERROR: {f}: interrupted by {name}; output not written, input unchanged",
                file=sys.stderr,
            )
        if not stopped:
            print(f"e2compress: interrupted by {name}", file=sys.stderr)
        return 128 + signum
    finally:
        files.shutdown(wait=True, cancel_futures=True)
        pool.shutdown(wait=True, cancel_futures=True)
    if failed or verbose or len(args.files) > 1:
        for msg in failed:
            print(f"failed: {msg}")
        print(
            f"{counts['done']} compressed, {counts['failed']} failed, {counts['skipped']} skipped"
        )
    return 1 if failed else 0


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
