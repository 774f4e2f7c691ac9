"""Subcommands beside EMAN2's command line: ``info``, ``compare``, ``export``,
``restore``, ``check``.

``e2compress VERB ...`` runs a subcommand when VERB is the first argument; anything
else is EMAN2's compression command line, unchanged. A file literally named like a
verb is compressed as ``e2compress ./info`` (or ``e2compress -- info``).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from . import __version__
from .errors import E2CompressError

if TYPE_CHECKING:
    from .audit import CheckResult
    from .compare import Comparison

T = TypeVar("T")

VERBS = ("info", "compare", "export", "restore", "check")


def is_command(argv: Sequence[str]) -> bool:
    """True when ``argv`` (without the program name) starts with a subcommand verb."""
    return bool(argv) and argv[0] in VERBS


def number(
    cast: Callable[[str], float], ok: Callable[[float], bool], expected: str
) -> Callable[[str], Any]:
    """An argparse type: ``cast(text)`` when it is finite and ``ok`` accepts it, else
    "expected ..." (shared by the compression command line and the subcommands)."""

    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"expected {expected}, not {text!r}")
        return value

    return parse


_positive = number(float, lambda v: v > 0, "a positive number")
_threshold = number(float, lambda v: 0 < v < 1, "a threshold between 0 and 1")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``e2compress info|compare|export|restore|check``."""
    p = argparse.ArgumentParser(
        prog="e2compress",
        description="Inspect, check and convert back e2compress (EMAN2 HDF) files.",
        epilog="Without a subcommand, e2compress compresses files (see e2compress --help). "
        "Compress a file named like a subcommand as ./info or after --.",
    )
    p.add_argument("--version", action="version", version=f"e2compress {__version__}")
    sub = p.add_subparsers(
        dest="verb", required=True, metavar="{info,compare,export,restore,check}"
    )

    info = sub.add_parser(
        "info",
        help="how each image is stored",
        description="Per file and image: shape, stored type, bits, range, step, truncated "
        "pixels, filters, chunks, stored bytes, ratio against float32, pixel size.",
    )
    info.add_argument("files", nargs="+", metavar="FILE")
    info.add_argument("--json", action="store_true", help="one JSON object per file per line")

    cmp = sub.add_parser(
        "compare",
        help="errors, noise and FRC of a compressed file against its original",
        description="Per image and overall: max and RMS error (also in steps), truncated "
        "pixels, the image's noise and the ratio of quantisation noise to it, and the "
        "Fourier ring/shell correlation of original and decoded with the resolution where "
        "it drops below the threshold. Exit status 1 when the files do not hold the same "
        "images.",
    )
    cmp.add_argument("original", metavar="ORIGINAL")
    cmp.add_argument("compressed", metavar="COMPRESSED")
    cmp.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    cmp.add_argument(
        "--plot", metavar="PNG", help="write the FRC curve and error histogram (needs [plot])"
    )
    cmp.add_argument(
        "--threshold",
        type=_threshold,
        default=0.999,
        help="FRC/FSC threshold for the resolution figure (default 0.999)",
    )
    cmp.add_argument("--apix", type=_positive, help="pixel size in Angstrom (overrides headers)")
    cmp.add_argument("--summary", action="store_true", help="only the overall figures")

    exp = sub.add_parser(
        "export",
        help="write MRC or TIFF again (for RELION, cryoSPARC, Chimera)",
        description="Decode IN (EMAN2 HDF) into OUT: .mrc/.mrcs/.map (mrcfile) or .tif "
        "(tifffile). Float32 values, or the original integer type where every image was "
        "stored exactly. Pixel size and origin restored, standard axis order, TIFF rows "
        "flipped back. Written atomically; an existing OUT is kept unless --force.",
    )
    exp.add_argument("input", metavar="IN")
    exp.add_argument("output", metavar="OUT")
    exp.add_argument("--force", action="store_true", help="replace OUT if it exists")
    exp.add_argument("--float", action="store_true", help="always write float32")
    exp.add_argument(
        "--tiff-compression",
        choices=("none", "zlib", "lzw"),
        default="none",
        help="TIFF compression (default none: every reader)",
    )

    res = sub.add_parser(
        "restore",
        help="rebuild the original file from an archive (byte for byte when exact)",
        description="Rebuild the source file of ARCHIVE from its kept header bytes and "
        "its images. Byte for byte (SHA-256 checked against the recorded one) when every "
        "value was stored exactly; otherwise headers identical and the decoded pixels, "
        "and it says so. OUT: a file, or a directory to write the source's name into "
        "(default: beside the archive). An existing file is kept unless --force.",
    )
    res.add_argument("archive", metavar="ARCHIVE")
    res.add_argument("output", metavar="OUT", nargs="?")
    res.add_argument("--force", action="store_true", help="replace OUT if it exists")

    chk = sub.add_parser(
        "check",
        help="read every chunk of archives again (bit rot), optionally against originals",
        description="Read every chunk of each ARCHIVE again: its Fletcher-32 checksum, its "
        "deflate stream and its place in the file. With --originals, also decode every "
        "image and compare it pixel by pixel with the original, as the compression's own "
        "verification does. One line per archive (one per problem); exit status 1 when "
        "any archive has a problem.",
    )
    chk.add_argument("archives", nargs="+", metavar="ARCHIVE")
    chk.add_argument(
        "--originals",
        metavar="PATH",
        help="the original file (one ARCHIVE), or a directory holding each archive's "
        "original under the name the archive records",
    )
    chk.add_argument(
        "--threads", type=number(int, lambda v: v >= 1, "a positive integer"), default=None
    )
    chk.add_argument("--json", action="store_true", help="one JSON object per archive per line")
    return p


