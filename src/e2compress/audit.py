"""``e2compress check``: read every chunk of an archive again (an audit for bit rot)
and, given the originals, compare every pixel with them.

Each chunk is read raw: its Fletcher-32 checksum (see :mod:`~e2compress.checksum`) is
verified where the dataset has one, its deflate stream is inflated (zlib's own Adler-32
of the decoded bytes is checked on the way) and must decode to the chunk's size, and it
must lie inside the file; a chunk that was never written (which HDF5 would silently read
as zeros) is a problem too. Nothing is decoded into pixel values unless an original is
given; then each image is decoded and checked against the original as the compression's
own verification does (within half a step inside the stored range, end codes outside
it, bit for bit for lossless images). An archive that says it restores its source byte
for byte (see :mod:`~e2compress.restore`) is rebuilt in memory and its SHA-256 compared
with the recorded one. Every other dataset (the kept source header bytes) is read
through HDF5's own filters, which verify their checksums.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import checksum, codecs
from .archive import EmanHdfFile
from .counts_source import CountsSource
from .errors import E2CompressError, InputError
from .executor import Cancel, bounded, in_flight, make_pool, pool_width
from .gain_io import read_gain
from .kept import DEFLATED_ATTR, kept_array
from .options import Options
from .provenance import read_record
from .readers import open_source
from .report import ImageReport
from .verify import verify_output

PathLike = str | os.PathLike[str]
_DEFLATE = h5py.h5z.FILTER_DEFLATE
_SHUFFLE = h5py.h5z.FILTER_SHUFFLE
_FLETCHER32 = h5py.h5z.FILTER_FLETCHER32
MAX_PROBLEMS = 10  # reported per archive; the count says how many more
_HASH_STEP = 1 << 22
SOURCE_SHA256 = "e2compress.source_sha256"  # root attribute: the source file's SHA-256


@dataclass
class CheckResult:
    """What :func:`check_archive` found in one archive."""

    path: str
    images: int = 0
    chunks: int = 0
    checksummed: int = 0  # chunks whose Fletcher-32 checksum was verified
    original: str | None = None  # the original compared with, if any
    original_identical: bool | None = None  # its SHA-256 equals the recorded one
    restores_exactly: bool = False  # restore rebuilds the source's recorded SHA-256
    problems: list[str] = field(default_factory=list)
    more_problems: int = 0

    @property
    def ok(self) -> bool:
        """True when every chunk (and every pixel, given the original) is right."""
        return not self.problems

    def add(self, problem: str) -> None:
        """Record a problem (the first MAX_PROBLEMS in full, then only counted)."""
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)
        else:
            self.more_problems += 1

    def describe(self) -> list[str]:
        """One line when all is well; else one line per problem."""
        if self.problems:
            lines = [f"{self.path}: {p}" for p in self.problems]
            if self.more_problems:
                lines.append(f"{self.path}: and {self.more_problems} more problems")
            return lines
        with_sum = (
            "all with checksums"
            if self.checksummed == self.chunks
            else f"{self.checksummed} with checksums"
        )
        text = (
            f"{self.path}: ok: {_count(self.images, 'image')}, "
            f"{_count(self.chunks, 'chunk')} read back "
            f"({with_sum})"
        )
        if self.restores_exactly:
            text += "; restores its source byte for byte (SHA-256 checked)"
        if self.original is not None:
            text += f"; every pixel matches {self.original}"
            if self.original_identical:
                text += " (the very file compressed: same SHA-256)"
        return [text]

    def to_dict(self) -> dict[str, Any]:
        """The result as plain data (``--json``)."""
        return {
            "path": self.path,
            "ok": self.ok,
            "images": self.images,
            "chunks": self.chunks,
            "checksummed": self.checksummed,
            "original": self.original,
            "original_identical": self.original_identical,
            "restores_exactly": self.restores_exactly,
            "problems": self.problems,
            "more_problems": self.more_problems,
        }


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


@dataclass(frozen=True)
class _Chunk:
    image: int
    offset: tuple[int, ...]
    mask: int
    raw: bytes


def _filters(ds: h5py.Dataset) -> tuple[int, ...]:
    plist = ds.id.get_create_plist()
    return tuple(plist.get_filter(k)[0] for k in range(plist.get_nfilters()))


def _check_chunk(chunk: _Chunk, filters: tuple[int, ...], nbytes: int) -> str | None:
    """Verify one raw chunk (runs in a worker thread); the problem, or None."""
    data: bytes = chunk.raw
    try:
        for k in reversed(range(len(filters))):
            if chunk.mask & (1 << k):
                continue
            if filters[k] == _FLETCHER32:
                data = checksum.strip(data)
            elif filters[k] == _DEFLATE:
                data = codecs.inflate(data, nbytes)
            elif filters[k] == _SHUFFLE and len(data) != nbytes:
                raise ValueError(f"holds {len(data)} bytes, the chunk {nbytes}")
    except ValueError as exc:
        where = ", ".join(str(o) for o in chunk.offset)
        return f"image {chunk.image}, chunk at ({where}): {exc}"
    return None


def _chunk_records(ds: h5py.Dataset) -> list[tuple[tuple[int, ...], int, int]]:
    """(offset, byte offset, size) of every stored chunk of ``ds``."""
    out: list[tuple[tuple[int, ...], int, int]] = []

    def visit(info: Any) -> None:
        out.append((tuple(info.chunk_offset), int(info.byte_offset), int(info.size)))

    if hasattr(ds.id, "chunk_iter"):
        ds.id.chunk_iter(visit)
    else:  # HDF5 before 1.12.3
        for k in range(ds.id.get_num_chunks()):
            visit(ds.id.get_chunk_info(k))
    return out


def _raw_chunks(
    f: EmanHdfFile, result: CheckResult, size: int, cancel: Cancel
) -> Iterator[tuple[_Chunk, tuple[int, ...], int]]:
    """Every chunk of every image, read raw, with its filters and decoded size; the
    problems found without decoding (missing chunks, beyond the end) go to ``result``."""
    for i in range(len(f)):
        cancel.check()
        ds = f.dataset(i)
        result.images += 1
        if ds.chunks is None:  # not ours, but a valid layout: HDF5 reads it
            try:
                ds[...]
            except (OSError, RuntimeError, ValueError) as exc:
                result.add(f"image {i}: cannot be read ({_first_line(exc)})")
            continue
        filters = _filters(ds)
        nbytes = math.prod(ds.chunks) * ds.dtype.itemsize
        records = _chunk_records(ds)
        expected = math.prod(-(-n // c) for n, c in zip(ds.shape, ds.chunks, strict=True))
        if len(records) != expected:
            result.add(f"image {i}: {expected - len(records)} of {expected} chunks never written")
        known = all(code in (_DEFLATE, _SHUFFLE, _FLETCHER32) for code in filters)
        for offset, where, stored in records:
            cancel.check()
            result.chunks += 1
            if where + stored > size:
                result.add(f"image {i}, chunk at {offset}: lies beyond the end of the file")
                continue
            if not known:  # another filter: let HDF5 decode (and check) the chunk
                ends = zip(offset, ds.chunks, ds.shape, strict=True)
                region = tuple(slice(o, min(o + c, n)) for o, c, n in ends)
                try:
                    ds[region]
                except (OSError, RuntimeError, ValueError) as exc:
                    result.add(f"image {i}, chunk at {offset}: {_first_line(exc)}")
                continue
            try:
                mask, raw = ds.id.read_direct_chunk(offset)
            except (OSError, RuntimeError, ValueError) as exc:
                result.add(f"image {i}, chunk at {offset}: cannot be read ({_first_line(exc)})")
                continue
            if _FLETCHER32 in filters and not int(mask) & (1 << filters.index(_FLETCHER32)):
                result.checksummed += 1
            yield _Chunk(i, offset, int(mask), bytes(raw)), filters, nbytes


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _image_reports(f: EmanHdfFile) -> list[ImageReport]:
    """What the archive says of each image, as the compression reported it."""
    reports = []
    for i in range(len(f)):
        rng = f.render_range(i)
        truncated = 0
        if rng is not None:
            attrs = f.raw_attrs(i)
            truncated = int(np.asarray(attrs.get("EMAN.stored_truncated", 0)).reshape(-1)[0])
        reports.append(
            ImageReport(
                i,
                f.shape(i),
                rng.bits if rng else 0,
                None if rng is None else rng.rmin,
                None if rng is None else rng.rmax,
                truncated,
                "",
            )
        )
    return reports


def _check_other_datasets(path: PathLike, result: CheckResult, cancel: Cancel) -> None:
    """Read every dataset outside ``/MDF`` (the kept source bytes and their layout)
    through HDF5's own filters, which verify their checksums."""
    names: list[str] = []
    with h5py.File(path, "r", locking=False) as f:
        f.visititems(
            lambda name, obj: (
                names.append(name)
                if isinstance(obj, h5py.Dataset) and not name.startswith("MDF/")
                else None
            )
        )
        for name in names:
            cancel.check()
            ds = f[name]
            try:
                if ds.chunks is None:
                    ds[()]
                else:
                    for region in ds.iter_chunks():
                        ds[region]
                if ds.parent.attrs.get(DEFLATED_ATTR) is not None:
                    kept_array(ds.parent)  # small kept bytes: deflated, with zlib's check
            except (OSError, RuntimeError, ValueError) as exc:
                result.add(f"/{name} cannot be read ({_first_line(exc)})")


