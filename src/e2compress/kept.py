"""The source's non-pixel bytes, kept in the output, and the SHA-256 of the source.

A source file is a sequence of *pieces*: pixel runs (bytes that hold image values,
which the archive stores as images) and the bytes between them (headers, extended
headers, TIFF IFDs and tags, gaps), which are kept verbatim. The kept bytes are stored
deflated in the dataset ``/e2compress/source/kept`` (outside ``/MDF``: EMAN2 and plain
h5py readers of ``/MDF/images`` never see it) and the pixel runs in
``/e2compress/source/pieces``, one row per run::

    file offset, byte count, image, first element, dtype index, flags

The run holds ``byte count`` bytes of values of the image's *file-order stream* (its
values in the order the file stores them, continuing into the following images),
starting at ``first element``, in the type ``dtypes[dtype index]`` (byte order
included). Flags: :data:`FLIP` (TIFF: the file stores the rows bottom-up from EMAN2's
view), :data:`NEGATE` (TIFF MINISWHITE: the image holds minus the stored number),
:data:`PERMUTED` (MRC axis order other than 1,2,3: the stream is the images
transposed back by ``axes``), :data:`ENCODED` (a compressed TIFF strip: the run holds
the encoding of the strip of rows starting at ``first element``; how the page was
encoded, and where its strip offsets and byte counts are, is a row of
``/e2compress/source/encoded``, :data:`ENCODED_COLUMNS`).

A source of several files (an IMAGIC ``.hed``/``.img`` pair) is restored as its files
laid end to end: the layout's offsets are into that joined stream, and ``GROUP``'s
attributes ``parts``, ``part_sizes`` and ``part_sha256`` name each file, its bytes and
its SHA-256, in stream order (``restore`` writes each file under its name, splitting
the stream at the sizes). For such a source ``e2compress.restorable_sha256`` is
:func:`~e2compress.hashing.parts_digest` of the files' names and hashes, and no
``source_sha256`` is recorded (no one file is the source).

The SHA-256 is computed from the reads the readers make anyway (see
:mod:`~e2compress.hashing`).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from .quantize import RenderRange, integer_step, unit_range

if TYPE_CHECKING:
    from .readers import ImageSource
    from .report import ImageReport

PathLike = str | os.PathLike[str]
GROUP = "e2compress/source"
ATTR = "e2compress."
FLIP, NEGATE, PERMUTED, ENCODED = 1, 2, 4, 8
# Root attributes (``e2compress.<name>``) an output that keeps its source's bytes adds to
# the record of :mod:`~e2compress.provenance` (source_sha256 only for sources of one file).
KEPT_ATTRS = (
    "source_sha256",
    "restorable_sha256",
    "restorable_size",
    "restorable_name",
    "source_compression",
    "restorable",
    "restore_note",
)
PIECE_COLUMNS = ("offset", "nbytes", "image", "element", "dtype", "flags")
ENCODED_COLUMNS = (
    "image",
    "compression",
    "predictor",
    "rowsperstrip",
    "offsets_at",
    "offsets_itemsize",
    "counts_at",
    "counts_itemsize",
    "strips",
)
# A TIFF with more bytes than this outside its pixels keeps none (an MRC keeps its
# headers, which its reader holds anyway).
KEPT_LIMIT = 256 << 20
# Held out-of-order blocks beyond this are dropped and read again at the end.
_KEPT_CHUNK = 1 << 22  # bytes per chunk of the kept-bytes dataset
_COMPACT_BYTES = 4096  # kept data up to this size is stored compact, not chunked
DEFLATED_ATTR = "kept_deflated"  # on GROUP: "kept" holds a zlib stream of this many bytes


@dataclass
class Layout:
    """Where a source's pixels are (pieces) and what lies between them (kept bytes)."""

    format: str  # "mrc", "tiff", "spider", "imagic", "dm", "ser" or "eer"
    size: int  # bytes of the restorable file (decompressed, for .gz/.bz2)
    pieces: np.ndarray  # (n, 6) int64, PIECE_COLUMNS, sorted by offset, not overlapping
    dtypes: list[str]  # numpy type strings with byte order, e.g. "<u2"
    axes: tuple[int, int, int] = (1, 2, 3)  # MRC mapc, mapr, maps
    problem: str | None = None  # why the file cannot be rebuilt, if it cannot
    # TIFF pages whose strips are compressed: ENCODED_COLUMNS rows (see the module doc)
    encoded: np.ndarray | None = None
    byteorder: str = "<"  # of a TIFF's offsets and byte counts
    # a source of several files: (name, bytes, SHA-256) of each, in stream order
    parts: list[tuple[str, int, str]] = field(default_factory=list)

    def gaps(self) -> list[tuple[int, int]]:
        """(offset, length) of every byte range outside the pixel runs, in file order."""
        out = []
        pos = 0
        for offset, nbytes in self.pieces[:, :2].tolist():
            if offset > pos:
                out.append((pos, offset - pos))
            pos = offset + nbytes
        if pos < self.size:
            out.append((pos, self.size - pos))
        return out

    @property
    def raw(self) -> bool:
        """True when every pixel run holds plain values (nothing encoded)."""
        return self.problem is None and not bool(np.any(self.pieces[:, 5] & ENCODED))

    @property
    def rebuildable(self) -> bool:
        """True when every encoded run belongs to a page that can be encoded again."""
        if self.problem is not None:
            return False
        pages = set() if self.encoded is None else set(self.encoded[:, 0].tolist())
        images = self.pieces[self.pieces[:, 5] & ENCODED != 0, 2].tolist()
        return all(image in pages for image in images)


