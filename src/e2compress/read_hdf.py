"""EMAN2 HDF input (compressed or not), decoded to float values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .eman_hdf import NEVER_COPIED, EmanHdfFile
from .errors import InputError
from .kept import Kept, read_kept
from .sources import ImageSource, reason


class HdfSource(ImageSource):
    """An EMAN2 HDF file read through :class:`~e2compress.eman_hdf.EmanHdfFile`.

    Raises:
        InputError: not EMAN2 HDF, no images, or an image of unsupported shape.
    """

    kind = "hdf"

    def __init__(self, path: Path, *, keep: bool = False) -> None:
        self.path = path
        self._keep = keep
        self._file = EmanHdfFile(path, threads=1)
        try:
            if len(self._file) == 0:
                raise InputError("EMAN2 HDF file holds no images", path)
            for i in range(len(self._file)):
                shape = self._file.shape(i)
                if not 1 <= len(shape) <= 3 or 0 in shape:
                    raise InputError(f"image {i} has unsupported shape {shape}", path)
        except BaseException:
            self._file.close()
            raise

    def __len__(self) -> int:
        return len(self._file)

    def shape(self, index: int) -> tuple[int, int, int]:
        shape = self._file.shape(index)
        full = (1,) * (3 - len(shape)) + tuple(shape)
        return int(full[0]), int(full[1]), int(full[2])

    def dtype(self, index: int) -> np.dtype:
        return np.dtype(np.float32)

    def read(self, index: int, z: int, y0: int, y1: int) -> np.ndarray:
        rank = len(self._file.shape(index))
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
        out = {}
        for name, value in self._file.raw_attrs(index).items():
            key = name[5:] if name.startswith("EMAN.") else None
            if key is not None and key in NEVER_COPIED:
                continue
            out[name] = value
        return out

    def kept(self) -> Kept | None:
        """The kept bytes of the archive read (re-compression carries them over)."""
        if not self._keep:
            return None
        try:
            return read_kept(self._file.h5file)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise InputError(f"damaged kept source bytes: {reason(exc)}", self.path) from None

    def group_attrs(self) -> dict[str, Any]:
        return self._file.group_attrs()

    def close(self) -> None:
        self._file.close()
