"""MRC/CCP4 input, plain or ``.gz``/``.bz2``: the header is parsed by :mod:`.mrc_header`
(sizes, mode 0 signedness, axis orders), rows are pread; mode 101 is unpacked by
:mod:`.mode101`.

Compressed files are decompressed once, streaming, into an anonymous temporary file
in ``scratch_dir`` (unlinked at once: a killed run leaves nothing) and then read like a
plain file. Decompression stops as soon as the stream holds more than its header
says, so a gzip bomb cannot fill the disk.

As in EMAN2, a ``.mrcs`` file is a stack of 2-D images and any other MRC with nz > 1 is
one 3-D image. Axis orders other than 1,2,3 are transposed to x, y, z in memory.
"""

from __future__ import annotations

import bz2
import hashlib
import math
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import numpy as np

from ..errors import InputError, OutputError
from ..hashing import HashingReader, OrderedHasher, read_exact
from ..kept import PERMUTED, Kept, Layout, pieces_array
from .base import BZIP2_MAGIC, GZIP_MAGIC, ImageSource, PathLike, reason, strip_compression
from .mode101 import MODE_4BIT, unpack_4bit
from .mrc_header import (
    HEADER_BYTES,
    axis_permutation,
    check_size,
    fei_keys,
    fei_record,
    header_layout,
    mrc_keys,
    parse_header,
)

__all__ = ["MrcSource"]

_gzip: Any
_DECOMPRESS_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, ValueError, zlib.error)
try:  # ISA-L inflates gzip several times faster than the standard library
    from isal import igzip as _gzip
    from isal.isal_zlib import error as _isal_error

    _DECOMPRESS_ERRORS += (cast("type[BaseException]", _isal_error),)  # a class; stubs say not
except ImportError:  # pragma: no cover - exercised only without the wheel
    import gzip as _gzip

_CHUNK = 4 << 20  # bytes decompressed per step


def _free_bytes(directory: str) -> int | None:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


@dataclass(frozen=True)
class _Decompressed:
    """A decompressed input: the scratch file and the SHA-256 of both forms."""

    fd: int
    sha256: str  # of the decompressed bytes
    source_sha256: str  # of the compressed file
    source_size: int


def _decompress(
    path: Path, opener: Callable[..., Any], scratch_dir: PathLike | None
) -> _Decompressed:
    """Stream ``path`` into an anonymous file in ``scratch_dir``, hashing both the
    compressed and the decompressed bytes as they pass.

    Raises:
        InputError: corrupt stream, or more or fewer bytes than the MRC header says.
        OutputError: the scratch directory has no room or cannot be written.
    """
    directory = os.fspath(scratch_dir) if scratch_dir is not None else tempfile.gettempdir()
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed below, after the stream
    except OSError as exc:
        raise InputError(f"cannot open: {reason(exc)}", path) from None
    reader = HashingReader(raw)
    try:
        return _decompress_from(path, reader, opener, directory)
    finally:
        raw.close()


def _decompress_from(
    path: Path, reader: HashingReader, opener: Callable[..., Any], directory: str
) -> _Decompressed:
    try:
        stream = opener(reader, "rb")
    except _DECOMPRESS_ERRORS as exc:
        raise InputError(f"corrupt compressed file: {reason(exc)}", path) from None
    with stream:
        try:
            first = _read_full(stream, HEADER_BYTES)
        except _DECOMPRESS_ERRORS as exc:
            raise InputError(f"corrupt compressed file: {reason(exc)}", path) from None
        if not first:
            raise InputError("compressed file holds no data", path)
        if len(first) < HEADER_BYTES:
            raise InputError(
                f"decompressed data ({len(first)} bytes) is too short for an MRC header", path
            )
        layout = header_layout(parse_header(first), path)
        expected = layout.total
        free = _free_bytes(directory)
        if free is not None and expected > free:
            raise OutputError(
                f"decompressing needs {expected} bytes (header: {layout.describe()}), "
                f"{directory} has {free} free",
                path,
            )
        digest = hashlib.sha256()
        with _scratch_file(directory, path) as tmp:
            written = _copy(stream, tmp, first, expected, path, directory, digest)
            if written < expected:
                raise InputError(
                    f"decompressed data is truncated: header says {expected} bytes "
                    f"({layout.describe()}), stream holds {written}",
                    path,
                )
            try:
                source_sha256 = reader.digest()
            except OSError as exc:
                raise InputError(f"cannot read: {reason(exc)}", path) from None
            fd = os.dup(tmp.fileno())
            return _Decompressed(fd, digest.hexdigest(), source_sha256, reader.size)


def _scratch_file(directory: str, path: Path) -> IO[bytes]:
    """An anonymous file in ``directory``: it has no name, so nothing outlives the run."""
    try:
        return tempfile.TemporaryFile(dir=directory)
    except OSError as exc:
        msg = f"cannot create a scratch file in {directory}: {reason(exc)}"
        raise OutputError(msg, path) from None


