"""TIFF input via tifffile: one 2-D image per frame, rows flipped as EMAN2's reader does.

Frames. Each top-level IFD (page) is one image, as in EMAN2, except a file whose
frames follow a single IFD (ImageJ writes hyperstacks over 4 GB this way; tifffile
reads them as a "truncated" series): there the frames are the series' images, at
consecutive offsets after that IFD.

Integrity. A TIFF still being written must not read as a shorter file, so before any
pixel is read: the IFD chain must end properly (the last IFD's next-IFD offset is 0);
every strip or tile must lie inside the file (uncompressed frames must hold all their
bytes); and the number of frames must equal what ImageJ's description
(``images=``, ``frames`` x ``slices`` x ``channels``) or the OME-XML metadata say,
when the file has them.

Values. MINISWHITE images (photometric 0) are negated, as EMAN2 reads them (the value
is minus the stored number, in a wider signed type so nothing wraps). Signed
integers are read as signed (EMAN2 reads 16-bit as unsigned and 32-bit as float).

Reading. Uncompressed frames stored contiguously are read a block of rows at a time
with ``pread`` (any number of threads); other frames are decoded by tifffile one whole
frame at a time (the last one decoded is kept for the following blocks).
"""

from __future__ import annotations

import math
import os
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..hashing import OrderedHasher, read_exact
from ..kept import Kept, Layout
from ..pixelsize import tiff_header_keys
from .base import ImageSource, reason
from .tiff_keep import Frame, pixel_layout

MINISWHITE = 0
# MINISWHITE values are negated in a type that holds -max of the stored type.
_NEGATED = {"u1": "i2", "u2": "i4", "u4": "i8", "u8": "f8", "i1": "i2", "i2": "i4", "i4": "i8"}


