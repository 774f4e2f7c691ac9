"""A batch's inputs: paths, ``@list`` files, ``-`` (stdin), recursive trees, mirrored outputs.

Inputs stream: a list of 100,000 paths is read line by line, a tree is walked one
directory at a time, and no input file is opened here (only ``stat`` and ``realpath``).
Two inputs that would write the same output are found before anything runs, with
about 16 bytes per path (hashes in arrays), by reading the inputs more than once: a
list file is re-read, stdin is spooled to a temporary file, a tree is walked again.
"""

from __future__ import annotations

import fnmatch
import functools
import io
import itertools
import os
import shutil
import stat
import sys
import tempfile
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TextIO

import numpy as np

from .atomic import TMP_SUFFIX
from .errors import E2CompressError
from .outputs import output_name, output_path
from .readers.base import (
    COMPRESSED_SUFFIXES,
    DM_SUFFIXES,
    MRC_SUFFIXES,
    SER_SUFFIXES,
    SPIDER_SUFFIXES,
    TIFF_SUFFIXES,
    companions,
    input_key,
)

PathLike = str | os.PathLike[str]
# What --recursive picks up without --include: the MRC family and TIFF, plain or .gz/.bz2,
# SPIDER, DM3/DM4, SER and IMAGIC pairs (by their .hed: a pair is compressed once).
# EMAN2 HDF files are left out on purpose: they would be recompressed in place (and a
# tree holding earlier outputs would have them all rewritten); include them explicitly.
DEFAULT_PATTERNS = tuple(
    f"*{s}{c}" for s in MRC_SUFFIXES + TIFF_SUFFIXES for c in ("", *COMPRESSED_SUFFIXES)
) + tuple(f"*{s}" for s in (".hed", *SPIDER_SUFFIXES, *DM_SUFFIXES, *SER_SUFFIXES))


@dataclass(frozen=True)
class Item:
    """One input of a batch and where it goes.

    Attributes:
        given: the input as given (list line, argument, or path found in a tree).
        source: the input file.
        target: the output file.
        make_dirs: the target's directory is a mirror under ``--outpath`` and may be
            created.
        problem: non-empty when the input must not be compressed: the failure line.
        skip: non-empty when the input is not to be compressed but skipped: why (the
            same input given again is compressed once, its repeats skipped).
    """

    given: str
    source: Path
    target: Path
    make_dirs: bool = False
    problem: str = ""
    skip: str = ""


def matches(rel: str, patterns: Iterable[str]) -> bool:
    """Whether ``rel`` (a POSIX path relative to the walked directory) matches a glob.

    A pattern without ``/`` is matched against the file name, one with ``/`` against the
    whole relative path (``*`` then also matches ``/``); matching ignores case.
    """
    name = rel.rsplit("/", 1)[-1].lower()
    low = rel.lower()
    return any(
        fnmatch.fnmatchcase(low if "/" in p else name, p.lower().rstrip("/")) for p in patterns
    )


def walk(
    root: PathLike,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    prune: Sequence[PathLike] = (),
) -> Iterator[tuple[Path, str]]:
    """Files under ``root`` that match ``include`` (default: image suffixes) and no
    ``exclude``, in sorted order, as ``(path, problem)``.

    Hidden files and directories (rsync and many acquisition programs write partial
    files as ``.name``), our temporary files, directories matching ``exclude`` and the
    directories in ``prune`` (an ``--outpath`` inside the tree) are skipped. Symbolic
    links to directories are not followed. An unreadable directory is yielded as
    ``(directory, message)``; the walk goes on.
    """
    top = Path(root)
    pruned = {os.path.realpath(p) for p in prune}
    patterns = tuple(include) or DEFAULT_PATTERNS
    errors: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(top, onerror=errors.append):
        while errors:
            exc = errors.pop()
            where = Path(exc.filename) if exc.filename else top
            yield where, f"{where}: cannot read directory: {exc.strerror or exc}"
        base = Path(dirpath)
        rel_dir = base.relative_to(top).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".")
            and not matches(prefix + d, exclude)
            and os.path.realpath(base / d) not in pruned
        )
        for name in sorted(filenames):
            if name.startswith(".") or name.endswith(TMP_SUFFIX):
                continue
            rel = prefix + name
            if matches(rel, patterns) and not matches(rel, exclude):
                yield base / name, ""
    while errors:  # the root itself could not be listed
        exc = errors.pop()
        yield top, f"{top}: cannot read directory: {exc.strerror or exc}"


@dataclass(frozen=True)
class _Raw:
    given: str
    out_dir: str | None  # None: beside the input
    make_dirs: bool = False
    problem: str = ""


