"""In-memory images as an :class:`~e2compress.readers.base.ImageSource`.

:class:`ArraySource` presents a list of numpy arrays (2-D images or 3-D volumes, any
integer or float type) as a file of images, so that they go through the same
pipeline as a file (see :func:`e2compress.pipeline.write_images`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InputError
from .base import ImageSource

_APIX = ("apix_x", "apix_y", "apix_z")
# Header keys the writer sets from the pixels it stores: a caller's value would
# describe other data (a stored mapping on float32 pixels decodes them wrongly).
_WRITER_KEYS = frozenset(("nx", "ny", "nz", "datatype"))
_WRITER_PREFIXES = ("stored_", "render_")


def _same(a: Any, b: Any) -> bool:
    """Equal header values (arrays compared element by element)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(a, b))
    try:
        return bool(a == b) and type(a) is type(b)
    except (TypeError, ValueError):
        return False


class ArraySource(ImageSource):
    """A list of in-memory images, read like a file.

    Args:
        images: each a 2-D ``(ny, nx)`` image or a 3-D ``(nz, ny, nx)`` volume of an
            integer or float type (any byte order; a volume of one section is a
            2-D image, as EMAN2 has it); the arrays are read, not copied
            (unless not contiguous or not in native byte order), so do not change
            them while they are compressed.
        headers: per image, EMAN2 header keys to store with it (``None``: none);
            not the size, type or stored mapping (``nx``, ``datatype``,
            ``stored_*``, ``render_*``), which the writer sets. Statistics
            (``minimum``, ``mean`` ...) are recomputed from the pixels.
        apix: pixel size in Å for every image (``apix_x/y/z``); a header's own
            ``apix_*`` keys take precedence.
        name: what messages call the source, and the ``source_path`` stored.

    Raises:
        InputError: one array instead of a list, no images, an image that is not
            2-D or 3-D, is empty, or of a type other than integer or float (bool,
            complex, object), a ``headers`` list of another length, or a header key
            the writer sets.
    """

    kind = "array"

    def __init__(
        self,
        images: Sequence[npt.ArrayLike],
        *,
        headers: Sequence[Mapping[str, Any] | None] | None = None,
        apix: float | None = None,
        name: str = "arrays",
    ) -> None:
        self.path = Path(name)
        if isinstance(images, np.ndarray):
            raise InputError(
                "give a list of images: [volume] for one volume, list(stack) for the "
                "images of a stack",
                self.path,
            )
        self._images = [self._checked(i, a) for i, a in enumerate(images)]
        if not self._images:
            raise InputError("no images given", self.path)
        if headers is not None and len(headers) != len(self._images):
            raise InputError(f"{len(headers)} headers for {len(self._images)} images", self.path)
        base: dict[str, Any] = {}
        if apix is not None:
            base = {key: np.float32(apix) for key in _APIX}
        self._headers = [
            {**base, **self._header(i, headers[i] if headers is not None else None)}
            for i in range(len(self._images))
        ]

    def _header(self, index: int, header: Mapping[str, Any] | None) -> dict[str, Any]:
        out = dict(header or {})
        for key in out:
            if not isinstance(key, str) or key in _WRITER_KEYS or key.startswith(_WRITER_PREFIXES):
                raise InputError(
                    f"image {index}: header key {key!r} is set by the writer, not given",
                    self.path,
                )
        return out

    def _checked(self, index: int, image: npt.ArrayLike) -> np.ndarray:
        a = np.asarray(image)
        if a.dtype.kind not in "iuf" or (a.dtype.kind == "f" and a.dtype.itemsize > 8):
            raise InputError(
                f"image {index}: {a.dtype} data cannot be stored (integer or float only)",
                self.path,
            )
        if a.ndim not in (2, 3):
            raise InputError(
                f"image {index}: shape {a.shape}; an image must be 2-D (ny, nx) or "
                "3-D (nz, ny, nx)",
                self.path,
            )
        if a.size == 0:
            raise InputError(f"image {index}: shape {a.shape} holds no pixels", self.path)
        a = a.astype(a.dtype.newbyteorder("="), copy=False)
        return np.ascontiguousarray(a if a.ndim == 3 else a[None])

    def __len__(self) -> int:
        return len(self._images)

    def shape(self, index: int) -> tuple[int, int, int]:
        """(nz, ny, nx) of image ``index`` (nz is 1 for a 2-D image)."""
        nz, ny, nx = self._images[index].shape
        return nz, ny, nx

    def dtype(self, index: int) -> np.dtype:
        """The image's type, in native byte order."""
        return self._images[index].dtype

    def read(self, index: int, z: int, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` of section ``z`` of image ``index``: a view of the array, no copy."""
        return self._images[index][z, y0:y1]

    def header(self, index: int) -> dict[str, Any]:
        """The keys given for image ``index``, with ``apix`` as ``apix_x/y/z`` unless given."""
        return dict(self._headers[index])

    def shared_keys(self) -> frozenset[str]:
        """Keys every image's header has, with the same value."""
        first = self._headers[0]
        return frozenset(
            key
            for key, value in first.items()
            if all(key in h and _same(h[key], value) for h in self._headers[1:])
        )