def main(argv: Sequence[str]) -> int:
    """Run a subcommand; returns the exit status."""
    args = build_parser().parse_args(list(argv))
    try:
        if args.verb == "info":
            return _info(args)
        if args.verb == "compare":
            return _compare(args)
        if args.verb == "restore":
            return _restore(args)
        if args.verb == "check":
            return _check(args)
        return _export(args)
    except KeyboardInterrupt:
        print("e2compress: interrupted", file=sys.stderr)
        return 130


def _error(message: str) -> None:
    print(f"ERROR: {message}", file=sys.stderr)


def _unexpected(path: str, exc: Exception) -> str:
    return f"{path}: unexpected error: {type(exc).__name__}: {exc}".splitlines()[0]


def flagged(text: str, words: Mapping[str, str]) -> str:
    """A library message in the command line's words: each key of ``words`` (a
    parameter as the library names it) replaced by its value (the option)."""
    for name, flag in words.items():
        text = text.replace(name, flag)
    return text


def _attempt(path: str, work: Callable[[], T], words: Mapping[str, str] | None = None) -> T | None:
    """``work()``, or None after one ERROR line naming ``path`` (no traceback, even
    for a bug); ``words``: see :func:`flagged`."""
    try:
        return work()
    except E2CompressError as exc:
        _error(flagged(str(exc), words or {}))
    except Exception as exc:  # a bug, reported without a traceback
        _error(_unexpected(path, exc))
    return None


def _info(args: argparse.Namespace) -> int:
    from .info import file_info, format_info

    status = 0
    for path in args.files:
        info = _attempt(path, functools.partial(file_info, path))
        if info is None:
            status = 1
            continue
        if args.json:
            print(json.dumps(info.to_dict()))
        else:
            print(format_info(info))
    return status


def _compare(args: argparse.Namespace) -> int:
    from .compare import compare_files, format_comparison, plot_comparison

    def work() -> Comparison:
        result = compare_files(
            args.original, args.compressed, threshold=args.threshold, apix=args.apix
        )
        if args.plot:
            plot_comparison(result, args.plot)
        return result

    result = _attempt(args.compressed, work, {"plotting needs": "--plot needs"})
    if result is None:
        return 1
    if args.json:
        print(json.dumps(_json_safe(result.to_dict())))
    else:
        print(format_comparison(result, summary=args.summary))
    return 0


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _export(args: argparse.Namespace) -> int:
    from .export import export_file

    report = _attempt(
        args.input,
        lambda: export_file(
            args.input,
            args.output,
            force=args.force,
            as_float=args.float,
            tiff_compression=None if args.tiff_compression == "none" else args.tiff_compression,
        ),
        {"pass force=True": "use --force"},
    )
    if report is None:
        return 1
    dims = " x ".join(str(s) for s in report.shape[::-1])
    apix = "no pixel size" if report.apix is None else f"{report.apix[0]:.4g} A/px"
    exact = "exact" if report.exact else "decoded values"
    print(f"{report.output}: {report.format}, {dims} {report.dtype} ({exact}), {apix}")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from .restore import restore_file

    result = _attempt(
        args.archive,
        lambda: restore_file(args.archive, args.output, overwrite=args.force),
        {"overwrite=True": "--force"},
    )
    if result is None:
        return 1
    print(result.describe())
    return 0


def _check(args: argparse.Namespace) -> int:
    from .audit import check_archive, original_for
    from .executor import make_pool

    if args.originals is not None and len(args.archives) > 1 and not os.path.isdir(args.originals):
        _error(f"--originals {args.originals}: give a directory when checking several archives")
        return 2
    status = 0
    pool = make_pool(args.threads)
    try:
        for path in args.archives:

            def work(path: str = path) -> CheckResult:
                original = None
                if args.originals is not None:
                    original = original_for(path, args.originals)
                return check_archive(path, original, pool=pool)

            result = _attempt(path, work)
            if result is None:
                status = 1
                continue
            if args.json:
                print(json.dumps(result.to_dict()))
            elif result.ok:
                print(result.describe()[0])
            else:
                for line in result.describe():
                    _error(line)
            status = status or (0 if result.ok else 1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return status