def pieces_array(rows: list[tuple[int, int, int, int, int, int]]) -> np.ndarray:
    """Rows as the (n, 6) int64 array, sorted by file offset."""
    arr = np.array(rows, dtype=np.int64).reshape(-1, len(PIECE_COLUMNS))
    return arr[np.argsort(arr[:, 0], kind="stable")]


def merge_runs(pieces: np.ndarray, values: list[int], itemsizes: list[int]) -> np.ndarray:
    """Join runs that follow each other both in the file and in the images' stream (the
    strips of a page, the pages of an ImageJ stack): one row where there were many.

    Args:
        pieces: sorted rows (:func:`pieces_array`).
        values: the number of values of each image.
        itemsizes: bytes per value of each entry of the layout's ``dtypes``.
    """
    out: list[list[int]] = []
    image = end = 0  # where the last run ends in the stream: image, element
    for row in pieces.tolist():
        if out:
            last = out[-1]
            follows = (row[2] == image and row[3] == end) or (
                row[2] == image + 1 and row[3] == 0 and end == values[image]
            )
            if (
                row[0] == last[0] + last[1]
                and row[4:] == last[4:]
                and not last[5] & ENCODED
                and follows
            ):
                last[1] += row[1]
                image, end = row[2], row[3] + row[1] // itemsizes[row[4]]
                continue
        out.append(row)
        image, end = row[2], row[3] + row[1] // itemsizes[row[4]]
    return np.array(out, dtype=np.int64).reshape(-1, len(PIECE_COLUMNS))


def overlapping(pieces: np.ndarray, size: int) -> bool:
    """True when runs overlap or leave the file (the layout cannot be rebuilt)."""
    if not len(pieces):
        return False
    ends = pieces[:, 0] + pieces[:, 1]
    return bool(
        np.any(pieces[:, 0] < 0)
        or np.any(pieces[:, 1] <= 0)
        or np.any(ends > size)
        or np.any(pieces[1:, 0] < ends[:-1])
    )


