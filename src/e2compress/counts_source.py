"""Image sources that present a gain-normalised movie as its counts, and back.

:class:`CountsSource` wraps any reader of a float32 movie: it reads every frame once to
estimate the gain (:mod:`e2compress.counts`), then presents each frame as its integer
counts (uint8 or uint16), checked exactly pixel by pixel as they are read; what the
pipeline stores are those counts. :class:`GainedSource` wraps a reader of such an
archive and gives back ``float32(count) * gain``, the movie's own values.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .counts import F32, Gain, GainEstimator, NotCounts, from_counts, to_counts
from .errors import InputError
from .gain_io import has_gain, write_gain
from .options import Options
from .readers.base import ImageSource, PathLike

if TYPE_CHECKING:
    from .kept import Kept

_CACHED_FRAMES = 2  # frames of counts kept for the pipeline's second read


def _frame_label(source: ImageSource, index: int, z: int) -> str:
    nz = source.shape(index)[0]
    return f"frame {index}" if nz == 1 else f"image {index} section {z}"


class _Wrapper(ImageSource):
    """Delegates everything but the values to ``inner``."""

    def __init__(self, inner: ImageSource) -> None:
        self.inner = inner
        self.path: Path = inner.path
        self.kind = inner.kind

    def __len__(self) -> int:
        return len(self.inner)

    def shape(self, index: int) -> tuple[int, int, int]:
        return self.inner.shape(index)

    def header(self, index: int) -> dict[str, Any]:
        return self.inner.header(index)

    def raw_attrs(self, index: int) -> dict[str, Any]:
        return self.inner.raw_attrs(index)

    def shared_keys(self) -> frozenset[str]:
        return self.inner.shared_keys()

    def group_attrs(self) -> dict[str, Any]:
        return self.inner.group_attrs()

    def kept(self) -> Kept | None:
        return self.inner.kept()

    def close(self) -> None:
        self.inner.close()

    def notices(self) -> list[str]:
        return self.inner.notices()

    def notes(self) -> list[str]:
        return self.inner.notes()


def frame_shape(source: ImageSource) -> tuple[int, int]:
    """(ny, nx) shared by every image of a float32 ``source``.

    Raises:
        InputError: no images, images of different sizes, or not float32.
    """
    if len(source) == 0:
        raise InputError("counts: the file holds no images", source.path)
    shapes = {source.shape(i)[1:] for i in range(len(source))}
    if len(shapes) != 1:
        raise InputError("counts: the images are not all of one size", source.path)
    for i in range(len(source)):
        dtype = source.dtype(i)
        if dtype.kind != "f" or dtype.itemsize != 4:
            raise InputError(
                f"counts: image {i} is {dtype.name}, not float32 (only float32 "
                "gain-normalised movies hold counts times a gain)",
                source.path,
            )
    ny, nx = shapes.pop()
    return ny, nx


class CountsSource(_Wrapper):
    """The counts of a gain-normalised float32 movie (every image's every section is a
    frame); :attr:`gain` is its gain image (float32, ny x nx).

    Opening reads every frame once (the gain estimate); :meth:`read` converts and
    checks. Memory: four uint32 images while estimating, then the gain.

    Args:
        inner: the movie's reader (closed with this source).
        check: called between frames (raises to stop).
        pool: threads to share the gain estimate with.
        gain: the gain to use (an archive's, to check an original against it) instead
            of estimating one; the counts are then uint16.

    Raises:
        InputError: not float32, a single frame, images of different sizes, a
            negative/-0.0/NaN/infinite value, or a count past 65535 (one line naming the
            file and where).
    """

    def __init__(
        self,
        inner: ImageSource,
        check: Callable[[], None] | None = None,
        pool: Executor | None = None,
        *,
        gain: np.ndarray | None = None,
    ) -> None:
        super().__init__(inner)
        self.source_dtype = inner.dtype(0) if len(inner) else np.dtype(F32)
        ny, nx = frame_shape(inner)
        if gain is not None:  # known (an archive's): the counts in the widest type
            if gain.shape != (ny, nx):
                raise InputError(
                    f"counts: images are {ny} x {nx}, the gain {gain.shape}", self.path
                )
            self.gain = np.asarray(gain, dtype=F32)
            self.counts_dtype = np.dtype(np.uint16)
        else:
            self._estimate(inner, (ny, nx), check, pool)
        with np.errstate(divide="ignore"):
            self._inverse = np.reciprocal(self.gain)
        # the pipeline reads each block twice (range, then encode): the last frames'
        # counts are kept, so each is read and checked once
        self._cache: OrderedDict[tuple[int, int, int, int], np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self._cache_limit = _CACHED_FRAMES * ny * nx * self.counts_dtype.itemsize
        self._lock = threading.Lock()

    def _estimate(
        self,
        inner: ImageSource,
        shape: tuple[int, int],
        check: Callable[[], None] | None,
        pool: Executor | None,
    ) -> None:
        """The gain and the counts' type, from one pass over every frame."""
        frames = sum(inner.shape(i)[0] for i in range(len(inner)))
        if frames < 2:
            raise InputError(
                "counts: a single image; its gain cannot be told from its counts (a "
                "movie of several frames is needed)",
                inner.path,
            )
        estimator = GainEstimator(shape)
        try:
            for i in range(len(inner)):
                for z in range(inner.shape(i)[0]):
                    if check is not None:
                        check()
                    frame = np.asarray(inner.read(i, z, 0, shape[0]), dtype=F32)
                    estimator.add(frame, _frame_label(inner, i, z), pool)
            found: Gain = estimator.result()
            self.counts_dtype = found.dtype()
        except NotCounts as exc:
            raise InputError(f"counts: {exc}", inner.path) from None
        self.gain = found.image

    def dtype(self, index: int) -> np.dtype:
        """uint8 or uint16: the smallest that holds every count of the movie."""
        return self.counts_dtype

    def read(self, index: int, z: int, y0: int, y1: int) -> np.ndarray:
        """The counts of rows ``y0:y1`` of section ``z`` of image ``index``, checked.

        Raises:
            InputError: a pixel is not a count times its gain (naming frame and pixel),
                or the movie cannot be read.
        """
        key = (index, z, y0, y1)
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None:
            return np.array(hit)
        values = np.asarray(self.inner.read(index, z, y0, y1), dtype=F32)
        label = _frame_label(self, index, z)
        try:
            counts = to_counts(
                values, self.gain[y0:y1], self.counts_dtype, label, y0, self._inverse[y0:y1]
            )
        except NotCounts as exc:
            raise InputError(f"counts: {exc}", self.path) from None
        with self._lock:
            if key not in self._cache:
                self._cache[key] = counts
                self._cache_bytes += counts.nbytes
            while self._cache_bytes > self._cache_limit and self._cache:
                self._cache_bytes -= self._cache.popitem(last=False)[1].nbytes
        return np.array(counts)

    @property
    def bits(self) -> int:
        """The stored bits that hold every count on a step of 1."""
        return 8 * self.counts_dtype.itemsize


class GainedSource(_Wrapper):
    """The values of a counts archive's reader: ``float32(count) * gain``.

    Args:
        inner: a reader of the archive (its images are the counts).
        gain: the archive's gain image (float32, ny x nx).
    """

    def __init__(self, inner: ImageSource, gain: np.ndarray) -> None:
        super().__init__(inner)
        self.gain = np.asarray(gain, dtype=F32)

    def dtype(self, index: int) -> np.dtype:
        """float32, the movie's type."""
        return np.dtype(F32)

    def read(self, index: int, z: int, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` of section ``z`` of image ``index``: count times gain.

        Raises:
            InputError: the archive cannot be read.
        """
        counts = self.inner.read(index, z, y0, y1)
        return from_counts(counts, self.gain[y0:y1])


def counts_input(
    source: ImageSource,
    opts: Options,
    check: Callable[[], None] | None = None,
    pool: Executor | None = None,
) -> tuple[ImageSource, Options]:
    """The source to compress and the options to store it with (the compression hook).

    With ``opts.counts`` the source becomes its :class:`CountsSource` and the bits those
    that hold its counts on a step of 1 (8 or 16). An archive of counts (which holds a
    gain) is refused either way: its images are counts, and a new file made from them
    would lose the gain.

    Args:
        source: the opened input.
        opts: validated options.
        check: called between frames while estimating the gain (raises to stop).
        pool: threads to share the gain estimate with.

    Raises:
        InputError: the input does not hold counts times a gain, or is a counts archive.
    """
    if source.kind == "hdf" and has_gain(source.path):
        raise InputError(
            "holds counts and their gain (written with counts); compressing it again would "
            "lose the gain: restore or export the movie first",
            source.path,
        )
    if not opts.counts:
        return source, opts
    wrapped = CountsSource(source, check, pool)
    return wrapped, dataclasses.replace(opts, bits=wrapped.bits)


def store_gain(source: ImageSource, path: PathLike) -> None:
    """Write the gain of a :class:`CountsSource` into the output ``path`` (no-op for
    any other source)."""
    if isinstance(source, CountsSource):
        write_gain(path, source.gain, source.source_dtype)