class _Keys:
    """Identity of an input and of the place its output lands, with the directories
    resolved (``realpath`` of each directory once, from a bounded cache)."""

    def __init__(self) -> None:
        self.realdir = functools.lru_cache(maxsize=4096)(os.path.realpath)

    def __call__(self, raw: _Raw) -> tuple[str, str]:
        head, name = os.path.split(raw.given)
        src_dir = self.realdir(head or ".")
        dst_dir = src_dir if raw.out_dir is None else self.realdir(raw.out_dir)
        src = os.path.join(src_dir, input_key(name))
        return src, os.path.join(dst_dir, output_name(name))


class Inputs:
    """The inputs of one batch, re-iterable, streamed.

    Args:
        files: paths, ``@LIST`` (a file of paths, one a line; blank lines and lines
            starting with ``#`` are ignored; relative paths are relative to the current
            directory) and ``-`` (paths on ``stdin``).
        recursive: directories to walk (see :func:`walk`).
        include, exclude: globs for the walked files.
        outpath: the output directory; a walked tree is mirrored under it.
        stdin: where ``-`` reads from (default ``sys.stdin``).

    Use as a context manager (a spooled stdin is a temporary file).
    """

    def __init__(
        self,
        files: Sequence[str] = (),
        *,
        recursive: Sequence[PathLike] = (),
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        outpath: PathLike | None = None,
        stdin: TextIO | None = None,
    ) -> None:
        self.files = list(files)
        self.recursive = [Path(d) for d in recursive]
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self.outpath = None if outpath is None else Path(outpath)
        self._stdin = stdin
        self._spool: IO[str] | None = None
        self._scanned: tuple[dict[str, dict[str, str]], set[int]] | None = None
        self.count = 0
        self.total_bytes = 0

    def __enter__(self) -> Inputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the spooled copy of stdin, if any."""
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def check(self) -> None:
        """Raise E2CompressError for a list file or directory that cannot be read.

        Raises:
            E2CompressError: an ``@LIST`` is not a readable file, ``-`` is given more
                than once, or a ``recursive`` directory is not a readable directory.
        """
        if sum(1 for f in self.files if f == "-") > 1:
            raise E2CompressError("'-' (paths on stdin) can be given only once")
        for f in self.files:
            if f.startswith("@") and len(f) > 1:
                path = Path(f[1:])
                if not path.is_file() or not os.access(path, os.R_OK):
                    raise E2CompressError(f"cannot read the list file {path}")
        for d in self.recursive:
            if not d.is_dir() or not os.access(d, os.R_OK | os.X_OK):
                raise E2CompressError(f"recursive needs a readable directory: {d}")

    # ----------------------------------------------------------------- raw streams

    def _stdin_file(self) -> IO[str]:
        if self._spool is None:
            self._spool = tempfile.TemporaryFile(  # noqa: SIM115 (closed by close())
                "w+", encoding="utf-8", errors="surrogateescape", newline=""
            )
            shutil.copyfileobj(self._stdin or sys.stdin, self._spool)
        self._spool.seek(0)
        return self._spool

    def _paths(self) -> Iterator[str]:
        """Every path given directly, in a list or on stdin (not the walked trees)."""
        for f in self.files:
            if f == "-":
                yield from _entries(self._stdin_file())
            elif f.startswith("@") and len(f) > 1:
                with open(
                    Path(f[1:]), encoding="utf-8", errors="surrogateescape", newline=""
                ) as fh:
                    yield from _entries(fh)
            else:
                yield f

    def _raw(self) -> Iterator[_Raw]:
        out = None if self.outpath is None else str(self.outpath)
        for f in self._paths():
            yield _Raw(f, out)
        for root in self.recursive:
            prune = [self.outpath] if self.outpath is not None else []
            for path, problem in walk(root, self.include, self.exclude, prune):
                if problem:
                    yield _Raw(str(path), None, problem=problem)
                elif self.outpath is None:
                    yield _Raw(str(path), None)
                else:
                    rel_dir = path.parent.relative_to(root)
                    mirrored = rel_dir != Path(".")
                    yield _Raw(str(path), str(self.outpath / rel_dir), mirrored)

    # ----------------------------------------------------------------- conflicts

    def scan(self) -> None:
        """Read the inputs once: count them (:attr:`count`, :attr:`total_bytes`) and find
        the outputs claimed by more than one input. Iterating scans first if needed."""
        self._scanned = self._conflicts()

    def _conflicts(self) -> tuple[dict[str, dict[str, str]], set[int]]:
        """Outputs claimed by more than one input (``{output: {input: given}}``) and the
        hashes of (input, output) pairs given more than once."""
        keys = _Keys()
        dst = array("q")
        pair = array("q")
        self.count = self.total_bytes = 0
        for raw in self._raw():
            self.count += 1
            if raw.problem:
                continue
            try:
                self.total_bytes += os.stat(raw.given).st_size
            except OSError:
                pass
            src_key, dst_key = keys(raw)
            dst.append(hash(dst_key))
            pair.append(hash((src_key, dst_key)))
        d = np.frombuffer(dst, dtype=np.int64)
        p = np.frombuffer(pair, dtype=np.int64)
        uniq_pairs, first, counts = np.unique(p, return_index=True, return_counts=True)
        repeated = {int(h) for h in uniq_pairs[counts > 1]}
        outs, n_sources = np.unique(d[first], return_counts=True)  # one output per pair
        suspects = {int(h) for h in outs[n_sources > 1]}
        del d, p, uniq_pairs, first, counts, outs, n_sources
        claims: dict[str, dict[str, str]] = {}
        if suspects:  # hashes can collide: confirm with the real names
            for raw in self._raw():
                if raw.problem:
                    continue
                src_key, dst_key = keys(raw)
                if hash(dst_key) in suspects:
                    claims.setdefault(dst_key, {}).setdefault(src_key, raw.given)
        return {k: v for k, v in claims.items() if len(v) > 1}, repeated

    def __iter__(self) -> Iterator[Item]:
        """Every input with its output, conflicts marked (see :class:`Item`)."""
        if self._scanned is None:
            self.scan()
        assert self._scanned is not None
        collided, repeated = self._scanned
        keys = _Keys()
        seen: set[tuple[str, str]] = set()
        for raw in self._raw():
            source = Path(raw.given)
            if raw.problem:
                yield Item(raw.given, source, source, problem=raw.problem)
                continue
            target = output_path(source, raw.out_dir)
            item = Item(raw.given, source, target, raw.make_dirs)
            src_key, dst_key = keys(raw)
            if hash((src_key, dst_key)) in repeated:
                if (src_key, dst_key) in seen:
                    what = "this IMAGIC pair is " if companions(raw.given) else ""
                    again = f"{raw.given}: {what}given more than once; compressed once"
                    yield Item(raw.given, source, target, raw.make_dirs, skip=again)
                    continue
                seen.add((src_key, dst_key))
            owners = collided.get(dst_key)
            if owners is not None:
                others = [name for src, name in owners.items() if src != src_key]
                whom = "neither is" if len(others) == 1 else "none of them is"
                problem = (
                    f"{raw.given}: {' and '.join(others)} would also be written to "
                    f"{target}; {whom} compressed"
                )
                yield Item(raw.given, source, target, raw.make_dirs, problem=problem)
                continue
            yield item


def _entries(fh: IO[str], chunk: int = 1 << 16, probe: int = 1 << 16) -> Iterator[str]:
    """The paths in a list: NUL-separated (``find -print0``), taken verbatim as
    ``xargs -0`` does, when the first ``probe`` characters hold a NUL; else one a line,
    stripped, without blank lines and ``#`` comments. Read ``chunk`` characters at a
    time."""
    head = fh.read(probe)
    if "\0" in head:
        rest = head
        while True:
            *whole, rest = rest.split("\0")
            yield from (p for p in whole if p)
            more = fh.read(chunk)
            if not more:
                break
            rest += more
        if rest:
            yield rest
        return
    lines = io.StringIO(head, newline="").readlines()  # the line ends files use
    if lines and not lines[-1].endswith(("\n", "\r")):
        lines[-1] += fh.readline()
    for line in itertools.chain(lines, fh):
        for part in line.split("\0"):  # a NUL later in a list still separates
            text = part.strip()
            if text and not text.startswith("#"):
                yield text


def unreadable(item: Item) -> str:
    """Why ``item``'s input cannot be read ('' when it is a readable regular file);
    checked with ``stat`` and ``access``, without opening it."""
    try:
        st = os.stat(item.source)
    except (OSError, ValueError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        return f"{item.given}: {'no such file' if isinstance(exc, FileNotFoundError) else why}"
    if not stat.S_ISREG(st.st_mode):
        return f"{item.given}: not a regular file"
    if not os.access(item.source, os.R_OK):
        return f"{item.given}: not readable (permission denied)"
    return ""


def describe(item: Item) -> str:
    """One ``--dry-run`` line for ``item``."""
    if item.problem:
        return f"ERROR: {item.problem}"
    if item.skip:
        return f"skip: {item.skip}"
    return f"{item.given} -> {item.target}"