@dataclass
class Kept:
    """Everything about a source that the archive keeps besides its images."""

    layout: Layout
    kept: bytes  # the bytes outside the pixel runs, in file order
    # of the restorable bytes (the file; for .gz/.bz2 the decompressed file); "" when not
    # known (an EER file, which cannot be restored: the layout's problem says why)
    sha256: str
    source_sha256: str | None  # of the input file as it is on disk (None: not known)
    name: str  # the restorable file's name (a .gz/.bz2 input's name without that suffix)
    compression: str = ""  # of the original input: "gzip", "bzip2" or "" (plain)
    # carried over from an archive: whether its images were stored exactly (None: a
    # fresh source; a re-compressed archive is exact only if it was before)
    exact: bool | None = None


def stored_exactly(source: ImageSource, images: Sequence[ImageReport]) -> bool:
    """True when every image's values come back exactly in the source's type: float32
    storage of a type float32 holds (float16/32, integers of up to 16 bits), or integers
    stored on a unit step, or on EMAN2's unit range (two integer values, both ends
    decoded exactly), with nothing clamped. Conservative: False when unsure."""
    if len(images) != len(source):
        return False
    for rep in images:
        dtype = source.dtype(rep.index)
        if rep.bits == 0:
            if not (dtype.kind == "f" and dtype.itemsize <= 4) and not (
                dtype.kind in "iu" and dtype.itemsize <= 2
            ):
                return False
            continue
        if dtype.kind not in "iu" or rep.truncated or rep.rmin is None or rep.rmax is None:
            return False
        rng = RenderRange(rep.bits, rep.rmin, rep.rmax)
        if not unit_range(rng) and integer_step(rng) != 1:
            return False
    return True


def write_kept(path: PathLike, kept: Kept, *, exact: bool | None = None) -> None:
    """Store ``kept`` in the output ``path`` (a temporary file, locked by the caller).

    Args:
        path: the EMAN2 HDF output being written.
        kept: the source's kept bytes, layout and hashes.
        exact: whether every image was stored exactly (None: unknown), for
            ``e2compress.restorable`` (see :func:`restorable`).
    """
    lay = kept.layout
    # HDF5 1.8 objects (compact groups, no symbol-table heaps) in small metadata blocks:
    # a small stack stays small (the image groups and EMAN2's layout are not touched)
    with h5py.File(path, "r+", locking=False, libver=("v108", "v108"), meta_block_size=512) as f:
        if kept.source_sha256 is not None:
            f.attrs[ATTR + "source_sha256"] = np.bytes_(kept.source_sha256.encode("ascii"))
        if kept.sha256:
            f.attrs[ATTR + "restorable_sha256"] = np.bytes_(kept.sha256.encode("ascii"))
        f.attrs[ATTR + "restorable_size"] = np.int64(lay.size)
        f.attrs[ATTR + "restorable_name"] = np.bytes_(os.fsencode(kept.name))
        f.attrs[ATTR + "source_compression"] = np.bytes_(kept.compression.encode("ascii"))
        group = f.create_group(GROUP)
        group.attrs["format"] = np.bytes_(lay.format.encode("ascii"))
        group.attrs["size"] = np.int64(lay.size)
        group.attrs["dtypes"] = np.array([d.encode("ascii") for d in lay.dtypes] or [b""])
        group.attrs["axes"] = np.array(lay.axes, dtype=np.int32)
        group.attrs["columns"] = np.bytes_(",".join(PIECE_COLUMNS).encode("ascii"))
        if lay.problem is not None:
            group.attrs["problem"] = np.bytes_(lay.problem.encode("utf-8", "replace"))
        if lay.parts:
            group.attrs["parts"] = np.array([os.fsencode(n) for n, _, _ in lay.parts])
            group.attrs["part_sizes"] = np.array([n for _, n, _ in lay.parts], dtype=np.int64)
            group.attrs["part_sha256"] = np.array([h.encode("ascii") for _, _, h in lay.parts])
        packed = zlib.compress(kept.kept, 9)
        if len(packed) <= _COMPACT_BYTES:  # deflated here, kept in the object header
            _dataset(group, "kept", np.frombuffer(packed, dtype=np.uint8))
            group.attrs[DEFLATED_ATTR] = np.int64(len(kept.kept))
        else:
            _dataset(group, "kept", np.frombuffer(kept.kept, dtype=np.uint8))
        _dataset(group, "pieces", lay.pieces.astype("<i8"))
        if lay.encoded is not None and len(lay.encoded):
            _dataset(group, "encoded", lay.encoded.astype("<i8"))
            group.attrs["byteorder"] = np.bytes_(lay.byteorder.encode("ascii"))
        ok = lay.raw and exact is not False and kept.exact is not False
        f.attrs[ATTR + "restorable"] = np.int8(1 if ok else 0)
        if lay.problem is not None:
            note = f"cannot be rebuilt: {lay.problem}"
        elif not lay.raw and not lay.rebuildable:
            note = "cannot be rebuilt: its compressed TIFF strips cannot be encoded again"
        elif not lay.raw:
            note = "compressed TIFF: tags and pixels identical, strips encoded again"
        elif not ok:
            note = "headers only: values quantised (or not exact in float32)"
            if kept.exact is False:
                note = "headers only: values quantised when first compressed"
        else:
            note = "byte for byte"
        f.attrs[ATTR + "restore_note"] = np.bytes_(note.encode("utf-8"))


