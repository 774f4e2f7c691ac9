"""The source's bytes rebuilt from an archive that kept them (used by ``restore``).

:class:`KeptSource` reads the kept bytes and the pixel layout (see
:mod:`~e2compress.kept`), checks every number of it against the others and against the
images, and gives the restored file as a stream of pieces: the kept bytes with the
decoded images put back in between, in the source's type and byte order (TIFF rows
flipped back, MINISWHITE negated back, MRC axes transposed back, compressed TIFF strips
encoded again). A source of several files (an IMAGIC pair) is one stream, split at the
files' sizes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .archive import EmanHdfFile
from .counts import from_counts
from .decode import decode
from .errors import E2CompressError, InputError
from .gain_io import gain_of
from .hashing import parts_digest
from .kept import (
    ATTR,
    DEFLATED_ATTR,
    ENCODED,
    ENCODED_COLUMNS,
    FLIP,
    GROUP,
    NEGATE,
    PERMUTED,
    PIECE_COLUMNS,
    attr_text,
    kept_array,
    read_parts,
)
from .quantize import F32, RenderRange, integer_step, unit_range
from .readers import strip_compression
from .readers.mrc_header import axis_permutation

PathLike = str | os.PathLike[str]
STEP = 1 << 22  # bytes of kept data read at a time
_ROWS = 1 << 16  # pixel runs read at a time
_FLAGS = FLIP | NEGATE | PERMUTED | ENCODED


class KeptSource:
    """The kept bytes and pixel layout of an archive, checked against each other.

    Raises:
        InputError: the archive keeps no source bytes, or they are damaged.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.images = EmanHdfFile(path, threads=1)
        try:
            self._load()
        except E2CompressError:
            self.images.close()
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
            self.images.close()
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"damaged kept source bytes ({text})", path) from None

    def _fail(self, reason: str) -> InputError:
        return InputError(reason, self.path)

    def _load(self) -> None:
        f = self.images.h5file
        group = f.get(GROUP)
        if not isinstance(group, h5py.Group):
            raise self._fail(
                "keeps no source bytes (made from an EMAN2 HDF file, or by an "
                "e2compress that did not keep them); nothing to restore"
            )
        if "problem" in group.attrs:
            raise self._fail(f"cannot be restored: {attr_text(group.attrs['problem'])}")
        self.format = attr_text(group.attrs["format"])
        self.size = int(np.asarray(group.attrs["size"]).reshape(-1)[0])
        self.axes = tuple(int(a) for a in np.asarray(group.attrs["axes"]).reshape(-1))
        self.dtypes = [
            _dtype(attr_text(d), self.path)
            for d in np.asarray(group.attrs["dtypes"]).reshape(-1)
            if attr_text(d)
        ]
        try:
            kept = kept_array(group) if DEFLATED_ATTR in group.attrs else group["kept"]
        except ValueError as exc:
            raise self._fail(str(exc)) from None
        pieces = group["pieces"]
        if kept.ndim != 1 or kept.dtype != np.uint8:
            raise self._fail("kept source bytes have the wrong type")
        if pieces.ndim != 2 or pieces.shape[1] != len(PIECE_COLUMNS) or pieces.dtype.kind != "i":
            raise self._fail("pixel layout has the wrong shape")
        self.kept = kept
        self.pieces = pieces
        self.encoded: dict[int, list[int]] = {}
        if "encoded" in group:
            table = group["encoded"]
            if (
                table.ndim != 2
                or table.shape[1] != len(ENCODED_COLUMNS)
                or table.shape[0] > len(self.images)
            ):
                raise self._fail("encoded-page table has the wrong shape")
            for row in np.asarray(table[()], dtype=np.int64).tolist():
                self.encoded[row[0]] = row
        self.byteorder = attr_text(group.attrs.get("byteorder", b"<"))
        if self.byteorder not in "<>":
            raise self._fail("invalid byte order of the encoded-page table")
        self.compression = attr_text(f.attrs.get(ATTR + "source_compression", b""))
        name = f.attrs.get(ATTR + "restorable_name")
        if name is None:
            name = f.attrs.get(ATTR + "source_name")
            self.name = None if name is None else strip_compression(attr_text(name))
        else:
            self.name = attr_text(name)
        exact = f.attrs.get(ATTR + "restorable")
        self.exact = exact is not None and bool(np.asarray(exact).reshape(-1)[0])
        note = f.attrs.get(ATTR + "restore_note")
        self.note = "" if note is None else attr_text(note)
        recorded = f.attrs.get(ATTR + "restorable_sha256")
        self.recorded = None if recorded is None else attr_text(recorded)
        self.parts = read_parts(group)
        self.gain = gain_of(f)  # an archive of counts: values are count * gain
        self._check()
        if self.parts:
            self._check_parts()

    def _check_parts(self) -> None:
        """A source of several files: plain, distinct names whose sizes add up."""
        names = [stored_name(name, self.path) for name, _, _ in self.parts]
        if len(set(names)) != len(names) or any(n < 0 for _, n, _ in self.parts):
            raise self._fail("the files of the source are not recorded consistently")
        if sum(n for _, n, _ in self.parts) != self.size:
            raise self._fail("the sizes of the source's files do not add up to its size")
        if self.has_encoded:
            raise self._fail("a source of several files holds no encoded strips")

    def bounds(self) -> list[tuple[int, int]]:
        """Where each file of the source lies in the restored stream (one file: all)."""
        if not self.parts:
            return [(0, 1 << 62)]  # strips moved past the end stay in the one file
        out, pos = [], 0
        for _, n, _ in self.parts:
            out.append((pos, pos + n))
            pos += n
        return out

    def split(self) -> Iterator[tuple[int, int, memoryview]]:
        """:meth:`chunks` as (file index, offset in that file, bytes)."""
        bounds = self.bounds()
        for offset, chunk in self.chunks():
            view = memoryview(chunk).cast("B")
            for k, (a, b) in enumerate(bounds):
                lo, hi = max(offset, a), min(offset + len(view), b)
                if lo < hi:
                    yield k, lo - a, view[lo - offset : hi - offset]

    def combined(self, digests: list[str]) -> str:
        """The digest to compare with the recorded one (several files: :func:`parts_digest`)."""
        if not self.parts:
            return digests[0]
        return parts_digest([(n, d) for (n, _, _), d in zip(self.parts, digests, strict=True)])

    def _check(self) -> None:
        """Every number of the layout against the others and against the images."""
        if self.size < 0:
            raise self._fail(f"invalid restorable size {self.size}")
        if len(self.axes) != 3:
            raise self._fail("invalid axis order")
        count = len(self.images)
        pos = total = 0
        encoded = False
        needed = 0
        self.has_encoded = False
        for offset, nbytes, image, element, dtype, flags in self.rows():
            if offset < pos or nbytes <= 0 or offset + nbytes > self.size:
                raise self._fail(
                    f"pixel run at byte {offset} ({nbytes} bytes) overlaps another or "
                    f"leaves the file ({self.size} bytes)"
                )
            if not 0 <= dtype < len(self.dtypes) or not 0 <= image < count or element < 0:
                raise self._fail(f"pixel run at byte {offset} names no stored image or type")
            whole = flags & ENCODED or not nbytes % self.dtypes[dtype].itemsize
            if not whole or flags & ~_FLAGS:
                raise self._fail(f"pixel run at byte {offset} is not whole values")
            pos = offset + nbytes
            total += nbytes
            if flags & ENCODED:
                encoded = True
                if image not in self.encoded:
                    raise self._fail(
                        f"cannot be rebuilt: the compressed strips of page {image} cannot "
                        "be encoded again (tiles, JPEG or an unsupported codec); export "
                        "writes its pixels"
                    )
            else:
                needed += nbytes // self.dtypes[dtype].itemsize
        if self.kept.shape[0] != self.size - total:
            raise self._fail(
                f"holds {self.kept.shape[0]} kept bytes, its layout needs {self.size - total}"
            )
        if encoded:
            self._check_encoded()
        self.has_encoded = encoded
        values = sum(int(np.prod(self.images.shape(i))) for i in range(count))
        if needed > values:
            raise self._fail(f"its layout needs {needed} values, the images hold {values}")

    def _check_encoded(self) -> None:
        """The encoded-page table: codecs restore can use, tag values inside the file."""
        import tifffile

        for image, comp, pred, per, o_at, o_size, c_at, c_size, strips in self.encoded.values():
            _, ny, _ = self._shape3(image)
            try:
                tifffile.TIFF.COMPRESSORS[comp]
            except (KeyError, ValueError, ImportError):
                raise self._fail(f"page {image}: cannot encode TIFF compression {comp}") from None
            if pred not in (1, 2) or per < 1 or strips != -(-ny // per):
                raise self._fail(f"page {image}: invalid strip encoding")
            for at, size in ((o_at, o_size), (c_at, c_size)):
                if size not in (2, 4, 8) or at < 0 or at + size * strips > self.size:
                    raise self._fail(f"page {image}: strip table outside the file")

    def rows(self) -> Iterator[list[int]]:
        """The pixel runs, read a block at a time (memory bounded at any count)."""
        count = self.pieces.shape[0]
        for a in range(0, count, _ROWS):
            block = np.asarray(self.pieces[a : a + _ROWS], dtype=np.int64)
            if block.shape[0] != min(_ROWS, count - a):
                raise self._fail("pixel layout is cut short")
            yield from block.tolist()

    def _shape3(self, index: int) -> tuple[int, int, int]:
        shape = self.images.shape(index)
        full = (1,) * (3 - len(shape)) + tuple(int(s) for s in shape)
        return full[0], full[1], full[2]

    def could_be_exact(self) -> bool:
        """False when some image's stored levels are not whole numbers apart (values
        quantised off the source's): no need to decode to know it is not the source.
        Conservative: an image whose values happened to lie on its levels counts too."""
        for i in range(len(self.images)):
            rng = self.images.render_range(i)
            if rng is not None and integer_step(rng) is None and not unit_range(rng):
                return False
        return True

    @property
    def quantised(self) -> bool:
        """True when any image is stored quantised (it has a stored mapping)."""
        return any(self.images.render_range(i) is not None for i in range(len(self.images)))

    def close(self) -> None:
        """Close the archive."""
        self.images.close()

    # ------------------------------------------------------------------ the bytes

    def chunks(self) -> Iterator[tuple[int, bytes | memoryview]]:
        """The restored file as (file offset, bytes), a bounded piece at a time: in file
        order, except that a compressed TIFF strip that grew when encoded again goes to
        the end of the file, and its page's strip offsets and byte counts are then
        written again (the last pieces)."""
        values = _Values(self)
        pos = kept_pos = 0
        tail = self.size
        strips: dict[int, dict[int, tuple[int, int]]] = {}  # page: strip: (offset, bytes)
        changed: set[int] = set()
        for offset, nbytes, image, element, dtype, flags in self.rows():
            if offset > pos:
                for data in self._kept(kept_pos, offset - pos):
                    yield pos, data
                    pos += len(data)
                    kept_pos += len(data)
            if flags & ENCODED:
                page = self.encoded[image]
                strip = values.encoded_strip(image, element, page, self.dtypes[dtype], flags)
                index = element // (page[3] * self._shape3(image)[2])
                if len(strip) <= nbytes:
                    yield offset, strip + bytes(nbytes - len(strip))
                    strips.setdefault(image, {})[index] = (offset, len(strip))
                else:
                    yield offset, bytes(nbytes)
                    yield tail, strip + bytes(len(strip) & 1)  # strips start on a word
                    strips.setdefault(image, {})[index] = (tail, len(strip))
                    tail += len(strip) + (len(strip) & 1)
                if len(strip) != nbytes:
                    changed.add(image)
                pos = offset + nbytes
            else:
                for piece in values.run(image, element, nbytes, self.dtypes[dtype], flags):
                    yield pos, piece
                    pos += len(piece)
        if pos < self.size:
            for data in self._kept(kept_pos, self.size - pos):
                yield pos, data
                pos += len(data)
        for image in sorted(changed):
            yield from self._strip_tables(self.encoded[image], strips[image])

    def _strip_tables(
        self, page: list[int], strips: dict[int, tuple[int, int]]
    ) -> Iterator[tuple[int, bytes]]:
        """A page's strip offsets and byte counts, written again after relocation."""
        image, _, _, _, o_at, o_size, c_at, c_size, count = page
        if sorted(strips) != list(range(count)):
            raise self._fail(f"page {image}: its strips are not all in the layout")
        for at, size, column in ((o_at, o_size, 0), (c_at, c_size, 1)):
            numbers = [strips[i][column] for i in range(count)]
            if max(numbers) >= 1 << (8 * size):
                raise self._fail(
                    f"page {image}: strips encoded again do not fit its {8 * size}-bit offsets"
                )
            yield at, np.array(numbers, dtype=f"{self.byteorder}u{size}").tobytes()

    def _kept(self, start: int, length: int) -> Iterator[bytes]:
        for a in range(start, start + length, STEP):
            b = min(a + STEP, start + length)
            data = np.asarray(self.kept[a:b], dtype=np.uint8)
            if data.size != b - a:
                raise self._fail("kept source bytes are cut short")
            yield data.tobytes()


def _dtype(text: str, path: Path) -> np.dtype:
    try:
        dtype = np.dtype(text)
    except TypeError:
        raise InputError(f"invalid stored pixel type {text!r}", path) from None
    if dtype.kind not in "iuf" or dtype.itemsize > 8 or dtype.names is not None:
        raise InputError(f"invalid stored pixel type {text!r}", path)
    return dtype


class _Values:
    """The images as the source stored them: one section at a time, in the source's
    type and byte order, in file order (the last section kept for the next run)."""

    def __init__(self, archive: KeptSource) -> None:
        self.archive = archive
        self._cache: tuple[tuple[int, int, str, int], np.ndarray] | None = None
        self._whole: dict[tuple[str, int], np.ndarray] = {}

    def run(
        self, image: int, element: int, nbytes: int, dtype: np.dtype, flags: int
    ) -> Iterator[memoryview]:
        n = nbytes // dtype.itemsize
        if flags & PERMUTED:
            whole = self._permuted(dtype, flags)
            if element + n > whole.size:
                raise self.archive._fail("pixel run is longer than the stored images")
            yield whole[element : element + n].data.cast("B")
            return
        count = len(self.archive.images)
        while n > 0:
            nz, ny, nx = self.archive._shape3(image)
            per = ny * nx
            if element >= nz * per:
                element -= nz * per
                image += 1
                if image >= count:
                    raise self.archive._fail("pixel run is longer than the stored images")
                continue
            z, off = divmod(element, per)
            section = self._section(image, z, dtype, flags)
            take = min(n, per - off)
            yield section[off : off + take].data.cast("B")
            element += take
            n -= take

    def encoded_strip(
        self, image: int, element: int, page: list[int], dtype: np.dtype, flags: int
    ) -> bytes:
        """The strip of rows starting at value ``element`` of page ``image``, encoded
        as the page was (``page``: its ENCODED_COLUMNS row)."""
        import tifffile

        _, compression, predictor, per = page[:4]
        _, ny, nx = self.archive._shape3(image)
        row0 = element // nx
        if element % nx or not 0 <= row0 < ny:
            raise self.archive._fail(f"page {image}: a strip does not start on a row")
        rows = min(per, ny - row0)
        values = self._section(image, 0, dtype, flags)[row0 * nx : (row0 + rows) * nx]
        data = values.reshape(rows, nx, 1)
        if predictor == 2:
            data = tifffile.TIFF.PREDICTORS[2](data, axis=-2)
        args = {"axis": -2} if compression == 32773 else {}  # PackBits: row by row
        encoded: bytes = tifffile.TIFF.COMPRESSORS[compression](data, **args)
        return bytes(encoded)

    def _section(self, image: int, z: int, dtype: np.dtype, flags: int) -> np.ndarray:
        key = (image, z, dtype.str, flags)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        self._cache = None
        ds = self.archive.images.dataset(image)
        region: tuple[Any, ...] = (z,) if ds.ndim == 3 else ()
        codes = np.asarray(ds[region] if region else ds[()])
        _, ny, nx = self.archive._shape3(image)
        rng = self.archive.images.render_range(image)
        values = _convert(codes.reshape(ny, nx), rng, dtype, flags, self.archive.gain)
        flat = np.ascontiguousarray(values).reshape(-1)
        self._cache = (key, flat)
        return flat

    def _permuted(self, dtype: np.dtype, flags: int) -> np.ndarray:
        """All images transposed back to the file's axis order (MRC), flattened."""
        key = (dtype.str, flags)
        if key not in self._whole:
            perm = axis_permutation(
                (self.archive.axes[0], self.archive.axes[1], self.archive.axes[2])
            )
            if perm is None:
                raise self.archive._fail(f"invalid axis order {self.archive.axes}")
            images = self.archive.images
            parts = [
                _convert(
                    np.asarray(images.dataset(i)[()]),
                    images.render_range(i),
                    dtype,
                    0,
                    self.archive.gain,
                ).reshape(self.archive._shape3(i))
                for i in range(len(images))
            ]
            data = np.concatenate(parts)  # a stack's images are its sections
            inverse = tuple(int(a) for a in np.argsort(perm))
            # numpy joins in native byte order: the file's order is given back here
            file_order = np.ascontiguousarray(data.transpose(inverse), dtype=dtype)
            self._whole[key] = file_order.reshape(-1)
        return self._whole[key]


def _convert(
    codes: np.ndarray,
    rng: RenderRange | None,
    dtype: np.dtype,
    flags: int,
    gain: np.ndarray | None = None,
) -> np.ndarray:
    """Stored codes to values in ``dtype`` (rows flipped and negated per ``flags``;
    counts times ``gain`` for an archive of counts)."""
    values: np.ndarray
    if rng is None:
        values = codes
    else:
        step = integer_step(rng)
        if step is not None and dtype.kind in "iu":  # exact in float64 at any magnitude
            values = float(F32(rng.rmin)) + codes.astype(np.float64) * step
        else:
            values = decode(codes, rng)
    if gain is not None:
        values = from_counts(values, gain)
    if flags & FLIP:
        values = values[::-1]
    if flags & NEGATE:
        values = -values.astype(np.float64 if values.dtype.kind == "f" else np.int64)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if values.dtype.kind == "f":
            values = np.rint(values)
        values = np.clip(values, info.min, info.max)
    with np.errstate(over="ignore", invalid="ignore"):
        return values.astype(dtype)


def stored_name(name: str | None, archive: Path) -> str:
    """The file name to restore to: the stored source name when it is a plain name.

    Raises:
        InputError: no name is stored, or it is not a plain file name (a path, ``..``,
            a NUL): names in an archive are data, never paths.
    """
    if not name:
        raise InputError("records no source name; give the output file name", archive)
    if "/" in name or "\\" in name or "\0" in name or name in (".", "..") or name.strip() == "":
        raise InputError(
            f"records the source name {name!r}, which is not a plain file name; refused "
            "(give the output file name)",
            archive,
        )
    return name