class TiffSource(ImageSource):
    """A TIFF file read as described in the module docstring.

    ``keep``: read the bytes outside the pixels and hash the file (see :meth:`kept`).

    Raises:
        InputError: unreadable or damaged TIFF, a page that is not a single-channel 2-D
            image of integers or floats, data beyond the end of the file, or a frame
            count that disagrees with the file's ImageJ or OME metadata.
    """

    kind = "tiff"

    def __init__(self, path: Path, *, keep: bool = False) -> None:
        import tifffile

        self.path = path
        self._keep = keep
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._cache: tuple[int, np.ndarray] | None = None
        self._hasher: OrderedHasher | None = None
        self._layout: Layout | None = None
        self._kept_bytes = b""
        try:
            self._tif = tifffile.TiffFile(path)
        except Exception as exc:  # tifffile raises many types on corrupt files
            raise InputError(f"cannot read TIFF file: {reason(exc)}", path) from None
        try:
            self._fd = os.open(path, os.O_RDONLY)
            self._size = os.fstat(self._fd).st_size
            self._frames = self._find_frames()
            if keep:
                self._keep_bytes()
        except OSError as exc:
            self.close()
            raise InputError(f"cannot read TIFF file: {reason(exc)}", path) from None
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ structure

    def _find_frames(self) -> list[Frame]:
        tif = self._tif
        try:
            pages = list(tif.pages)
            series = list(tif.series)
            imagej = tif.imagej_metadata if tif.is_imagej else None
            for k, page in enumerate(pages):
                self._check_pixels(k, page)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"cannot read TIFF file: {reason(exc)}", self.path) from None
        if not pages:
            raise InputError("TIFF file has no images", self.path)
        for k, page in enumerate(pages):
            self._check_ifd(k, page, last=k == len(pages) - 1)
        if len(pages) == 1 and len(series) == 1 and series[0].is_truncated:
            frames = self._virtual_frames(series[0])
        else:
            frames = []
            for k, page in enumerate(pages):
                self._check_segments(k, page)
                frames.append(
                    Frame(page, self._contiguous_offset(page), self._is_miniswhite(k, page))
                )
        self._check_count(len(frames), imagej, series)
        return frames

    def _check_pixels(self, k: int, page: Any) -> None:
        shape = tuple(getattr(page, "shape", ()))
        if len(shape) != 2 or not all(isinstance(d, int) and d >= 1 for d in shape):
            raise InputError(
                f"TIFF page {k} is not a single-channel 2-D image (shape {shape})", self.path
            )
        dtype = np.dtype(page.dtype) if page.dtype is not None else None
        if dtype is None or dtype.kind not in "uif":
            raise InputError(f"TIFF page {k} has unsupported pixel type {dtype}", self.path)

    def _is_miniswhite(self, k: int, page: Any) -> bool:
        value = page.keyframe.photometric
        try:
            return int(value) == MINISWHITE
        except (TypeError, ValueError):
            raise InputError(f"TIFF page {k} has an invalid photometric tag", self.path) from None

    def _check_ifd(self, k: int, page: Any, last: bool) -> None:
        """Page ``k``'s IFD and its tag values lie inside the file, and the last IFD ends
        the chain (tifffile silently stops reading pages at an offset past the end)."""
        import tifffile

        fmt = self._tif.tiff
        raw = self._pread(fmt.tagnosize, page.offset)
        count = struct.unpack(fmt.tagnoformat, raw)[0] if len(raw) == fmt.tagnosize else 0
        end = page.offset + fmt.tagnosize + count * fmt.tagsize
        entries = self._pread(count * fmt.tagsize, page.offset + fmt.tagnosize)
        following = self._pread(fmt.offsetsize, end) if last else b"\0" * fmt.offsetsize
        if len(raw) != fmt.tagnosize or len(entries) != count * fmt.tagsize:
            raise InputError(f"TIFF is truncated: the IFD of page {k} is cut off", self.path)
        if len(following) != fmt.offsetsize:
            raise InputError(f"TIFF is truncated: the IFD of page {k} is cut off", self.path)
        for i in range(count):
            entry = entries[i * fmt.tagsize : (i + 1) * fmt.tagsize]
            code, kind, n, value = struct.unpack(fmt.tagheaderformat, entry)
            item = tifffile.TIFF.DATA_FORMATS.get(kind)
            if item is None:
                continue  # a tag of unknown type: tifffile skips it, so do we
            size = n * struct.calcsize(fmt.byteorder + item)
            if size > fmt.tagoffsetthreshold:
                offset = struct.unpack(fmt.offsetformat, value)[0]
                if offset + size > self._size:
                    raise InputError(
                        f"TIFF is truncated: tag {code} of page {k} has data at bytes "
                        f"{offset}..{offset + size}, file has {self._size}",
                        self.path,
                    )
        following_offset = struct.unpack(fmt.offsetformat, following)[0]
        if following_offset != 0:
            raise InputError(
                f"TIFF is truncated or damaged: after page {k} the next IFD is at byte "
                f"{following_offset}, which cannot be read (file has {self._size} bytes)",
                self.path,
            )

    def _check_segments(self, k: int, page: Any) -> None:
        """Every strip or tile of page ``k`` lies inside the file."""
        offsets, counts = page.dataoffsets, page.databytecounts
        if len(offsets) == 0 or len(offsets) != len(counts):
            raise InputError(f"TIFF page {k} has no image data", self.path)
        for offset, count in zip(offsets, counts, strict=True):
            if count <= 0 or offset <= 0:
                raise InputError(f"TIFF page {k} has a missing strip or tile", self.path)
            if offset + count > self._size:
                raise InputError(
                    f"TIFF is truncated: page {k} has data at bytes {offset}..{offset + count}, "
                    f"file has {self._size}",
                    self.path,
                )
        key = page.keyframe
        if key.is_final and sum(counts) < key.nbytes:
            raise InputError(
                f"TIFF is truncated: page {k} holds {sum(counts)} bytes of its "
                f"{key.nbytes} bytes of uncompressed pixels",
                self.path,
            )

    @staticmethod
    def _contiguous_offset(page: Any) -> int | None:
        """First byte of the page's pixels when they can be read as they are stored."""
        if not page.keyframe.is_final:
            return None
        offsets, counts = page.dataoffsets, page.databytecounts
        for i in range(len(offsets) - 1):
            if offsets[i] + counts[i] != offsets[i + 1]:
                return None
        return int(offsets[0])

    def _virtual_frames(self, series: Any) -> list[Frame]:
        """Frames stored one after another behind a single IFD (ImageJ > 4 GB)."""
        key = series.keyframe
        offset = series.dataoffset
        if offset is None or not key.is_final:
            raise InputError(
                "TIFF series behind a single IFD is not stored contiguously", self.path
            )
        count = series.size // key.size
        end = offset + count * key.nbytes
        if end > self._size:
            raise InputError(
                f"TIFF is truncated: {count} frames need bytes {offset}..{end}, "
                f"file has {self._size}",
                self.path,
            )
        negate = self._is_miniswhite(0, key)
        return [Frame(key, offset + i * key.nbytes, negate) for i in range(count)]

    def _check_count(self, count: int, imagej: dict[str, Any] | None, series: list[Any]) -> None:
        """The frame count must match ImageJ's and OME's (when the file has them)."""
        declared: list[tuple[str, int]] = []
        if imagej:
            if "images" in imagej:
                n = int(imagej["images"])
                declared.append((f"its ImageJ description says images={n}", n))
            dims = {k: int(imagej[k]) for k in ("frames", "slices", "channels") if k in imagej}
            if dims:
                n = math.prod(dims.values())
                names = " x ".join(f"{k}={v}" for k, v in dims.items())
                total = f" = {n}" if len(dims) > 1 else ""
                declared.append((f"its ImageJ description says {names}{total}", n))
        ome = [s for s in series if s.kind == "ome"]
        if self._tif.is_ome and ome and not any(s.is_multifile for s in ome):
            n = sum(math.prod(s.get_shape(False)) // s.keyframe.size for s in ome)
            declared.append((f"its OME metadata says {n} planes", n))
        for what, expected in declared:
            if expected != count:
                raise InputError(f"TIFF has {count} images, but {what}", self.path)

    # ------------------------------------------------------------------ kept bytes

    def _keep_bytes(self) -> None:
        """Where the pixels are (:func:`~.tiff_keep.pixel_layout`); read the bytes
        between them (IFDs, tags, gaps), which also start the file's hash."""
        self._hasher = OrderedHasher(self._size)
        values = [math.prod(self.shape(i)) for i in range(len(self._frames))]
        layout = pixel_layout(self._tif.byteorder, self._frames, self._size, values)
        if layout.problem is None:
            parts = []
            for offset, length in layout.gaps():
                data = read_exact(self._pread, length, offset)
                self._hasher.feed(offset, data)
                parts.append(data)
            self._kept_bytes = b"".join(parts)
        self._layout = layout

    def kept(self) -> Kept | None:
        """The bytes outside the pixels, where the pixels are, and the file's SHA-256
        (finished from the reads made so far; bytes no one read are read now); None
        when opened without ``keep``.

        Raises:
            InputError: the file cannot be read to its end.
        """
        if self._hasher is None or self._layout is None:
            return None
        try:
            digest = self._hasher.finish(self._pread)
        except OSError as exc:
            raise InputError(f"cannot read: {reason(exc)}", self.path) from None
        return Kept(self._layout, self._kept_bytes, digest, digest, self.path.name)

    # ------------------------------------------------------------------ pixels

    def __len__(self) -> int:
        return len(self._frames)

    def shape(self, index: int) -> tuple[int, int, int]:
        """(1, ny, nx) of page ``index``."""
        ny, nx = self._frames[index].page.shape
        return 1, int(ny), int(nx)

    def _stored_dtype(self, index: int) -> np.dtype:
        stored: np.dtype = np.dtype(self._frames[index].page.dtype).newbyteorder("=")
        return stored

    def dtype(self, index: int) -> np.dtype:
        """The stored type in native byte order; for MINISWHITE, a type that holds the
        negated values."""
        stored = self._stored_dtype(index)
        if self._frames[index].negate:
            return np.dtype(_NEGATED.get(stored.str[1:], stored))
        return stored

    def _decoded(self, index: int) -> np.ndarray:
        with self._lock:
            if self._cache is None or self._cache[0] != index:
                self._cache = None  # free the previous frame before decoding the next
                try:
                    data = self._decode(self._frames[index].page)
                except InputError:
                    raise
                except Exception as exc:
                    raise InputError(
                        f"cannot decode TIFF page {index}: {reason(exc)}", self.path
                    ) from None
                self._cache = (index, data[::-1])
            return self._cache[1]

    def _decode(self, page: Any) -> np.ndarray:
        """Page ``page`` decoded from its strips or tiles, which are read here once and
        hashed (tifffile decodes them; a kind of page this does not cover is decoded by
        tifffile's own reader and its segments read again for the hash)."""
        key = page.keyframe
        jpeg = key.compression in (6, 7, 33007, 34892)
        if jpeg or key.is_tiled or len(key.shaped) != 5:
            data: np.ndarray = page.asarray()
            self._feed_segments(page)
            return data
        out = np.zeros(key.shaped, dtype=key.dtype)
        decode = key.decode
        segments = zip(page.dataoffsets, page.databytecounts, strict=True)
        for i, (offset, count) in enumerate(segments):
            raw = self._read_segment(int(offset), int(count))
            if self._hasher is not None:
                self._hasher.feed(int(offset), raw)
            segment, (s, d, h, w, _), shape = decode(raw, i, _fullsize=False)
            if segment is None:
                continue
            out[s, d : d + shape[0], h : h + shape[1], w : w + shape[2]] = segment[
                : key.imagedepth - d, : key.imagelength - h, : key.imagewidth - w
            ]
        image: np.ndarray = out.reshape(key.shape)
        return image

    def _read_segment(self, offset: int, count: int) -> bytes:
        try:
            return read_exact(self._pread, count, offset)
        except OSError as exc:
            raise InputError(f"cannot read TIFF pixels: {reason(exc)}", self.path) from None

    def _feed_segments(self, page: Any) -> None:
        if self._hasher is None:
            return
        for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
            self._hasher.feed(int(offset), self._read_segment(int(offset), int(count)))

    def _rows(self, frame: Frame, row0: int, row1: int) -> np.ndarray:
        """File rows ``row0:row1`` of an uncompressed frame, as stored (not flipped)."""
        assert frame.offset is not None
        nx = frame.page.shape[1]
        stored = np.dtype(self._tif.byteorder + frame.page.dtype.char)
        size = (row1 - row0) * nx * stored.itemsize
        try:
            buf = self._pread(size, frame.offset + row0 * nx * stored.itemsize)
        except OSError as exc:
            raise InputError(f"cannot read TIFF pixels: {reason(exc)}", self.path) from None
        if len(buf) != size:
            raise InputError("file ended while reading TIFF pixels", self.path)
        if self._hasher is not None:
            self._hasher.feed(frame.offset + row0 * nx * stored.itemsize, buf)
        return np.frombuffer(buf, dtype=stored).reshape(row1 - row0, nx)

    def read(self, index: int, z: int, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` of page ``index`` (``z`` is 0), counted from the last stored
        row, as EMAN2 reads TIFF; MINISWHITE values negated.

        Raises:
            InputError: the pixels cannot be read or decoded.
        """
        frame = self._frames[index]
        if frame.offset is not None:
            ny = frame.page.shape[0]
            rows = self._rows(frame, ny - y1, ny - y0)[::-1]
        else:
            rows = self._decoded(index)[y0:y1]
        out = np.ascontiguousarray(rows).astype(self._stored_dtype(index), copy=False)
        if self._frames[index].negate:
            negated: np.ndarray = np.negative(out.astype(self.dtype(index)))
            return negated
        return out

    def header(self, index: int) -> dict[str, Any]:
        """``TIFF.bitspersample``, the resolution tags and the keys of
        :func:`~e2compress.pixelsize.tiff_header_keys` of page ``index``."""
        page: Any = self._frames[index].page.keyframe
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
        out.update(tiff_header_keys(self._tif, page))
        return out

    def close(self) -> None:
        """Drop the decoded page and close the file."""
        self._cache = None
        self._tif.close()
        super().close()