def _read_full(stream: Any, size: int) -> bytes:
    """Up to ``size`` bytes from ``stream``, fewer only at its end."""
    out = b""
    while len(out) < size:
        more = stream.read(size - len(out))
        if not more:
            break
        out += more
    return out


def _copy(
    stream: Any,
    tmp: IO[bytes],
    first: bytes,
    limit: int,
    path: Path,
    directory: str,
    digest: Any,
) -> int:
    """Copy ``first`` and then ``stream`` to ``tmp`` (hashing it into ``digest``), never
    more than ``limit`` + 1 bytes."""
    written = 0
    chunk = first
    while chunk:
        digest.update(chunk)
        try:
            tmp.write(chunk)
        except OSError as exc:
            raise OutputError(
                f"cannot write scratch file in {directory}: {reason(exc)}", path
            ) from None
        written += len(chunk)
        if written > limit:
            raise InputError(
                f"decompressed data is longer than its header says ({limit} bytes); "
                "wrong header or trailing data",
                path,
            )
        try:
            chunk = stream.read(min(_CHUNK, limit - written + 1))
        except _DECOMPRESS_ERRORS as exc:
            raise InputError(f"corrupt compressed file: {reason(exc)}", path) from None
    try:
        tmp.flush()
    except OSError as exc:
        raise OutputError(
            f"cannot write scratch file in {directory}: {reason(exc)}", path
        ) from None
    return written


