"""MRC/CCP4 header: parsed without mrcfile's warnings, checked against the file, and
read into EMAN2's keys.

Sizes first. The 1024-byte header is parsed with mrcfile's header dtype and its
permissive machine-stamp and byte-order rules (:func:`parse_header`; mrcfile's own
parser would warn, and catching warnings is not thread-safe) and its nx, ny, nz, mode
and nsymbt are checked against the file before the extended header or any pixel is
read: the file must hold exactly ``1024 + nsymbt + nx*ny*nz*itemsize`` bytes (mode
101: ``(nx+1)//2`` bytes a row). Shorter means truncated, longer means a wrong header
or trailing data (e.g. a section appended before nz was updated); both are errors, so
every image the file holds is in the output.

Mode 0 (8-bit) signedness: MRC2014 says signed bytes, IMOD writes unsigned bytes
unless bit 0 of its ``imodFlags`` is set, and EMAN2 reads every mode 0 file as
unsigned. We read mode 0 as signed only when the file says so: the IMOD stamp
(1146047817 as int32 at byte 152) is present and bit 0 of the flags (int32 at byte
156) is set, or there is no IMOD stamp and ``nversion`` is 20140 or 20141 (an MRC2014
writer). Otherwise the bytes are unsigned.

Axis orders (``mapc, mapr, maps``) other than 1,2,3 are permutations the reader
transposes (:func:`axis_permutation`); orders that are no permutation are read as
stored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mrcfile.utils
import numpy as np
from mrcfile.dtypes import HEADER_DTYPE, get_ext_header_dtype

from ..errors import InputError
from ..hashing import read_exact
from .mode101 import MODE_4BIT

HEADER_BYTES = 1024
IMOD_STAMP = 1146047817
MRC2014_VERSIONS = (20140, 20141)


@dataclass(frozen=True)
class HeaderLayout:
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
        """Bytes the file must have: header, extended header and pixels."""
        return HEADER_BYTES + self.nsymbt + self.row_bytes * self.ny * self.nz

    def describe(self) -> str:
        """The layout on one line, for messages."""
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


def header_layout(header: Any, path: Path) -> HeaderLayout:
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
    return HeaderLayout(mode, dtype, nx, ny, nz, nsymbt)


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


def check_size(layout: HeaderLayout, size: int, path: Path) -> None:
    """The file of ``size`` bytes holds exactly what ``layout`` says.

    Raises:
        InputError: it is shorter (truncated) or longer (wrong header, trailing data).
    """
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


def fei_record(header: Any, nsymbt: int, pread: Callable[[int, int], bytes]) -> Any:
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


def fei_keys(first: Any) -> dict[str, Any]:
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


def mrc_keys(h: Any, ext_type: str, fei: dict[str, Any]) -> dict[str, Any]:
    """EMAN2's ``MRC.*`` keys, pixel size and origin from header ``h`` (as
    :func:`parse_header` gives it), with the extended header's type and FEI keys."""
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
    out["MRC.exttyp"] = ext_type
    for k in range(max(0, min(int(h.nlabl), 10))):
        out[f"MRC.label{k}"] = _text(bytes(h.label[k]))
    out.update(fei)
    return out
