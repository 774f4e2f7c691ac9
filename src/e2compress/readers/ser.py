"""FEI/TIA series (``.ser``) input, parsed by ncempy (optional extra ``ser``).

ncempy's ``io`` package (MIT-licensed, from the openNCEM project) parses the series
header: the element type (1-D spectra or 2-D images), the number of valid elements and
the offset of each. Each element starts with its calibration, pixel type and size (50
bytes for an image, 26 for a spectrum), read here and checked against the file, then
its pixels, read a block of rows at a time with ``pread``.

Images. Every valid element is one image (a spectrum is one 1-row image). Rows are
returned in file order, as EMAN2 reads them (ncempy's own reader flips them for
display). Complex elements are refused.

Header. ``SER.*`` keys of the series and of each element as EMAN2 names them (EMAN2
stores the y calibration under the x names; we keep both). The pixel size is the
element's x and y calibration step (metres) when it lies in 0.01-1000 Angstrom;
EMAN2 sets none (1.0).

Opened with ``keep``, every byte outside the valid elements' pixels (the series
header, offset arrays, element headers, tags) is kept and the file hashed from the
reads: one pixel run per element (:mod:`~e2compress.kept`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..pixelsize import APIX_RANGE
from .base import reason
from .runs import RunKept

EXTRA_HINT = "install the optional extra: pip install 'e2compress[ser]'"
IMAGE_TYPE, SPECTRUM_TYPE = 0x4122, 0x4120
SER_DTYPES = {1: "u1", 2: "<u2", 3: "<u4", 4: "i1", 5: "<i2", 6: "<i4", 7: "<f4", 8: "<f8"}
_IMAGE_HEAD = struct.Struct("<ddiddihii")  # x cal, y cal, type, nx, ny: 50 bytes
_SPECTRUM_HEAD = struct.Struct("<ddihi")  # cal, type, length: 26 bytes
_SERIES_HEAD = struct.Struct("<hhhiiii")  # ... TotalNumberElements, ValidNumberElements
_OFFSET_SIZE = {0x0210: 4, 0x0220: 8}  # SeriesVersion -> bytes of an offset
_TAG_SIZE = {0x4152: 6, 0x4142: 22}  # TagTypeID -> bytes of a tag (type, time[, x, y])
_SERIES_KEYS = (
    "ByteOrder",
    "SeriesID",
    "SeriesVersion",
    "DataTypeID",
    "TagTypeID",
    "TotalNumberElements",
    "ValidNumberElements",
    "OffsetArrayOffset",
    "NumberDimensions",
)


@dataclass(frozen=True)
class _Element:
    offset: int  # first pixel
    dtype: np.dtype
    shape: tuple[int, int]  # (ny, nx)
    keys: dict[str, Any]


class SerSource(RunKept):
    """A TIA ``.ser`` file (see the module docstring).

    Raises:
        InputError: ncempy is not installed, the file cannot be parsed, an element lies
            outside the file, or its type is not supported.
    """

    kind = "ser"

    def __init__(self, path: Path, *, keep: bool = False) -> None:
        self.path = path
        try:
            import ncempy.io.ser as ncem_ser
        except ImportError:
            raise InputError(f"reading SER files needs ncempy: {EXTRA_HINT}", path) from None
        self._open(path)
        try:
            self._check_counts()
            self._parse(ncem_ser)
            if keep:
                runs = [
                    (e.offset, e.shape[0] * e.shape[1] * e.dtype.itemsize, k, 0, e.dtype.str, 0)
                    for k, e in enumerate(self._elements)
                ]
                self._keep_runs(runs)
        except OSError as exc:
            self.close()
            raise InputError(f"cannot read SER file: {reason(exc)}", path) from None
        except BaseException:
            self.close()
            raise

    def _check_counts(self) -> None:
        """The element counts and the offset arrays against the file, before ncempy
        allocates arrays of the claimed length; each valid element's tag inside the
        file (the tags end the file: a cut shows there first)."""
        raw = self._pread(_SERIES_HEAD.size + 8, 0)
        if len(raw) < _SERIES_HEAD.size + 8:
            raise InputError(f"file is too short for a SER header ({self._size} bytes)", self.path)
        _, _, version, _, tag_type, total, valid = _SERIES_HEAD.unpack_from(raw)
        size = _OFFSET_SIZE.get(version)
        if size is None:
            return  # not a known series version: ncempy says so
        table = struct.unpack_from("<i" if size == 4 else "<q", raw, _SERIES_HEAD.size)[0]
        if not 0 <= valid <= total or table < 0 or table + 2 * total * size > self._size:
            raise InputError(
                f"SER file is truncated or damaged: {valid} valid of {total} elements, "
                f"offset arrays at byte {table}, file has {self._size} bytes",
                self.path,
            )
        tag_size = _TAG_SIZE.get(tag_type)
        tags = self._pread(valid * size, table + total * size)
        for k, offset in enumerate(np.frombuffer(tags, "<i4" if size == 4 else "<i8").tolist()):
            if tag_size is not None and offset + tag_size > self._size:
                raise InputError(
                    f"SER file is truncated: the tag of element {k} needs bytes "
                    f"{offset}..{offset + tag_size}, file has {self._size}",
                    self.path,
                )

    def _parse(self, ncem_ser: Any) -> None:
        try:
            # numpy overflow on damaged headers: np.errstate is per thread (no process-wide filter)
            with np.errstate(all="ignore"), ncem_ser.fileSER(self.path) as ser:
                head = dict(ser.head)
        except Exception as exc:  # ncempy raises many types on damaged files
            raise InputError(f"cannot read SER file: {reason(exc)}", self.path) from None
        kind = int(head["DataTypeID"])
        if kind not in (IMAGE_TYPE, SPECTRUM_TYPE):
            raise InputError(f"unknown SER element type {kind:#06x}", self.path)
        count = int(head["ValidNumberElements"])
        offsets = np.asarray(head["DataOffsetArray"], dtype=np.int64).ravel()
        if count < 1:
            raise InputError("SER file holds no valid elements", self.path)
        if offsets.size < count:
            raise InputError(
                f"SER file lists {offsets.size} element offsets for {count} elements", self.path
            )
        self._series = {f"SER.{k}": int(head[k]) for k in _SERIES_KEYS if k in head}
        self._elements = [self._element(k, int(offsets[k]), kind) for k in range(count)]

    def _element(self, k: int, offset: int, kind: int) -> _Element:
        head = _IMAGE_HEAD if kind == IMAGE_TYPE else _SPECTRUM_HEAD
        raw = self._pread(head.size, offset) if 0 <= offset < self._size else b""
        if len(raw) != head.size:
            raise InputError(f"SER file is truncated: element {k} is cut off", self.path)
        values = head.unpack(raw)
        keys: dict[str, Any] = {}
        if kind == IMAGE_TYPE:
            x0, dx, ex, y0, dy, ey, code, nx, ny = values
            keys.update(
                {
                    "SER.CalibrationOffsetX": x0,
                    "SER.CalibrationDeltaX": dx,
                    "SER.CalibrationElementX": ex,
                    "SER.CalibrationOffsetY": y0,
                    "SER.CalibrationDeltaY": dy,
                    "SER.CalibrationElementY": ey,
                }
            )
            apix = (abs(dx) * 1e10, abs(dy) * 1e10)
            if all(np.isfinite(a) and APIX_RANGE[0] < a < APIX_RANGE[1] for a in apix):
                keys.update(apix_x=np.float32(apix[0]), apix_y=np.float32(apix[1]))
                keys["apix_z"] = np.float32(apix[0])
        else:
            x0, dx, ex, code, nx = values
            ny = 1
            keys.update(
                {
                    "SER.CalibrationOffset": x0,
                    "SER.CalibrationDelta": dx,
                    "SER.CalibrationElement": ex,
                }
            )
        keys["SER.DataType"] = int(code)
        if code not in SER_DTYPES:
            raise InputError(f"SER element {k} has unsupported data type {code}", self.path)
        if nx < 1 or ny < 1:
            raise InputError(f"SER element {k} has dimensions {nx}x{ny}", self.path)
        dtype = np.dtype(SER_DTYPES[code])
        start = offset + head.size
        end = start + nx * ny * dtype.itemsize
        if end > self._size:
            raise InputError(
                f"SER file is truncated: element {k} needs bytes {start}..{end}, "
                f"file has {self._size}",
                self.path,
            )
        return _Element(start, dtype, (ny, nx), keys)

    def __len__(self) -> int:
        return len(self._elements)

    def shape(self, index: int) -> tuple[int, int, int]:
        """(1, ny, nx) of element ``index`` (a 1-D spectrum is one row)."""
        ny, nx = self._elements[index].shape
        return 1, ny, nx

    def dtype(self, index: int) -> np.dtype:
        """The element's pixel type, in native byte order."""
        native: np.dtype = self._elements[index].dtype.newbyteorder("=")
        return native

    def read(self, index: int, z: int, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` of element ``index`` (``z`` is 0).

        Raises:
            InputError: the pixels cannot be read (a read failed or the file ended).
        """
        element = self._elements[index]
        nx = element.shape[1]
        row = nx * element.dtype.itemsize
        buf = self._read_run((y1 - y0) * row, element.offset + y0 * row, "SER")
        rows = np.frombuffer(buf, element.dtype).reshape(y1 - y0, nx)
        return rows.astype(self.dtype(index))

    def header(self, index: int) -> dict[str, Any]:
        """The series' keys and element ``index``'s calibration keys (``apix_*`` when
        plausible)."""
        return {**self._series, **self._elements[index].keys}

    def shared_keys(self) -> frozenset[str]:
        """The series' keys, and the element keys that are the same in every element."""
        first = self._elements[0].keys
        same = {k for k, v in first.items() if all(e.keys.get(k) == v for e in self._elements)}
        return frozenset(self._series) | frozenset(same)
