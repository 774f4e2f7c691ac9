"""EMAN2 HDF input (compressed or not), decoded to float values."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..archive import EmanHdfFile
from ..attrs import NEVER_COPIED
from ..decode import stored_whole
from ..errors import InputError
from ..kept import Kept, read_kept
from .base import ImageSource, reason


class HdfSource(ImageSource):
    """An EMAN2 HDF file read through :class:`~e2compress.archive.EmanHdfFile`.

    Raises:
        InputError: not EMAN2 HDF, no images, an image of unsupported shape, or an
            image with data missing from the file (unwritten chunks).
    """

    kind = "hdf"

    def __init__(self, path: Path, *, keep: bool = False) -> None:
        self.path = path
        self._keep = keep
        self._file = EmanHdfFile(path, threads=1)
        try:
            count = len(self._file)
            if count == 0:
                raise InputError("EMAN2 HDF file holds no images", path)
            # (rank, nz, ny, nx) per image, found once: 16 bytes an image
            self._shapes = np.empty((count, 4), dtype=np.int32)
            size = os.stat(path).st_size
            for i in range(count):
                self._shapes[i] = self._check(i, size)
        except BaseException:
            self._file.close()
            raise
        self._attrs: tuple[int, dict[str, Any]] | None = None

    def _check(self, index: int, file_size: int) -> tuple[int, int, int, int]:
        """Image ``index``'s rank and (nz, ny, nx); refused when it has an unsupported
        shape or data HDF5 would read as fill values (an unwritten chunk, as left by a
        writer that stopped), checked as our own outputs are after writing."""
        ds = self._file.dataset(index)
        shape = tuple(ds.shape)
        if not 1 <= len(shape) <= 3 or 0 in shape:
            raise InputError(f"image {index} has unsupported shape {shape}", self.path)
        try:
            whole = stored_whole(ds, file_size, need_deflate=False)
        except (OSError, RuntimeError, ValueError) as exc:
            raise InputError(f"image {index} is damaged ({reason(exc)})", self.path) from None
        if not whole:
            raise InputError(
                f"image {index} has data missing from the file (unwritten chunks, "
                "e.g. left by a writer that stopped)",
                self.path,
            )
        nz, ny, nx = (1,) * (3 - len(shape)) + shape
        return len(shape), nz, ny, nx

    def __len__(self) -> int:
        return len(self._file)

    def shape(self, index: int) -> tuple[int, int, int]:
        """(nz, ny, nx) of image ``index`` (1 for the axes a 2-D or 1-D image lacks)."""
        _, nz, ny, nx = self._shapes[index].tolist()
        return nz, ny, nx

    def dtype(self, index: int) -> np.dtype:
        """float32, or float64 where float32 cannot hold the stored values."""
        return self._file.value_dtype(index)

    def read(self, index: int, z: int, y0: int, y1: int) -> np.ndarray:
        """Decoded values of rows ``y0:y1`` of section ``z`` of image ``index``.

        Raises:
            InputError: the rows cannot be read or decoded.
        """
        rank = int(self._shapes[index, 0])
        region: tuple[Any, ...]
        if rank == 3:
            region = (z, slice(y0, y1))
        elif rank == 2:
            region = (slice(y0, y1),)
        else:
            region = (slice(None),)
        try:
            data = self._file.read_region(index, region)
        except (OSError, RuntimeError, ValueError) as exc:
            raise InputError(f"cannot read image {index}: {reason(exc)}", self.path) from None
        return data.reshape(y1 - y0, -1)

    def raw_attrs(self, index: int) -> dict[str, Any]:
        """Image ``index``'s attributes as stored, less those that describe its storage
        (:data:`~e2compress.attrs.NEVER_COPIED`).

        Raises:
            InputError: the attributes are damaged.
        """
        if self._attrs is None or self._attrs[0] != index:  # asked twice per image
            out = {}
            for name, value in self._file.raw_attrs(index).items():
                key = name[5:] if name.startswith("EMAN.") else None
                if key is not None and key in NEVER_COPIED:
                    continue
                out[name] = value
            self._attrs = (index, out)
        return dict(self._attrs[1])

    def kept(self) -> Kept | None:
        """The kept bytes of the archive read (re-compression carries them over)."""
        if not self._keep:
            return None
        try:
            return read_kept(self._file.h5file)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise InputError(f"damaged kept source bytes: {reason(exc)}", self.path) from None

    def group_attrs(self) -> dict[str, Any]:
        """The attributes of ``/MDF/images`` shared by all images (EMAN2's ``Group.*``)."""
        return self._file.group_attrs()

    def close(self) -> None:
        """Close the HDF5 file."""
        self._file.close()
