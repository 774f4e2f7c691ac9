"""Where a TIFF's pixels lie, for its kept bytes (:mod:`~e2compress.kept`): one pixel run
per uncompressed strip, or, for a compressed strip, the strip itself with how it was
encoded (so ``restore`` can encode it again), and the reason when the file's pixels
cannot be kept apart from its other bytes."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..kept import (
    ENCODED,
    ENCODED_COLUMNS,
    FLIP,
    KEPT_LIMIT,
    NEGATE,
    Layout,
    merge_runs,
    overlapping,
    pieces_array,
)

_JPEG = (6, 7, 33007, 34892)
_Row = tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class Frame:
    """One image: the tifffile page (or the series' key page) and where its rows are."""

    page: Any
    offset: int | None  # first byte of contiguous, uncompressed data; None: decode
    negate: bool  # MINISWHITE


def pixel_layout(byteorder: str, frames: Sequence[Frame], size: int, values: list[int]) -> Layout:
    """The kept-bytes layout of a TIFF file: its pixel runs, or the problem that keeps
    them from being kept apart (then no runs).

    Args:
        byteorder: the file's byte order (``<`` or ``>``).
        frames: its images, as :class:`~e2compress.readers.tiff.TiffSource` finds them.
        size: bytes of the file.
        values: values of each image.
    """
    encoded: list[tuple[int, ...]] = []
    dtypes: list[str] = []
    rows: list[_Row] = []
    problem = None
    for k, frame in enumerate(frames):
        page = frame.page
        stored = np.dtype(byteorder + page.dtype.char).str
        if stored not in dtypes:
            dtypes.append(stored)
        flags = FLIP | (NEGATE if frame.negate else 0)
        if len(frames) > 1 and frames[0].page is frames[1].page:
            # frames behind one IFD (ImageJ > 4 GB): one run over all of them
            assert frame.offset is not None
            rows = [(frame.offset, len(frames) * page.keyframe.nbytes, 0, 0, 0, flags)]
            break
        code = dtypes.index(stored)
        problem = problem or _page_pieces(k, page, code, flags, rows, encoded)
    pieces = pieces_array(rows)
    if problem is None and overlapping(pieces, size):
        problem = "its strips overlap each other"
    if problem is None:
        pieces = merge_runs(pieces, values, [np.dtype(d).itemsize for d in dtypes])
        outside = size - int(pieces[:, 1].sum())
        if outside > KEPT_LIMIT:
            problem = f"{outside} bytes lie outside its pixels (more than {KEPT_LIMIT})"
    if problem is not None:
        pieces = pieces_array([])
    table = np.array(encoded, dtype=np.int64).reshape(-1, len(ENCODED_COLUMNS))
    return Layout("tiff", size, pieces, dtypes, problem=problem, encoded=table, byteorder=byteorder)


def _page_pieces(
    k: int, page: Any, code: int, flags: int, rows: list[_Row], encoded: list[tuple[int, ...]]
) -> str | None:
    """Append page ``k``'s pixel runs to ``rows`` (and a compressed page's encoding to
    ``encoded``); the reason if they cannot be kept apart from the rest of the file."""
    key = page.keyframe
    offsets, counts = page.dataoffsets, page.databytecounts
    raw = (
        key.compression == 1
        and key.fillorder == 1
        and key.predictor == 1
        and not key.is_tiled
        and key.samplesperpixel == 1
        and key.bitspersample == 8 * np.dtype(key.dtype).itemsize
    )
    if not raw:  # the strips hold an encoding of the values
        nx = page.shape[1]
        per = int(key.rowsperstrip) or page.shape[0]
        for i, (offset, count) in enumerate(zip(offsets, counts, strict=True)):
            rows.append((int(offset), int(count), k, i * per * nx, code, flags | ENCODED))
        encoding = _encoding(k, page)
        if encoding is not None:
            encoded.append(encoding)
        return None
    ny, nx = page.shape
    itemsize = np.dtype(key.dtype).itemsize
    per = int(key.rowsperstrip) or ny
    for i, (offset, count) in enumerate(zip(offsets, counts, strict=True)):
        r0, r1 = i * per, min((i + 1) * per, ny)
        if r0 >= ny:
            return f"page {k} has more strips than rows"
        need = (r1 - r0) * nx * itemsize
        if int(count) < need:
            return f"strip {i} of page {k} is shorter than its rows"
        rows.append((int(offset), need, k, r0 * nx, code, flags))
    if len(offsets) * per < ny:
        return f"page {k} has fewer strips than rows"
    return None


def _encoding(k: int, page: Any) -> tuple[int, ...] | None:
    """How page ``k``'s strips are encoded and where their offsets and byte counts are
    stored (ENCODED_COLUMNS); None when restore could not encode them again (tiles,
    JPEG, a floating-point predictor, a codec tifffile cannot write)."""
    import tifffile

    key = page.keyframe
    if key.is_tiled or key.predictor not in (1, 2) or key.fillorder != 1:
        return None
    if key.compression in _JPEG or key.samplesperpixel != 1:
        return None
    try:
        tifffile.TIFF.COMPRESSORS[key.compression]
    except (KeyError, ValueError, ImportError):
        return None
    where = []
    for code in (273, 279):  # StripOffsets, StripByteCounts
        tag = page.tags.get(code)
        if tag is None or tag.count != len(page.dataoffsets):
            return None
        fmt = tifffile.TIFF.DATA_FORMATS.get(int(tag.dtype), "")
        if fmt not in ("1H", "1I", "1Q"):
            return None
        where += [int(tag.valueoffset), struct.calcsize(fmt[1])]
    per = int(key.rowsperstrip) or page.shape[0]
    strips = len(page.dataoffsets)
    return (k, int(key.compression), int(key.predictor), per, *where, strips)