def _dataset(group: h5py.Group, name: str, data: np.ndarray) -> None:
    """Small data in the object header (compact: no chunk index, which costs more than
    deflate saves on an MRC's 1024 bytes; the 1.8 object header has its own checksum),
    the rest chunked, deflated and checksummed."""
    if data.size == 0:
        group.create_dataset(name, data=data)
        return
    if data.nbytes <= _COMPACT_BYTES:
        space = h5py.h5s.create_simple(data.shape)
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.COMPACT)
        tid = h5py.h5t.py_create(data.dtype)
        h5py.h5d.create(group.id, name.encode(), tid, space, dcpl=dcpl).write(
            h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(data)
        )
        return
    rows = max(1, _KEPT_CHUNK // max(1, data[:1].nbytes))
    chunks = (min(len(data), rows), *data.shape[1:])
    group.create_dataset(
        name, data=data, chunks=chunks, compression="gzip", compression_opts=9, fletcher32=True
    )


def kept_array(group: h5py.Group) -> np.ndarray:
    """The kept bytes of a ``GROUP`` as uint8: read, and inflated when small kept bytes
    were stored deflated in the object header (attribute :data:`DEFLATED_ATTR`).

    Raises:
        ValueError: the dataset is not bytes, or its deflated stream is damaged or does
            not inflate to the recorded size (at most :data:`KEPT_LIMIT`).
    """
    ds = group["kept"]
    if ds.ndim != 1 or ds.dtype != np.uint8:
        raise ValueError("kept source bytes have the wrong type")
    data = np.asarray(ds[()], dtype=np.uint8)
    if DEFLATED_ATTR not in group.attrs:
        return data
    size = int(np.asarray(group.attrs[DEFLATED_ATTR]).reshape(-1)[0])
    if not 0 <= size <= KEPT_LIMIT:
        raise ValueError(f"kept source bytes claim an impossible size ({size})")
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data.tobytes(), size + 1)
    except zlib.error as exc:
        raise ValueError(f"kept source bytes are damaged ({exc})") from None
    if len(raw) != size or not inflater.eof:
        raise ValueError("kept source bytes are damaged (wrong length)")
    return np.frombuffer(raw, dtype=np.uint8)


def attr_text(value: Any) -> str:
    """An attribute's text (bytes decoded as file names are: undecodable bytes kept)."""
    raw = np.asarray(value).reshape(-1)[0]
    if isinstance(raw, bytes | np.bytes_):
        return os.fsdecode(bytes(raw))
    return str(raw)


