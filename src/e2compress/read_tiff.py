"""TIFF input via tifffile: one 2-D image per page, rows flipped as EMAN2's reader does."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .sources import ImageSource, reason


class TiffSource(ImageSource):
    """TIFF via tifffile: one 2-D image per page, rows flipped as EMAN2's reader does."""

    kind = "tiff"

    def __init__(self, path: Path) -> None:
        import tifffile

        self.path = path
        try:
            self._tif = tifffile.TiffFile(path)
        except Exception as exc:  # tifffile raises many types on corrupt files
            raise InputError(f"cannot read TIFF file: {reason(exc)}", path) from None
        try:
            self._pages = self._check_pages()
        except BaseException:
            self._tif.close()
            raise
        self._lock = threading.Lock()
        self._cache: tuple[int, np.ndarray] | None = None

    def _check_pages(self) -> list[Any]:
        try:
            pages = list(self._tif.pages)
            shapes = [tuple(getattr(page, "shape", ())) for page in pages]
            dtypes = [np.dtype(page.dtype) if page.dtype is not None else None for page in pages]
        except Exception as exc:
            raise InputError(f"cannot read TIFF file: {reason(exc)}", self.path) from None
        if not pages:
            raise InputError("TIFF file has no images", self.path)
        for k, (shape, dtype) in enumerate(zip(shapes, dtypes, strict=True)):
            if len(shape) != 2 or not all(isinstance(d, int) and d >= 1 for d in shape):
                raise InputError(
                    f"TIFF page {k} is not a single-channel 2-D image (shape {shape})", self.path
                )
            if dtype is None or dtype.kind not in "uif":
                raise InputError(f"TIFF page {k} has unsupported pixel type {dtype}", self.path)
        return pages

    def __len__(self) -> int:
        return len(self._pages)

    def shape(self, index: int) -> tuple[int, int, int]:
        ny, nx = self._pages[index].shape
        return 1, int(ny), int(nx)

    def dtype(self, index: int) -> np.dtype:
        native: np.dtype = np.dtype(self._pages[index].dtype).newbyteorder("=")
        return native

    def _page(self, index: int) -> np.ndarray:
        with self._lock:
            if self._cache is None or self._cache[0] != index:
                try:
                    data = self._pages[index].asarray()
                except Exception as exc:
                    raise InputError(
                        f"cannot decode TIFF page {index}: {reason(exc)}", self.path
                    ) from None
                self._cache = (index, data[::-1])
            return self._cache[1]

    def read(self, index: int, z: int, y0: int, y1: int) -> np.ndarray:
        return np.ascontiguousarray(self._page(index)[y0:y1]).astype(self.dtype(index), copy=False)

    def header(self, index: int) -> dict[str, Any]:
        page: Any = self._pages[index].keyframe or self._pages[0]
        bps = page.bitspersample
        out: dict[str, Any] = {"TIFF.bitspersample": int(bps[0] if isinstance(bps, tuple) else bps)}
        for tag, key in ((282, "TIFF.resolution_x"), (283, "TIFF.resolution_y")):
            t = page.tags.get(tag)
            try:
                num, den = t.value if t is not None else (0, 0)
                if den:
                    out[key] = np.float32(num / den)
            except (TypeError, ValueError):
                pass
        return out

    def close(self) -> None:
        self._tif.close()
