"""The ``e2compress`` command line (EMAN2's options, verbatim): parses, then calls the library."""

from __future__ import annotations

import argparse
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

from . import __version__, commands
from .errors import E2CompressError, Interrupted
from .pipeline import STOP, Options, compress_file, make_pool, output_is_complete, output_path

DESCRIPTION = """\
Convert image files (MRC/MRCS/MAP/CCP4 incl. .gz/.bz2, TIFF, EMAN2 HDF) to
bit-truncated, deflate-compressed EMAN2 HDF5. An .hdf input is replaced in place;
any other input gets the same name with .hdf (beside it, or in --outpath).

Values are stored as N-bit integers with the mapping in the file; EMAN2, and
e2compress.read_images / e2compress.open in Python, rescale them on read. Integer
data that fits in 2^bits levels reads back exactly; for data spanning zero, 0.0
reads back as exactly 0.0. --bits 0 stores float32 losslessly. Guidance: 5 bits
for raw movie frames, 8-12 for averages and maps. --nooutliers is strongly
recommended for micrographs and movies."""

EPILOG = """\
typical usage:
  e2compress --nooutliers --outpath ../micrographs_5bit --threads 32 -v 2 --bits 5 *.mrc

exit status: 0 if every file was compressed (or skipped), 1 if any failed,
2 for bad options, 130/143 when interrupted (SIGINT/SIGTERM)."""

_VALUE_OPTS = ("--range", "--sigrange")


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
        type=int,
        default=10,
        help="bits to keep: 0 = lossless float32, 2..16 (default 10)",
    )
    p.add_argument(
        "--compresslevel",
        type=int,
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
        "--threads", type=int, default=None, metavar="N", help="worker threads (default: all cores)"
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


def _install_signals() -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        STOP.set()
        raise Interrupted(signum)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


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
    """Run the command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if commands.is_command(argv):
        return commands.main(argv)
    _install_signals()
    STOP.clear()
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
    if args.threads is not None and args.threads < 1:
        print("e2compress: error: --threads must be >= 1", file=sys.stderr)
        return 2
    level = 1 if args.compresslevel is None else args.compresslevel
    common: dict[str, object] = {
        "bits": args.bits,
        "level": level,
        "value_range": args.range,
        "sigrange": args.sigrange,
        "nooutliers": args.nooutliers,
        "verify": args.verify,
        "store_level": args.compresslevel is not None,
    }
    try:
        Options(args.bits, level, args.range, args.sigrange, args.nooutliers).validate()
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
        return _run(args, common)
    finally:
        watch_done.set()


_IN_PROGRESS: dict[str, None] = {}  # inputs being written now, in start order


def _compress_one(
    f: str, args: argparse.Namespace, common: dict[str, object], pool: Executor
) -> tuple[str, str]:
    """Compress one input; returns (status, message) with status done/skipped/failed."""
    verbose = args.verbose
    target = output_path(f, args.outpath)
    if args.skip_existing and output_is_complete(f, target, args.bits):
        return "skipped", f"Skipping {f}: {target} is complete"
    if verbose:
        print(f"Processing {f} -> {target}")
    _IN_PROGRESS[f] = None
    try:
        report = compress_file(f, target, pool=pool, **common)  # type: ignore[arg-type]
    except E2CompressError as exc:
        return "failed", str(exc)
    except Exception as exc:  # a bug, reported without a traceback
        return "failed", f"{f}: unexpected error: {type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        _IN_PROGRESS.pop(f, None)
    trunc = report.truncated
    return "done", (
        f"{report.seconds:0.1f} s  {f}: {report.bytes_in / 1e6:.1f} MB -> "
        f"{report.bytes_out / 1e6:.1f} MB  ({report.ratio:.2f}x)"
        + (f"  {trunc} pixels clamped" if trunc else "")
    )


def _run(args: argparse.Namespace, common: dict[str, object]) -> int:
    """Compress every file (two at a time when there are threads to spare)."""
    verbose = args.verbose
    failed: list[str] = []
    counts = {"done": 0, "skipped": 0, "failed": 0}
    pool = make_pool(args.threads)
    width = args.threads or os.cpu_count() or 1
    files = ThreadPoolExecutor(max_workers=2 if width > 1 and len(args.files) > 1 else 1)
    try:
        futures = [files.submit(_compress_one, f, args, common, pool) for f in args.files]
        for fut in futures:
            status, message = fut.result()
            counts[status] += 1
            if status == "failed":
                print(f"ERROR: {message}", file=sys.stderr)
                failed.append(message)
            elif verbose > (1 if status == "done" else 0):
                print(message)
    except Interrupted as exc:
        STOP.set()
        stopped = list(_IN_PROGRESS)
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
