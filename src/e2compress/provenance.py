"""Where an output came from: the source's identity during a run, and a record of the
source and options kept in the output (root-group attributes) for ``--skip-existing``.

EMAN2 ignores attributes on the root group (it only looks for ``num_dataset`` there,
which is never written), so the record does not change what EMAN2 reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .errors import InputError
from .options import Options
from .readers.base import companions

PathLike = str | os.PathLike[str]
PREFIX = "e2compress."
RECORD_KEYS = (
    "source_name",
    "source_size",
    "source_mtime_ns",
    "source_images",
    "value_options",
)


@dataclass(frozen=True)
class Identity:
    """What tells one state of a file from another without reading it."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, path: PathLike) -> Identity | None:
        """The identity of the file ``path`` names now (symlinks followed); None if gone."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def check_unchanged(path: PathLike, before: Identity | None) -> None:
    """Raise InputError unless ``path`` still names the file ``before`` described.

    Size, modification time, inode and device are compared, and the change time, which
    no user can set: a rewrite that restores size and mtime (``cp -p``, ``touch -r``) is
    still seen. ``before`` None (the file could not be examined at the start) always fails.
    """
    now = Identity.of(path)
    if before is not None and now == before:
        return
    if now is None:
        what = "removed or unreadable"
    elif before is None:
        what = "appeared after the start"
    elif (now.dev, now.ino) != (before.dev, before.ino):
        what = "replaced by another file"
    elif now.size != before.size:
        what = f"size {before.size} -> {now.size} bytes"
    elif now.mtime_ns != before.mtime_ns:
        what = "modified"
    else:
        what = "rewritten or its attributes changed"
    raise InputError(
        f"changed while it was being compressed ({what}); nothing written, run again", path
    )


@dataclass(frozen=True)
class Origin:
    """An input file (and an IMAGIC pair's other half) as it was before the first read."""

    path: Path
    ident: Identity | None
    partners: list[tuple[Path, Identity | None]]

    @classmethod
    def of(cls, path: PathLike) -> Origin:
        """The identity of ``path`` and its companions now."""
        p = Path(path)
        return cls(p, Identity.of(p), [(c, Identity.of(c)) for c in companions(p)])

    def unchanged(self) -> None:
        """Raise :class:`~e2compress.errors.InputError` if any of them changed since."""
        check_unchanged(self.path, self.ident)
        for path, before in self.partners:
            check_unchanged(path, before)


def value_options(opts: Options) -> str:
    """The options that change stored values, as canonical text (``bits=5 range=-5.0,5.0``).

    Level, shuffle and chunking change only size and speed, so they are left out; with
    ``bits`` 0 no range option has any effect; ``counts`` stores every value exactly.
    EER grouping is named when it is not 1.
    """
    text = "counts" if opts.counts else _value_text(opts)
    if opts.eer_grouping != 1:  # changes the images themselves
        text += f" eer_grouping={opts.eer_grouping}"
    return text


def _value_text(opts: Options) -> str:
    text = f"bits={opts.bits}"
    if opts.bits == 0:
        return text
    if opts.auto:  # the bits follow the noise rule: its fraction decides them
        text = f"bits=auto noise_fraction={float(opts.noise_fraction)!r}"
    if opts.value_range is not None:
        lo, hi = opts.value_range
        text += f" range={float(lo)!r},{float(hi)!r}"
    elif opts.sigrange is not None:
        a, b = opts.sigrange
        text += f" sigrange={float(a)!r},{float(b)!r}"
    elif opts.nooutliers:
        text += " nooutliers"
    return text


@dataclass(frozen=True)
class Record:
    """What an output was made from."""

    source_name: bytes  # file name only (os.fsencode), not the directory
    source_size: int
    source_mtime_ns: int
    source_images: int
    value_options: str

    @classmethod
    def make(cls, src: PathLike, ident: Identity, images: int, opts: Options) -> Record:
        """The record for an output of ``src`` (in state ``ident``) made with ``opts``."""
        name = os.fsencode(Path(src).name)
        return cls(name, ident.size, ident.mtime_ns, images, value_options(opts))

    def matches(self, src: PathLike, ident: Identity, opts: Options) -> bool:
        """True when this record describes ``src`` as it is now and the same options."""
        return (
            self.source_name == os.fsencode(Path(src).name)
            and (self.source_size, self.source_mtime_ns) == (ident.size, ident.mtime_ns)
            and self.value_options == value_options(opts)
        )


def write_record(path: PathLike, record: Record) -> None:
    """Store ``record`` as ``e2compress.*`` attributes on the root group of ``path``.

    ``path`` is the (flock()ed) temporary output, so HDF5's own file locking is off.
    """
    values: dict[str, np.generic] = {
        "source_name": np.bytes_(record.source_name),
        "source_size": np.int64(record.source_size),
        "source_mtime_ns": np.int64(record.source_mtime_ns),
        "source_images": np.int64(record.source_images),
        "value_options": np.bytes_(record.value_options.encode("ascii")),
    }
    with h5py.File(path, "r+", locking=False) as f:
        for key in RECORD_KEYS:
            f.attrs[PREFIX + key] = values[key]


def read_record(path: PathLike) -> Record | None:
    """The record stored in ``path``; None when there is none or it cannot be read."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            a = {key: f.attrs[PREFIX + key] for key in RECORD_KEYS}
        return Record(
            bytes(a["source_name"]),
            int(a["source_size"]),
            int(a["source_mtime_ns"]),
            int(a["source_images"]),
            bytes(a["value_options"]).decode("ascii"),
        )
    except (OSError, KeyError, ValueError, TypeError, UnicodeDecodeError):
        return None
