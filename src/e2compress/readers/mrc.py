"""MRC/CCP4 input, plain or ``.gz``/``.bz2``: mrcfile parses the header, rows are pread.

Sizes first. The 1024-byte header is parsed with mrcfile's header dtype and its
permissive machine-stamp and byte-order rules (:func:`parse_header`; mrcfile's own
parser would warn, and catching warnings is not thread-safe) and its nx, ny, nz, mode
and nsymbt are checked
against the file before the extended header or any pixel is read: the file must hold
exactly ``1024 + nsymbt + nx*ny*nz*itemsize`` bytes (mode 101: ``(nx+1)//2`` bytes a
row). Shorter means truncated, longer
means a wrong header or trailing data (e.g. a section appended before nz was
updated); both are errors, so every image the file holds is in the output.

Compressed files are decompressed once, streaming, into an anonymous temporary file
in ``scratch_dir`` (unlinked at once: a killed run leaves nothing) and then read like a
plain file. Decompression stops as soon as the stream holds more than its header
says, so a gzip bomb cannot fill the disk.

Mode 0 (8-bit) signedness: MRC2014 says signed bytes, IMOD writes unsigned bytes
unless bit 0 of its ``imodFlags`` is set, and EMAN2 reads every mode 0 file as
unsigned. We read mode 0 as signed only when the file says so: the IMOD stamp
(1146047817 as int32 at byte 152) is present and bit 0 of the flags (int32 at byte
156) is set, or there is no IMOD stamp and ``nversion`` is 20140 or 20141 (an MRC2014
writer). Otherwise the bytes are unsigned.

Mode 101 (SerialEM's packed 4-bit counts; mrcfile does not read it): two unsigned
4-bit values a byte, the first pixel of each pair in the low nibble, each row padded to
whole bytes (``(nx + 1) // 2`` bytes a row), as SerialEM and IMOD document. The values
0..15 are returned as uint8, exactly. EMAN2 reads the same values for even nx; for odd
nx it drops the padding nibble of each row's byte count and unpacks the rows as one
stream, which shifts every row after the first (see docs/counting_inputs.md).

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

import mrcfile.utils
import numpy as np
from mrcfile.dtypes import HEADER_DTYPE, get_ext_header_dtype

from ..errors import InputError, OutputError
from ..kept import PERMUTED, HashingReader, Kept, Layout, OrderedHasher, pieces_array, read_exact
from .base import BZIP2_MAGIC, GZIP_MAGIC, ImageSource, PathLike, reason, strip_compression

_gzip: Any
_DECOMPRESS_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, ValueError, zlib.error)
try:  # ISA-L inflates gzip several times faster than the standard library
    from isal import igzip as _gzip
    from isal.isal_zlib import error as _isal_error

    _DECOMPRESS_ERRORS += (cast("type[BaseException]", _isal_error),)  # a class; stubs say not
except ImportError:  # pragma: no cover - exercised only without the wheel
    import gzip as _gzip

HEADER_BYTES = 1024
IMOD_STAMP = 1146047817
MRC2014_VERSIONS = (20140, 20141)
MODE_4BIT = 101  # SerialEM: two unsigned 4-bit values a byte, low nibble first
_CHUNK = 4 << 20  # bytes decompressed per step


@dataclass(frozen=True)
class _Layout:
    """What a header says about the file: pixel type, dimensions and total size."""

    mode: int
    dtype: np.dtype
    nx: int
    ny: int
    nz: int
    nsymbt: int

    @property
    def row_bytes(self) -> int:
        """Bytes of one stored row (mode 101: two pixels a byte, odd nx padded)."""
        if self.mode == MODE_4BIT:
            return (self.nx + 1) // 2
        return self.nx * self.dtype.itemsize

    @property
    def total(self) -> int:
        return HEADER_BYTES + self.nsymbt + self.row_bytes * self.ny * self.nz

    def describe(self) -> str:
        return f"nx={self.nx} ny={self.ny} nz={self.nz} mode {self.mode} nsymbt={self.nsymbt}"


def parse_header(raw: bytes) -> Any:
    """The 1024-byte MRC header ``raw`` as a record array in the file's byte order.

    mrcfile's permissive byte-order rules, without its warnings (which change the
    process's warning filters when caught, and so are not thread-safe): the machine
    stamp gives the byte order (little-endian when it is not a known stamp), and a mode
    that is no MRC mode in that order but is one in the other selects the other.
    Nothing is checked here; :func:`_layout` checks what the reader relies on.
    """
    stamp = HEADER_DTYPE.fields["machst"][1]
    try:
        order = mrcfile.utils.byte_order_from_machine_stamp(raw[stamp : stamp + 4])
    except ValueError:
        order = "<"
    header = _as_header(raw, order)
    if not _is_mode(header.mode):
        other = _as_header(raw, ">" if order == "<" else "<")
        if _is_mode(other.mode):
            return other
    return header


def _as_header(raw: bytes, order: str) -> Any:
    dtype = HEADER_DTYPE.newbyteorder(order)
    return np.frombuffer(raw, dtype=dtype, count=1).reshape(()).view(np.recarray)


def _is_mode(mode: Any) -> bool:
    try:
        mrcfile.utils.dtype_from_mode(mode)
    except ValueError:
        return False
    return True


def _layout(header: Any, path: Path) -> _Layout:
    """Pixel type, dimensions and sizes from a parsed header, validated."""
    mode = int(header.mode)
    if mode in (3, 4):
        raise InputError("complex MRC data (mode 3/4) is not supported", path)
    try:
        dtype = (
            np.dtype(np.uint8)
            if mode == MODE_4BIT
            else mrcfile.utils.data_dtype_from_header(header)
        )
    except ValueError:
        raise InputError(f"unsupported MRC mode {mode}", path) from None
    if mode == 0 and not mode0_is_signed(header):
        dtype = np.dtype(np.uint8)
    nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
    if min(nx, ny, nz) < 1:
        raise InputError(f"invalid MRC dimensions nx={nx} ny={ny} nz={nz}", path)
    nsymbt = int(header.nsymbt)
    if nsymbt < 0:
        raise InputError(f"invalid extended header size nsymbt={nsymbt}", path)
    return _Layout(mode, dtype, nx, ny, nz, nsymbt)


def mode0_is_signed(header: Any) -> bool:
    """True when an MRC header says its mode 0 bytes are signed (see the module docstring).

    Args:
        header: the header as mrcfile parses it (a record array in the file's byte order).
    """
    int32 = header.mode.dtype
    stamp, flags = (int(v) for v in np.frombuffer(header.tobytes(), int32, 2, 152))
    if stamp == IMOD_STAMP:
        return bool(flags & 1)
    return int(header.nversion) in MRC2014_VERSIONS


def _check_size(layout: _Layout, size: int, path: Path) -> None:
    if HEADER_BYTES + layout.nsymbt > size:
        raise InputError(
            f"extended header size nsymbt={layout.nsymbt} exceeds the file ({size} bytes)", path
        )
    if size < layout.total:
        raise InputError(
            f"file is truncated: header says {layout.total} bytes "
            f"({layout.describe()}), file has {size}",
            path,
        )
    if size > layout.total:
        raise InputError(
            f"file has {size - layout.total} bytes more than its header says "
            f"({layout.total} bytes: {layout.describe()}); wrong header or trailing data",
            path,
        )


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
        layout = _layout(parse_header(first), path)
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
        layout = _layout(header, path)
        _check_size(layout, size, path)
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
            record = _fei_record(header, layout.nsymbt, self._pread)
        except OSError as exc:
            raise InputError(f"cannot read MRC extended header: {reason(exc)}", path) from None
        self._fei = _fei_keys(record) if record is not None else {}
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
        nz, ny, nx = self._image_shape
        return int(nz), int(ny), int(nx)

    def dtype(self, index: int) -> np.dtype:
        native: np.dtype = self._dtype.newbyteorder("=")
        return native

    def read(self, index: int, z: int, y0: int, y1: int) -> np.ndarray:
        section = index if self._stack else z
        if self._data is not None:
            return self._data[section, y0:y1]
        ny = self._file_shape[1]
        return self._read_file_rows(section * ny + y0, section * ny + y1)

    def header(self, index: int) -> dict[str, Any]:
        if self._header_keys is None:
            self._header_keys = self._mrc_keys()
        return dict(self._header_keys)

    def shared_keys(self) -> frozenset[str]:
        """All of them: an MRC file has one header for all its images."""
        return frozenset(self.header(0))

    def _mrc_keys(self) -> dict[str, Any]:
        h = self._header
        f32 = np.float32
        cella = [float(h.cella[k]) for k in ("x", "y", "z")]
        grid = [int(h.mx), int(h.my), int(h.mz)]
        out: dict[str, Any] = {}
        for axis, length, m in zip("xyz", cella, grid, strict=True):
            apix = length / m if m > 0 else 0.0
            out[f"apix_{axis}"] = f32(apix if 0.01 < apix < 1000 else 1.0)
        for axis in "xyz":
            out[f"origin_{axis}"] = f32(h.origin[axis])
        ints = {
            "nx": h.nx,
            "ny": h.ny,
            "nz": h.nz,
            "nxstart": h.nxstart,
            "nystart": h.nystart,
            "nzstart": h.nzstart,
            "mx": h.mx,
            "my": h.my,
            "mz": h.mz,
            "mode": h.mode,
            "mapc": h.mapc,
            "mapr": h.mapr,
            "maps": h.maps,
            "ispg": h.ispg,
            "nsymbt": h.nsymbt,
            "nversion": h.nversion,
            "nlabels": h.nlabl,
        }
        for key, value in ints.items():
            out[f"MRC.{key}"] = int(value)
        out["MRC.machinestamp"] = int(np.frombuffer(bytes(h.machst), dtype="<u2")[0])
        floats = {
            "xlen": h.cella.x,
            "ylen": h.cella.y,
            "zlen": h.cella.z,
            "alpha": h.cellb.alpha,
            "beta": h.cellb.beta,
            "gamma": h.cellb.gamma,
            "minimum": h.dmin,
            "maximum": h.dmax,
            "mean": h.dmean,
            "rms": h.rms,
        }
        for key, value in floats.items():
            out[f"MRC.{key}"] = f32(value)
        out["MRC.map"] = _text(bytes(h.map))
        out["MRC.exttyp"] = self._ext_type
        for k in range(max(0, min(int(h.nlabl), 10))):
            out[f"MRC.label{k}"] = _text(bytes(h.label[k]))
        out.update(self._fei)
        return out

    def notices(self) -> list[str]:
        return list(self._notices)

    def close(self) -> None:
        self._data = None  # a transposed file's images: gone with the file
        super().close()


def unpack_4bit(buf: bytes, rows: int, nx: int) -> np.ndarray:
    """Rows of mode 101 data: two 4-bit values a byte, low nibble first, each row
    ``(nx + 1) // 2`` bytes (the high nibble of an odd row's last byte is padding).

    Args:
        buf: the stored bytes of ``rows`` rows.
        rows: how many rows ``buf`` holds.
        nx: pixels a row.
    """
    packed = np.frombuffer(buf, dtype=np.uint8).reshape(rows, (nx + 1) // 2)
    out = np.empty((rows, packed.shape[1], 2), dtype=np.uint8)
    np.bitwise_and(packed, 15, out=out[:, :, 0])
    np.right_shift(packed, 4, out=out[:, :, 1])
    flat = out.reshape(rows, -1)
    return flat if flat.shape[1] == nx else np.ascontiguousarray(flat[:, :nx])


def axis_permutation(axes: tuple[int, int, int]) -> tuple[int, ...] | None:
    """How to transpose the file's (section, row, column) array into (z, y, x) for an
    MRC axis order ``(mapc, mapr, maps)``; None for the standard order or a bad one."""
    if axes == (1, 2, 3) or sorted(axes) != [1, 2, 3]:
        return None
    file_axes = [axes[2], axes[1], axes[0]]  # numpy axis 0 = sections
    return tuple(file_axes.index(t) for t in (3, 2, 1))


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


def _clean_text(raw: bytes) -> str | None:
    """The text before the first NUL, or None when it is not printable ASCII."""
    text = raw.split(b"\0", 1)[0]
    if all(0x20 <= b < 0x7F for b in text):
        return text.decode("ascii")
    return None


def _fei_record(header: Any, nsymbt: int, pread: Callable[[int, int], bytes]) -> Any:
    """The first FEI1/FEI2 extended-header record, or None when the extended header is
    not one of ``nz`` such records (mrcfile's ``indexed_extended_header`` rules, without
    its warning).

    Raises:
        OSError: the extended header cannot be read.
    """
    dtype = get_ext_header_dtype(bytes(header.exttyp), header.mode.dtype.byteorder)
    if dtype is None or nsymbt < max(1, int(header.nz)) * dtype.itemsize:
        return None
    first = np.frombuffer(read_exact(pread, dtype.itemsize, HEADER_BYTES), dtype=dtype)[0]
    if int(first["Metadata size"]) != dtype.itemsize:
        return None
    return first


def _fei_keys(first: Any) -> dict[str, Any]:
    """Fields of the first FEI extended-header record as ``FEIMRC.<name>``.

    Args:
        first: the record (:func:`_fei_record`).

    Types follow mrcfile's FEI dtypes: 32-bit unsigned bitmasks stay ``np.uint32``,
    32-bit ints are ints, 64-bit ints (time stamps) and doubles are float64, booleans
    0/1; strings are the printable ASCII before the first NUL (other strings and the
    reserved "Unused range" bytes are left out).
    """
    out: dict[str, Any] = {}
    for name in first.dtype.names or ():
        if name.startswith("Unused"):
            continue
        field: np.dtype = first.dtype.fields[name][0]
        value = first[name]
        key = f"FEIMRC.{name}"
        if field.kind == "S":
            text = _clean_text(bytes(value))
            if text is not None:
                out[key] = text
        elif field.kind == "b":
            out[key] = int(value)
        elif field.kind == "u" and field.itemsize <= 4:
            out[key] = np.uint32(value)
        elif field.kind in "iu":
            out[key] = int(value) if field.itemsize <= 4 else np.float64(value)
        elif field.kind == "f":
            out[key] = np.float64(value) if field.itemsize == 8 else np.float32(value)
    return out