def _claims_exact(path: PathLike) -> bool:
    """True when the archive says ``restore`` rebuilds its source byte for byte."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            value = f.attrs.get("e2compress.restorable")
    except (OSError, ValueError, TypeError):
        return False
    return value is not None and bool(int(np.asarray(value).reshape(-1)[0]))


def _restored_sha256(path: PathLike) -> str | None:
    from .restore import restored_sha256

    return restored_sha256(path)


def file_sha256(path: PathLike) -> str:
    """SHA-256 (hex) of the file ``path`` (symbolic links followed), read in steps."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_HASH_STEP), b""):
            digest.update(block)
    return digest.hexdigest()


def recorded_source_sha256(path: PathLike) -> str | None:
    """The source file's SHA-256 as recorded in the archive at compression; None if not."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            value = f.attrs.get(SOURCE_SHA256)
    except (OSError, ValueError, TypeError):
        return None
    if value is None:
        return None
    raw = np.asarray(value).reshape(-1)[0]
    return bytes(raw).decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)


def original_for(archive: PathLike, originals: PathLike) -> Path:
    """The original of ``archive``: ``originals`` itself when it is a file, else the file
    of the name the archive records in the directory ``originals``.

    Raises:
        InputError: ``originals`` is a directory and the archive records no source name.
    """
    place = Path(originals)
    if not place.is_dir():
        return place
    record = read_record(archive)
    if record is None:
        raise InputError(
            "records no source name; give its original as a file, not a directory", archive
        )
    name = os.fsdecode(record.source_name)
    if "/" in name or name in ("", ".", ".."):
        raise InputError(f"records the source name {name!r}, which is not a file name", archive)
    return place / name


def check_archive(
    path: PathLike,
    original: PathLike | None = None,
    *,
    pool: Executor | None = None,
    threads: int | None = None,
    cancel: Cancel | None = None,
) -> CheckResult:
    """Read every chunk of the EMAN2 HDF file ``path`` again and, with ``original``,
    compare every image with it.

    Args:
        path: the archive.
        original: the file it was made from (MRC, TIFF, HDF), or None.
        pool: worker threads (shared); default a pool of ``threads``.
        threads: workers when no ``pool`` is given (default: all cores).
        cancel: stops the check at the next chunk or block.

    Returns:
        A :class:`CheckResult`; its ``problems`` name each damaged chunk or image.

    Raises:
        InputError: ``path`` is not a readable EMAN2 HDF file, or ``original`` cannot be
            opened.
    """
    token = cancel or Cancel()
    result = CheckResult(os.fspath(path))
    workers = pool or make_pool(threads)
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror or exc})", path) from None
    try:
        with EmanHdfFile(path, threads=1) as f:
            window = in_flight(pool_width(workers))
            chunks = _raw_chunks(f, result, size, token)
            checked = bounded(workers, lambda c: _check_chunk(*c), chunks, window)
            with closing(checked) as problems:
                for problem in problems:
                    if problem is not None:
                        result.add(problem)
            reports = _image_reports(f) if original is not None and result.ok else []
        _check_other_datasets(path, result, token)
        if result.ok and _claims_exact(path):
            result.restores_exactly = _restored_sha256(path) is not None
            if not result.restores_exactly:
                result.add(
                    "says it restores its source byte for byte, but the rebuilt bytes do "
                    "not have the recorded SHA-256"
                )
        if original is not None and result.ok:
            result.original = os.fspath(original)
            recorded = recorded_source_sha256(path)
            if recorded is not None:
                result.original_identical = file_sha256(original) == recorded
            _compare(path, Path(original), reports, result, workers, token)
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        result.add(f"damaged structure ({_first_line(exc)})")
    finally:
        if pool is None:
            workers.shutdown(wait=True, cancel_futures=True)
    return result


def _compare(
    path: PathLike,
    original: Path,
    reports: list[ImageReport],
    result: CheckResult,
    pool: Executor,
    cancel: Cancel,
) -> None:
    with open_source(original, scratch_dir=Path(path).parent) as source:
        if len(source) != len(reports):
            result.add(f"holds {len(reports)} images, {original} has {len(source)}")
            return
        for i, rep in enumerate(reports):
            shape3 = source.shape(i)
            if math.prod(shape3) != math.prod(rep.shape):
                result.add(f"image {i} is {rep.shape}, in {original} {shape3}")
                return
        gain = read_gain(path)  # an archive of counts holds the original's counts
        values = source if gain is None else CountsSource(source, gain=gain)
        try:
            verify_output(values, path, Options(), reports, pool, cancel)
        except E2CompressError as exc:
            text = str(exc)
            prefix = f"{os.fspath(path)}: "
            result.add(
                (text[len(prefix) :] if text.startswith(prefix) else text)
                + f" (against {original})"
            )
