"""The ``e2compress`` command line's arguments: the parser (EMAN2's options, verbatim) and
the normalisation of EMAN2's ``-v 2`` and ``--range -5,5``."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence

from . import __version__, commands
from .deletion import MANIFEST_NAME
from .fidelity import DEFAULT_NOISE_FRACTION
from .options import AUTO_BITS
from .runner import AUTO_CHOSE, SETTLE_SECONDS, SETTLE_WAIT

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
CLUSTERS = ("slurm", "pbs", "sge", "lsf")
# Library messages name parameters; the command line prints its own words for them.
WORDS = {
    "recursive needs": "--recursive needs",
    "force=True replaces it": "--force replaces it",
    "(bits=0 keeps them exactly)": "(--bits 0 keeps them exactly)",
    "a jobqueue cluster needs": "--cluster needs",
    AUTO_CHOSE: ": --bits auto chose ",
    **{f"cluster={k!r}": f"--cluster {k}" for k in CLUSTERS},
}


def normalise_argv(argv: Sequence[str]) -> list[str]:
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
        choices=CLUSTERS,
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
