"""The :class:`ImageSource` interface every reader implements, and the file-name rules.

It imports no reader (see :mod:`e2compress.readers` for the list and :func:`open_source`).
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..hashing import OrderedHasher
    from ..kept import Kept


PathLike = str | os.PathLike[str]
MRC_SUFFIXES = (".mrc", ".mrcs", ".map", ".st", ".ali", ".rec", ".ccp4", ".mrcz", ".preali")
TIFF_SUFFIXES = (".tif", ".tiff")
EER_SUFFIXES = (".eer",)
HDF_SUFFIXES = (".hdf", ".h5", ".hdf5", ".hd5")
IMAGIC_SUFFIXES = (".hed", ".img")  # a pair: header and data
SPIDER_SUFFIXES = (".spi", ".spider")
DM_SUFFIXES = (".dm3", ".dm4")
SER_SUFFIXES = (".ser",)  # FEI/TIA series
COMPRESSED_SUFFIXES = (".gz", ".bz2")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
GZIP_MAGIC = b"\x1f\x8b"
BZIP2_MAGIC = b"BZh"
TIFF_MAGICS = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")


class ImageSource(abc.ABC):
    """A readable image file: ``len()`` images, each read a block of rows at a time.

    A reader that reads its file with ``pread`` keeps the descriptor in ``_fd`` and the
    hasher of its kept bytes (if any) in ``_hasher``: :meth:`close` releases both, once,
    and :meth:`_pread` fails with OSError afterwards (never reads a reused descriptor).
    """

    path: Path
    kind: str = ""
    _fd: int | None = None
    _hasher: OrderedHasher | None = None

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def shape(self, index: int) -> tuple[int, int, int]:
        """(nz, ny, nx) of image ``index``."""

    @abc.abstractmethod
    def read(self, index: int, z: int, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` of section ``z`` of image ``index`` (native dtype, 2-D)."""

    def header(self, index: int) -> dict[str, Any]:
        """EMAN2 header keys this format carries (apix, origin, format keys)."""
        return {}

    def raw_attrs(self, index: int) -> dict[str, Any]:
        """Attributes to copy verbatim (HDF inputs only)."""
        return {}

    def shared_keys(self) -> frozenset[str]:
        """Keys of :meth:`header` that have the same value for every image."""
        return frozenset()

    def group_attrs(self) -> dict[str, Any]:
        """Attributes the file stores once for all images (EMAN2 HDF: ``Group.*``)."""
        return {}

    def kept(self) -> Kept | None:
        """The source's non-pixel bytes, where its pixels lie and its SHA-256, computed
        from the reads made so far (call after reading every image); None when the
        source was opened without ``keep`` or the format keeps nothing this way (EMAN2
        HDF: its attributes are copied as they are).

        Raises:
            InputError: the file cannot be read to its end.
        """
        return None

    def dtype(self, index: int) -> np.dtype:
        """Element type :meth:`read` returns."""
        return np.dtype(np.float32)

    def close(self) -> None:
        """Release the file (stop the hasher, close ``_fd``); calling it again does nothing.
        Reading afterwards raises InputError."""
        if self._hasher is not None:
            self._hasher.close()
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _pread(self, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes of ``_fd`` at ``offset``.

        Raises:
            OSError: the source is closed, or the read failed.
        """
        if self._fd is None:
            raise OSError("file is closed")
        return os.pread(self._fd, size, offset)

    def notices(self) -> list[str]:
        """Warnings about how the file is read, one line each naming the file (an MRC
        axis order that is no order of 1, 2, 3), given when the file is opened."""
        return []

    def notes(self) -> list[str]:
        """Lines to report once the file is compressed (an EER movie's dose)."""
        return []

    def image(self, index: int) -> np.ndarray:
        """Image ``index`` in full, (ny, nx) or (nz, ny, nx)."""
        nz, ny, _ = self.shape(index)
        data = np.stack([self.read(index, z, 0, ny) for z in range(nz)])
        return data[0] if nz == 1 else data

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self.image(i)


def strip_compression(name: str) -> str:
    """``x.mrc.bz2`` -> ``x.mrc``."""
    lower = name.lower()
    for suffix in COMPRESSED_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def input_key(name: str) -> str:
    """The name that identifies an input file: an IMAGIC ``x.img`` is its pair's ``x.hed``
    (both name the same images, compressed once into ``x.hdf``)."""
    if name.lower().endswith(".img"):
        return name[:-4] + (".HED" if name[-4:].isupper() else ".hed")
    return name


def companions(path: PathLike) -> list[Path]:
    """The other files a reader of ``path`` reads: an IMAGIC pair's other half."""
    p = Path(path)
    lower = p.name.lower()
    if lower.endswith((".hed", ".img")):
        other = ".img" if lower.endswith(".hed") else ".hed"
        return [p.with_suffix(other.upper() if p.suffix.isupper() else other)]
    return []


def is_hdf5(path: PathLike) -> bool:
    """True when ``path`` is a readable file starting with the HDF5 signature."""
    try:
        return _magic(Path(path)) == HDF5_MAGIC
    except OSError:
        return False


def _magic(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(8)


def reason(exc: BaseException) -> str:
    """First line of an exception's message (its type name when it has none)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
