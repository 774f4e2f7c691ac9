"""An image's stored values back to image values: the codes' decode (EMAN2 §2.4, with
exact 0 and integers) and the reading of its chunks raw, decoded here (our inflate,
unshuffle and Fletcher-32 check, on several threads), with HDF5's own read as fallback.
"""

from __future__ import annotations

import itertools
import math
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np
from h5py import h5d, h5s

from . import checksum, codecs
from .quantize import RenderRange, code_max, decode_dtype, decode_values, is_wide

_DEFLATE, _SHUFFLE = h5py.h5z.FILTER_DEFLATE, h5py.h5z.FILTER_SHUFFLE
_FLETCHER32 = h5py.h5z.FILTER_FLETCHER32


def value_dtype(stored: np.dtype, rng: RenderRange | None) -> np.dtype:
    """The type image values are decoded to: float32 (as EMAN2), but float64 where
    float32 cannot hold them (see :func:`~e2compress.quantize.decode_dtype`; plain
    32/64-bit integer or float64 datasets)."""
    if rng is not None:
        return decode_dtype(rng)
    return np.dtype(np.float64) if is_wide(stored) else np.dtype(np.float32)


def decode(codes: np.ndarray, rng: RenderRange | None) -> np.ndarray:
    """Stored dataset values to image values (EMAN2 §2.4, exact 0 and integers), in
    :func:`value_dtype`."""
    if rng is None:
        return codes.astype(value_dtype(codes.dtype, None), copy=False)
    if codes.dtype.kind == "u" and codes.dtype.itemsize <= 2:
        if codes.size <= code_max(rng.bits):
            return decode_values(codes, rng)
        return Decoder.of(rng, codes.dtype, codes.size)(np.ascontiguousarray(codes))
    c = codes.astype(np.float64)
    values = c / ((1 << rng.bits) - 1) * (rng.rmax - rng.rmin) + rng.rmin
    return values.astype(decode_dtype(rng))


@dataclass(frozen=True)
class Decoder:
    """Stored codes to values through a table (many pixels, few codes)."""

    rng: RenderRange
    table: np.ndarray

    @classmethod
    def of(cls, rng: RenderRange, dtype: np.dtype, size: int) -> Decoder:
        """Table for every code of ``dtype``, but only the 2**bits codes of uint16 for
        images of fewer than 4 x 65536 pixels."""
        n = 1 << 8 * dtype.itemsize
        if size < 4 * n:
            n = min(n, code_max(rng.bits) + 1)
        return cls(rng, decode_values(np.arange(n), rng))

    def into(self, codes: np.ndarray, out: np.ndarray) -> None:
        """``out[...] = values of codes``. Codes beyond the table (uint16 above 2**bits-1,
        which EMAN2 and we never write) get EMAN2's formula, not a clipped value."""
        full = self.table.size >= 1 << 8 * codes.dtype.itemsize
        if not full and codes.size and int(codes.max()) >= self.table.size:
            out[...] = decode_values(codes, self.rng)
        else:
            np.take(self.table, codes, out=out, mode="clip")

    def __call__(self, codes: np.ndarray) -> np.ndarray:
        """The values of ``codes``, in a new array of the table's type."""
        out = np.empty(codes.shape, dtype=self.table.dtype)
        self.into(codes, out)
        return out


@dataclass(frozen=True)
class ChunkLayout:
    """What a dataset's creation properties say about reading its chunks raw."""

    chunks: tuple[int, ...] | None
    filters: tuple[int, ...]

    @property
    def raw_readable(self) -> bool:
        """Chunked with only deflate, shuffle and Fletcher-32: chunks can be decoded
        (and their checksums verified) here."""
        return self.chunks is not None and all(
            f in (_DEFLATE, _SHUFFLE, _FLETCHER32) for f in self.filters
        )


def chunk_layout(plist: Any) -> ChunkLayout:
    """The chunk shape and filters of a dataset creation property list."""
    if plist.get_layout() != h5d.CHUNKED:
        return ChunkLayout(None, ())
    filters = tuple(plist.get_filter(k)[0] for k in range(plist.get_nfilters()))
    return ChunkLayout(tuple(plist.get_chunk()), filters)


def _decode_chunk(
    raw: bytes, mask: int, filters: tuple[int, ...], nbytes: int, dtype: np.dtype
) -> np.ndarray:
    data: bytes = raw
    for k in reversed(range(len(filters))):
        if mask & (1 << k):
            continue
        if filters[k] == _DEFLATE:
            data = codecs.inflate(data, nbytes)
        elif filters[k] == _FLETCHER32:
            data = checksum.strip(data)
        else:
            data = codecs.unshuffle(data, dtype).tobytes()
    return np.frombuffer(data, dtype=dtype)


