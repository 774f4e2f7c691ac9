"""Output naming and the checks on an output that already exists.

One place decides what an input's output is called (EMAN2's naming), whether an
existing output already holds what compressing the input would write (``skip
existing``), and what an existing output must not be (someone else's HDF5 data).
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py

from .archive import EmanHdfFile
from .atomic import check_replaceable
from .decode import stored_whole
from .errors import E2CompressError, OutputError
from .gain_io import GAIN
from .options import Options
from .provenance import Identity, read_record, value_options
from .readers import ImageSource, is_hdf5, strip_compression

PathLike = str | os.PathLike[str]


def output_name(name: str) -> str:
    """EMAN2's output file name for input file name ``name``: ``.hdf`` stays, any other
    suffix (after a ``.gz``/``.bz2``, which is dropped) becomes ``.hdf``."""
    name = strip_compression(name)
    if not name.endswith(".hdf"):
        stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
        name = stem + ".hdf"
    return name


def output_path(src: PathLike, outpath: PathLike | None = None) -> Path:
    """EMAN2's naming: ``.hdf`` stays, anything else gets ``.hdf``; in ``outpath`` if given.

    Args:
        src: the input file.
        outpath: the output directory (default: beside ``src``).
    """
    p = Path(src)
    return (Path(outpath) if outpath is not None else p.parent) / output_name(p.name)


def output_is_complete(src: PathLike, target: PathLike, options: Options | int) -> bool:
    """True when ``target`` already holds what compressing ``src`` would write
    (the skip-existing check).

    A separate output counts only when its record (see :mod:`~e2compress.provenance`)
    names ``src`` with its current size and modification time and the same value
    options (bits, range option and numbers), and every image is present, readable
    and stored at ``bits``. An ``.hdf`` replaced in place counts when every image is
    already deflate-compressed at the requested bits and, if the file carries a
    record, with the same range option (an EMAN2-compressed file at those bits is
    skipped: compressing it again could only add rounding). With ``bits="auto"`` any
    stored bits count (a record must name the same noise fraction); in place without a
    record, every image must already be quantised. With ``counts``, every image must be
    stored at 8 or 16 bits and the output hold a gain.

    Args:
        src: the input file.
        target: its output (a symbolic link is followed).
        options: the :class:`~e2compress.options.Options` of the run (or just bits).
    """
    opts = options if isinstance(options, Options) else Options(bits=options)
    target = Path(target)
    ident = Identity.of(src)
    if ident is None or not target.is_file():
        return False
    try:
        in_place = os.path.samefile(src, target)
        record = read_record(target)
        if record is None:
            if not in_place:
                return False
        elif in_place:
            if record.value_options != value_options(opts):
                return False
        elif not record.matches(src, ident, opts):
            return False
        with EmanHdfFile(target, locking=False, threads=1) as out:
            if record is not None and not in_place and len(out) != record.source_images:
                return False
            size = target.stat().st_size
            for i in range(len(out)):
                rng = out.render_range(i)
                stored = rng.bits if rng else 0
                if opts.counts:  # the counts' bits, whatever opts.bits says
                    if stored not in (8, 16) or in_place:
                        return False
                elif opts.auto:
                    if stored == 0 and record is None:
                        return False
                elif stored != opts.bits:
                    return False
                if not stored_whole(out.dataset(i), size, need_deflate=in_place):
                    return False
            return len(out) > 0 and (not opts.counts or GAIN in out.h5file)
    except (E2CompressError, OSError, KeyError, ValueError, RuntimeError):
        return False


def check_existing(
    named: Path, target: Path, kind: str, *, in_place: bool, force: bool
) -> list[str]:
    """Refuse to write ``target`` (``named``, a link resolved) over what must stay, and
    warn about what ``force`` replaces.

    Args:
        named: the output as named.
        target: the file it names (a symbolic link resolved).
        kind: the kind of source (``"hdf"``, ``"mrc"`` ...).
        in_place: the output replaces the input itself.
        force: replace a write-protected or hard-linked output, or someone else's HDF5.

    Raises:
        OutputError: the output would replace an input that is not HDF, or is
            write-protected, hard-linked or an HDF5 file without EMAN2 images, without
            ``force``.
    """
    if in_place and kind != "hdf":
        raise OutputError(
            f"the output would replace this {kind.upper()} input with HDF5 data under the "
            "same name; choose another output name",
            named,
        )
    warnings = check_replaceable(target, force=force)
    if not in_place and not force and foreign_hdf5(target):
        raise OutputError(
            "output exists and is an HDF5 file with no EMAN2 images (someone else's "
            "data?); not replaced (force=True replaces it)",
            target,
        )
    return warnings


def same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` are the same file (False when either is missing)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def foreign_hdf5(target: Path) -> bool:
    """True when ``target`` is a readable HDF5 file without EMAN2's ``/MDF/images``.

    A damaged HDF5 file (say, a copy cut short) is not foreign: it may be replaced.
    """
    if not target.is_file() or not is_hdf5(target):
        return False
    try:
        with h5py.File(target, "r", locking=False) as f:
            return not isinstance(f.get("MDF/images"), h5py.Group)
    except (OSError, RuntimeError, KeyError, ValueError):
        return False


def requantise_warning(source: ImageSource, opts: Options) -> str | None:
    """A warning when ``source`` holds quantised images and ``opts`` asks for more bits."""
    if source.kind != "hdf":
        return None
    try:
        with EmanHdfFile(source.path, threads=1) as f:  # locking as the source opened it
            stored = [f.render_range(i) for i in range(len(f))]
    except E2CompressError:
        return None
    wanted = opts.bits or 33  # float32 holds more than any quantised code
    lower = sorted({r.bits for r in stored if r is not None and r.bits < wanted})
    if not lower:
        return None
    n = sum(1 for r in stored if r is not None and r.bits < wanted)
    at = f"{lower[0]}" if len(lower) == 1 else f"{lower[0]}..{lower[-1]}"
    into = "as float32" if opts.bits == 0 else f"at {opts.bits} bits"
    if len(stored) == 1:
        return f"{source.path}: image stored at {at} bits; storing it {into} gains nothing"
    return (
        f"{source.path}: {n} of {len(stored)} images stored at {at} bits; "
        f"storing them {into} gains nothing"
    )