class MrcSource(ImageSource):
    """An MRC/CCP4 file (module docstring): ``.mrcs`` stacks of 2-D images, others one.

    Args:
        path: the file.
        magic: its first bytes (gzip/bzip2 signatures select decompression).
        scratch_dir: where a compressed file is decompressed to (default: system temp).
        keep: keep the header bytes and hash the file (see :meth:`kept`).

    Raises:
        InputError: unreadable, unsupported mode, or sizes that disagree with the file.
        OutputError: no room in ``scratch_dir`` for a compressed file's data.
    """

    kind = "mrc"

    def __init__(
        self,
        path: Path,
        magic: bytes,
        *,
        scratch_dir: PathLike | None = None,
        keep: bool = False,
    ) -> None:
        self.path = path
        self._keep = keep
        self._data: np.ndarray | None = None
        self._header_keys: dict[str, Any] | None = None
        self._notices: list[str] = []  # warnings for the user, one line each
        self._decompressed: _Decompressed | None = None
        self._kept_bytes = b""
        self._compression = ""
        try:
            self._open(path, magic, scratch_dir)
        except BaseException:
            self.close()
            raise

    def _open(self, path: Path, magic: bytes, scratch_dir: PathLike | None) -> None:
        if magic.startswith((GZIP_MAGIC, BZIP2_MAGIC)):
            gz = magic.startswith(GZIP_MAGIC)
            self._compression = "gzip" if gz else "bzip2"
            self._decompressed = _decompress(path, _gzip.open if gz else bz2.open, scratch_dir)
            self._fd = self._decompressed.fd
        else:
            try:
                self._fd = os.open(path, os.O_RDONLY)
            except OSError as exc:
                raise InputError(f"cannot open: {reason(exc)}", path) from None
        try:
            size = os.fstat(self._fd).st_size
            if size < HEADER_BYTES:
                raise InputError(f"file is too short for an MRC header ({size} bytes)", path)
            header = parse_header(read_exact(self._pread, HEADER_BYTES, 0))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read MRC file: {reason(exc)}", path) from None
        layout = header_layout(header, path)
        check_size(layout, size, path)
        self._header = header
        self._size = size
        if self._keep:
            if self._decompressed is None:
                self._hasher = OrderedHasher(size)
            try:  # the headers: kept, and the start of the file's hash
                self._kept_bytes = read_exact(self._pread, HEADER_BYTES + layout.nsymbt, 0)
            except OSError as exc:
                raise InputError(f"cannot read MRC header: {reason(exc)}", path) from None
            self._feed(0, self._kept_bytes)
        self._ext_type = bytes(header.exttyp).decode("ascii", "replace").strip("\0 ")
        try:
            record = fei_record(header, layout.nsymbt, self._pread)
        except OSError as exc:
            raise InputError(f"cannot read MRC extended header: {reason(exc)}", path) from None
        self._fei = fei_keys(record) if record is not None else {}
        self._dtype = layout.dtype
        self._packed = layout.mode == MODE_4BIT
        self._row_bytes = layout.row_bytes
        self._offset = HEADER_BYTES + layout.nsymbt
        nx, ny, nz = layout.nx, layout.ny, layout.nz
        self._file_shape = (nz, ny, nx)
        axes = (int(header.mapc), int(header.mapr), int(header.maps))
        self._axes = axes
        shape: tuple[int, ...] = self._file_shape
        perm = axis_permutation(axes)
        if perm is not None:
            whole = self._read_file_rows(0, nz * ny).reshape(nz, ny, nx)
            self._data = np.ascontiguousarray(whole.transpose(perm))
            shape = self._data.shape
        elif axes not in ((1, 2, 3), (0, 0, 0)):  # 0, 0, 0: unset, as in old files
            self._notices.append(
                f"{path}: axis order mapc, mapr, maps = {axes} is not an order of 1, 2, 3; "
                "read as 1, 2, 3 (x, y, z as stored)"
            )
        self._stack = strip_compression(path.name).lower().endswith(".mrcs")
        self._image_shape = (1, shape[1], shape[2]) if self._stack else tuple(shape)
        self._count = shape[0] if self._stack else 1

    def _read_file_rows(self, row0: int, row1: int) -> np.ndarray:
        nx = self._file_shape[2]
        size = (row1 - row0) * self._row_bytes
        try:
            buf = self._pread(size, self._offset + row0 * self._row_bytes)
        except OSError as exc:
            raise InputError(f"cannot read pixel data: {reason(exc)}", self.path) from None
        if len(buf) != size:
            raise InputError("file ended while reading pixel data", self.path)
        self._feed(self._offset + row0 * self._row_bytes, buf)
        if self._packed:
            return unpack_4bit(buf, row1 - row0, nx)
        arr = np.frombuffer(buf, dtype=self._dtype).reshape(row1 - row0, nx)
        return arr.astype(self._dtype.newbyteorder("="), copy=False)

    def _feed(self, offset: int, data: bytes) -> None:
        if self._hasher is not None:
            self._hasher.feed(offset, data)

    def kept(self) -> Kept | None:
        """The header bytes, the pixel layout and the SHA-256 of the file (finished from
        the reads made so far; bytes no one read are read now); None when opened
        without ``keep``.

        Raises:
            InputError: the file cannot be read to its end.
        """
        if not self._keep:
            return None
        nbytes = self._size - self._offset
        flags = PERMUTED if axis_permutation(self._axes) is not None else 0
        pieces = pieces_array([(self._offset, nbytes, 0, 0, 0, flags)])
        layout = Layout("mrc", self._size, pieces, [self._dtype.str], self._axes)
        values = math.prod(self._file_shape)
        if nbytes != values * self._dtype.itemsize:  # e.g. 4-bit values packed in bytes
            problem = f"its {values} values are packed in {nbytes} bytes"
            layout = Layout("mrc", self._size, pieces_array([]), [], problem=problem)
        dec = self._decompressed
        name = strip_compression(self.path.name)
        if dec is not None:
            return Kept(
                layout, self._kept_bytes, dec.sha256, dec.source_sha256, name, self._compression
            )
        assert self._hasher is not None
        try:
            digest = self._hasher.finish(self._pread)
        except OSError as exc:
            raise InputError(f"cannot read: {reason(exc)}", self.path) from None
        return Kept(layout, self._kept_bytes, digest, digest, name)

    def __len__(self) -> int:
        return self._count

    def shape(self, index: int) -> tuple[int, int, int]:
        """(nz, ny, nx) of an image: one section of a ``.mrcs`` stack, else the whole
        volume (a permuted axis order transposed to x, y, z)."""
        nz, ny, nx = self._image_shape
        return int(nz), int(ny), int(nx)

    def dtype(self, index: int) -> np.dtype:
        """The mode's pixel type, in native byte order."""
        native: np.dtype = self._dtype.newbyteorder("=")
        return native

    def read(self, index: int, z: int, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` of section ``z`` of image ``index``.

        Raises:
            InputError: the pixels cannot be read (a read failed or the file ended).
        """
        section = index if self._stack else z
        if self._data is not None:
            return self._data[section, y0:y1]
        ny = self._file_shape[1]
        return self._read_file_rows(section * ny + y0, section * ny + y1)

    def header(self, index: int) -> dict[str, Any]:
        """EMAN2's ``MRC.*`` keys, pixel size, origin and the extended header's keys (the
        same for every image)."""
        if self._header_keys is None:
            self._header_keys = mrc_keys(self._header, self._ext_type, self._fei)
        return dict(self._header_keys)

    def shared_keys(self) -> frozenset[str]:
        """All of them: an MRC file has one header for all its images."""
        return frozenset(self.header(0))

    def notices(self) -> list[str]:
        """Warnings found when opening (an axis order that is no order of 1, 2, 3)."""
        return list(self._notices)

    def close(self) -> None:
        """Drop a transposed file's images and close the file."""
        self._data = None  # a transposed file's images: gone with the file
        super().close()
