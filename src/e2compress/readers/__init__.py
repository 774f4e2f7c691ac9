"""Input images: one reader module per format, and :func:`open_source` to pick one.

:mod:`.base` holds the :class:`ImageSource` interface every reader implements, and the
file-name rules; it imports no reader. The readers: :mod:`.mrc` (MRC/CCP4, plain or
``.gz``/``.bz2``; its header in :mod:`.mrc_header`, SerialEM's 4-bit mode in
:mod:`.mode101`), :mod:`.tiff` (its kept-bytes layout in :mod:`.tiff_keep`), :mod:`.eer`,
:mod:`.hdf` (EMAN2 HDF), :mod:`.imagic`, and, on the :mod:`.runs` base (pixels at
offsets the header gives), :mod:`.spider`, :mod:`.dm` (Gatan DM3/DM4) and :mod:`.ser`
(FEI/TIA). Each presents a file
as EMAN2 sees it: a list of images, each (nz, ny, nx) with nz == 1 for 2-D images, read a
block of rows at a time (safely from several threads), and the header keys EMAN2 carries
over. Every size or count a file's header claims is checked against the file before
anything is allocated from it; every problem is an :class:`~e2compress.errors.InputError`
naming the file, on one line.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .base import (
    BZIP2_MAGIC,
    DM_SUFFIXES,
    EER_SUFFIXES,
    GZIP_MAGIC,
    HDF5_MAGIC,
    HDF_SUFFIXES,
    IMAGIC_SUFFIXES,
    MRC_SUFFIXES,
    SER_SUFFIXES,
    SPIDER_SUFFIXES,
    TIFF_MAGICS,
    TIFF_SUFFIXES,
    ImageSource,
    PathLike,
    _magic,
    companions,
    input_key,
    is_hdf5,
    reason,
    strip_compression,
)
from .dm import DmSource
from .eer import EerSource
from .hdf import HdfSource
from .imagic import ImagicSource
from .mrc import MrcSource
from .ser import SerSource
from .spider import SpiderSource
from .tiff import TiffSource

__all__ = [
    "DmSource",
    "EerSource",
    "HdfSource",
    "ImageSource",
    "ImagicSource",
    "MrcSource",
    "SerSource",
    "SpiderSource",
    "TiffSource",
    "companions",
    "input_key",
    "is_hdf5",
    "open_source",
    "strip_compression",
]


def open_source(
    path: PathLike,
    *,
    scratch_dir: PathLike | None = None,
    eer_grouping: int = 1,
    keep: bool = False,
) -> ImageSource:
    """Open ``path`` as an image source, choosing the reader by content and name.

    Args:
        path: an MRC/CCP4 (plain, ``.gz`` or ``.bz2``), TIFF, EER, EMAN2 HDF, IMAGIC
            (``.hed`` or ``.img`` of a pair), SPIDER, DM3/DM4 or TIA ``.ser`` file.
        scratch_dir: where a compressed MRC is decompressed to (an anonymous file,
            gone when the source is closed or the process dies); default: the
            system's temporary directory.
        eer_grouping: EER frames summed into each image (1: one image a frame).
        keep: read the bytes outside the pixels and hash the file from the reads
            (:meth:`ImageSource.kept`); without it ``kept()`` returns None (an EER
            file keeps only why it cannot be restored).

    Raises:
        InputError: the file is missing, unreadable, of no supported kind, or
            inconsistent with its own header.
    """
    p = Path(path)
    if not p.exists():
        raise InputError("no such file", p)
    if p.is_dir():
        raise InputError("is a directory, not an image file", p)
    try:
        magic = _magic(p)
    except OSError as exc:
        raise InputError(f"cannot read: {reason(exc)}", p) from None
    if not magic:
        raise InputError("file is empty", p)
    name = strip_compression(p.name).lower()
    if magic == HDF5_MAGIC:
        return HdfSource(p, keep=keep)
    if magic[:4] in TIFF_MAGICS:
        if name.endswith(EER_SUFFIXES):
            return EerSource(p, eer_grouping, keep=keep)
        return TiffSource(p, keep=keep)
    if magic.startswith((GZIP_MAGIC, BZIP2_MAGIC)) or name.endswith(MRC_SUFFIXES):
        return MrcSource(p, magic, scratch_dir=scratch_dir, keep=keep)
    if name.endswith(IMAGIC_SUFFIXES):
        return ImagicSource(p, keep=keep)
    if name.endswith(SPIDER_SUFFIXES):
        return SpiderSource(p, keep=keep)
    if name.endswith(DM_SUFFIXES):
        return DmSource(p, keep=keep)
    if name.endswith(SER_SUFFIXES):
        return SerSource(p, keep=keep)
    if name.endswith(HDF_SUFFIXES):
        raise InputError("not an HDF5 file (bad signature)", p)
    if name.endswith(TIFF_SUFFIXES + EER_SUFFIXES):
        raise InputError("not a TIFF file (bad signature)", p)
    raise InputError(
        "unrecognised file type (expected MRC, TIFF, EER, EMAN2 HDF, IMAGIC, SPIDER, DM3/DM4"
        " or SER)",
        p,
    )