def read_kept(path: PathLike | h5py.File) -> Kept | None:
    """The kept bytes of an archive, to carry them into a new archive made from it
    (re-compression in place); None when it keeps none. The input's own SHA-256 is not
    known (an HDF input is not read in file order) and is left out.

    Args:
        path: the archive, or the open h5py file.

    Raises:
        OSError, KeyError, ValueError: a damaged archive.
    """
    if isinstance(path, h5py.File):
        return _read_kept(path)
    with h5py.File(path, "r", locking=False) as f:
        return _read_kept(f)


def _read_kept(f: h5py.File) -> Kept | None:
    group = f.get(GROUP)
    if not isinstance(group, h5py.Group):
        return None
    a = group.attrs
    layout = Layout(
        attr_text(a["format"]),
        int(np.asarray(a["size"]).reshape(-1)[0]),
        np.asarray(group["pieces"][()], dtype=np.int64).reshape(-1, len(PIECE_COLUMNS)),
        [attr_text(d) for d in np.asarray(a["dtypes"]).reshape(-1) if attr_text(d)],
        tuple(int(v) for v in np.asarray(a["axes"]).reshape(-1)[:3]),  # type: ignore[arg-type]
        attr_text(a["problem"]) if "problem" in a else None,
        np.asarray(group["encoded"][()], dtype=np.int64) if "encoded" in group else None,
        attr_text(a["byteorder"]) if "byteorder" in a else "<",
        read_parts(group),
    )
    root = f.attrs
    name = root.get(ATTR + "restorable_name", root.get(ATTR + "source_name", b""))
    return Kept(
        layout,
        kept_array(group).tobytes(),
        attr_text(root.get(ATTR + "restorable_sha256", b"")),
        None,
        attr_text(name),
        attr_text(root.get(ATTR + "source_compression", b"")),
        bool(int(np.asarray(root.get(ATTR + "restorable", 0)).reshape(-1)[0])),
    )


def read_parts(group: h5py.Group) -> list[tuple[str, int, str]]:
    """The (name, bytes, SHA-256) of each file of a source of several files (empty for
    one file).

    Raises:
        ValueError: the three attributes do not agree.
    """
    a = group.attrs
    if "parts" not in a:
        return []
    names = [attr_text(v) for v in np.asarray(a["parts"]).reshape(-1)]
    sizes = [int(v) for v in np.asarray(a["part_sizes"]).reshape(-1)]
    hashes = [attr_text(v) for v in np.asarray(a["part_sha256"]).reshape(-1)]
    if not len(names) == len(sizes) == len(hashes) or len(names) < 2:
        raise ValueError("the files of the source are not recorded consistently")
    return list(zip(names, sizes, hashes, strict=True))


def restore_note(path: PathLike) -> str | None:
    """What ``restore`` can make of ``path`` in a few words, as recorded at compression
    time ("byte for byte", "headers only: ...", "cannot be rebuilt: ..."); None when it
    keeps no source bytes."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            if GROUP not in f or ATTR + "restore_note" not in f.attrs:
                return None
            return attr_text(f.attrs[ATTR + "restore_note"])
    except (OSError, KeyError, ValueError, TypeError):
        return None


def restorable(path: PathLike) -> bool | None:
    """What the output ``path`` says at compression time: True when it keeps its
    source's bytes and every image was stored exactly (``restore`` rebuilds the file
    byte for byte and checks its SHA-256), False when not, None when it keeps none."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            if GROUP not in f or ATTR + "restorable" not in f.attrs:
                return None
            return bool(int(np.asarray(f.attrs[ATTR + "restorable"]).reshape(-1)[0]))
    except (OSError, KeyError, ValueError, TypeError):
        return None


def recorded_sha256(path: PathLike) -> str | None:
    """The SHA-256 (hex) of the bytes ``restore`` writes (the source; for a ``.gz``/
    ``.bz2`` source its decompressed bytes), as recorded in ``path``; None if none is."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            value = f.attrs.get(ATTR + "restorable_sha256")
            return None if value is None else attr_text(value)
    except (OSError, ValueError, TypeError):
        return None