class _Unallocated(Exception):
    """A chunk was never written (HDF5 returns the fill value for it)."""


def _read_chunks(
    dsid: Any,
    layout: ChunkLayout,
    shape: tuple[int, ...],
    dtype: np.dtype,
    pool: Executor | None,
    decoder: Decoder | None,
) -> np.ndarray:
    """Decode every chunk of ``dsid`` here (raw reads, our inflate), then the codes."""
    chunks = layout.chunks
    assert chunks is not None
    nbytes = math.prod(chunks) * dtype.itemsize
    out = np.empty(shape, dtype=dtype if decoder is None else decoder.table.dtype)
    if chunks == shape:  # one chunk (small images): no regions to cut
        mask, raw = _raw_chunk(dsid, (0,) * len(shape))
        block = _decode_chunk(raw, mask, layout.filters, nbytes, dtype).reshape(shape)
        if decoder is None:
            out[...] = block
        else:
            decoder.into(block, out)
        return out

    def work(offset: tuple[int, ...], mask: int, raw: bytes) -> None:
        block = _decode_chunk(raw, mask, layout.filters, nbytes, dtype).reshape(chunks)
        region = tuple(
            slice(o, min(o + c, s)) for o, c, s in zip(offset, chunks, shape, strict=True)
        )
        part = block[tuple(slice(0, r.stop - r.start) for r in region)]
        target = out[region]
        if decoder is None:
            target[...] = part
        elif target.flags.c_contiguous:
            decoder.into(part, target)
        else:
            target[...] = decoder(np.ascontiguousarray(part))

    futures: list[Future[None]] = []
    try:
        grid = (range(0, s, c) for s, c in zip(shape, chunks, strict=True))
        for offset in itertools.product(*grid):
            mask, raw = _raw_chunk(dsid, offset)
            if pool is None:
                work(offset, mask, raw)
            else:
                futures.append(pool.submit(work, offset, mask, raw))
    finally:
        for fut in futures:
            fut.result()
    return out


def _raw_chunk(dsid: Any, offset: tuple[int, ...]) -> tuple[int, bytes]:
    try:
        mask, raw = dsid.read_direct_chunk(offset)
    except RuntimeError:  # "chunk storage is not allocated"
        raise _Unallocated from None
    return int(mask), raw


def _read_all(dsid: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The whole dataset through HDF5's own filters (fill values included)."""
    out = np.empty(shape, dtype=dtype.newbyteorder("="))
    if out.size:
        dsid.read(h5s.ALL, h5s.ALL, out)
    return out


def read_values(
    dsid: Any,
    layout: ChunkLayout,
    shape: tuple[int, ...],
    dtype: np.dtype,
    pool: Executor | None,
    decoder: Decoder | None,
) -> np.ndarray:
    """Dataset ``dsid``'s values (through ``decoder`` when given): its chunks read raw
    and decoded here (on ``pool``), or HDF5's own read when they cannot be (other
    filters, big-endian, chunks never written)."""
    if layout.raw_readable and 0 not in shape and dtype.byteorder != ">":
        try:
            return _read_chunks(dsid, layout, shape, dtype, pool, decoder)
        except _Unallocated:
            pass
    data = _read_all(dsid, shape, dtype)
    return data if decoder is None else decoder(data)


def _filter_ids(ds: h5py.Dataset) -> list[int]:
    plist = ds.id.get_create_plist()
    return [plist.get_filter(k)[0] for k in range(plist.get_nfilters())]


def stored_whole(ds: h5py.Dataset, file_size: int, *, need_deflate: bool) -> bool:
    """True when every chunk of ``ds`` is written and lies inside the file (no decoding).

    An unwritten chunk would read back as the fill value (zeros) without any error.
    """
    if ds.chunks is None:
        if need_deflate:
            return False
        offset = ds.id.get_offset()
        return offset is not None and offset + ds.id.get_storage_size() <= file_size
    if need_deflate and h5py.h5z.FILTER_DEFLATE not in _filter_ids(ds):
        return False
    expected = math.prod(-(-n // c) for n, c in zip(ds.shape, ds.chunks, strict=True))
    found = 0
    inside = True

    def visit(info: Any) -> None:
        nonlocal found, inside
        found += 1
        inside = inside and info.byte_offset + info.size <= file_size

    if hasattr(ds.id, "chunk_iter"):
        ds.id.chunk_iter(visit)
    else:  # HDF5 before 1.12.3
        for k in range(ds.id.get_num_chunks()):
            visit(ds.id.get_chunk_info(k))
    return found == expected and inside
