"""Gatan DigitalMicrograph DM3/DM4 input, parsed by ncempy (optional extra ``dm``).

ncempy's ``io`` package (MIT-licensed, from the openNCEM project) parses the tag tree;
it gives each data set's dimensions, type and byte offset. The pixels are then read
here a block of rows at a time with ``pread``, after checking that every data set lies
inside the file and holds exactly the bytes its dimensions need.

Images. The first data set of most files is a thumbnail (RGB) and is skipped. Every
other data set is read: a 2-D set is one image, a 3-D set (a stack or a series) is one
2-D image per section, as EMAN2 reads DM4 (EMAN2's DM3 reader keeps only the first
section; we keep them all), and a 1-D set (a spectrum) is one 1-row image. Rows are
flipped to EMAN2's bottom-up order, as EMAN2 does. Complex, RGB, packed and 4-D data
are refused.

Header. The keys EMAN2's reader sets, with its names, defaults and units
(``DM3.exposure_time``, ``DM4.voltage`` in kV, ``microscope_voltage`` ...), from the
last tag of each name in the file, as EMAN2's tag table keeps them. The pixel size is
the image's spatial calibration (scale and unit of its x and y dimensions) when it is
a length within 0.01-1000 Angstrom; otherwise EMAN2's rule, CCD pixel size over actual
magnification, when the file has both. EMAN2 uses only the latter, so for calibrated
images without a magnification tag (most STEM and processed images) EMAN2 says 1.0.

Opened with ``keep``, every byte outside the read data sets (the tag tree, the
thumbnail) is kept and the file hashed from the reads: one pixel run per section, rows
flipped back (:mod:`~e2compress.kept`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..kept import FLIP
from ..pixelsize import APIX_RANGE, UNIT_ANGSTROM
from .base import reason
from .runs import RunKept

EXTRA_HINT = "install the optional extra: pip install 'e2compress[dm]'"
THUMBNAIL_TYPE = 23  # RGBA, DigitalMicrograph's thumbnail
_DATA_TAG = re.compile(r"\.ImageList\.(\d+)\.ImageData\.Data\.arrayOffset")
# DM data type -> numpy (little-endian: ncempy reads only little-endian files)
DM_DTYPES = {
    1: "<i2",
    2: "<f4",
    6: "u1",
    7: "<i4",
    9: "i1",
    10: "<u2",
    11: "<u4",
    12: "<f8",
}
# EMAN2's header keys: (key, tag name, kind); kind s string, i int, f float
_EMAN2_KEYS = (
    ("acq_date", "Acquisition Date", "s"),
    ("acq_time", "Acquisition Time", "s"),
    ("source", "Source", "s"),
    ("exposure_number", "Exposure Number", "i"),
    ("exposure_time", "Exposure (s)", "f"),
    ("zoom", "Zoom", "f"),
    ("antiblooming", "Antiblooming", "i"),
    ("indicated_mag", "Indicated Magnification", "f"),
    ("actual_mag", "Actual Magnification", "f"),
    ("pixel_size", "Pixel Size (um) #0", "f"),
    ("name", "Name", "s"),
    ("voltage", "Voltage", "f"),
    ("cs", "Cs(mm)", "f"),
    ("frame_type", "Processing", "s"),
    ("camera_x", "Active Size (pixels) #0", "i"),
    ("camera_y", "Active Size (pixels) #1", "i"),
    ("binning_x", "Binning #0", "i"),
    ("binning_y", "Binning #1", "i"),
)


@dataclass(frozen=True)
class _DataSet:
    """One data set: where its pixels are, its type, and the (nz, ny, nx) it holds."""

    list_index: int  # its number in the file's ImageList (1-based)
    offset: int
    dtype: np.dtype
    shape: tuple[int, int, int]


def _leaf_tags(tags: dict[str, Any]) -> dict[str, Any]:
    """Tag values by leaf name, the last one of each name winning (EMAN2's tag table);
    array tags also as ``name #k`` for their elements."""
    out: dict[str, Any] = {}
    for path, value in tags.items():
        leaf = path.rsplit(".", 1)[-1]
        out[leaf] = value
        if isinstance(value, np.ndarray) and value.ndim == 1:
            for k, item in enumerate(value[:4]):
                out[f"{leaf} #{k}"] = item
    return out


def _number(value: Any) -> float:
    try:
        out = float(np.ravel(value)[0]) if isinstance(value, np.ndarray) else float(value)
    except (TypeError, ValueError, IndexError):
        return 0.0
    return out if math.isfinite(out) else 0.0


class DmSource(RunKept):
    """A DM3/DM4 file (see the module docstring).

    Raises:
        InputError: ncempy is not installed, the file cannot be parsed, a data set lies
            outside the file, or its type or rank is not supported.
    """

    kind = "dm"

    def __init__(self, path: Path, *, keep: bool = False) -> None:
        self.path = path
        try:
            import ncempy.io.dm as ncem_dm
        except ImportError:
            raise InputError(f"reading DM files needs ncempy: {EXTRA_HINT}", path) from None
        self._open(path)
        try:
            self._parse(ncem_dm)
            if keep:
                self._keep()
        except BaseException:
            self.close()
            raise

    def _keep(self) -> None:
        runs = []
        for index, (data, section) in enumerate(self._images):
            _, ny, nx = data.shape
            nbytes = ny * nx * data.dtype.itemsize
            runs.append((data.offset + section * nbytes, nbytes, index, 0, data.dtype.str, FLIP))
        self._keep_runs(runs)

    def _parse(self, ncem_dm: Any) -> None:
        try:
            # numpy overflow on damaged tags: np.errstate is per thread (no process-wide filter)
            with np.errstate(all="ignore"), ncem_dm.fileDM(self.path, on_memory=False) as dm:
                version = int(dm._dmType)
                declared = int(np.ravel(dm.fileSize)[0])
                tags = dict(dm.allTags)
        except Exception as exc:  # ncempy raises many types on damaged files
            raise InputError(f"cannot read DM file: {reason(exc)}", self.path) from None
        # the root length is the file's length less 16 (DM3) or 24 (DM4) bytes
        end = declared + (16 if version == 3 else 24)
        if self._size < end:
            raise InputError(
                f"DM file is truncated: its header says {end} bytes, file has {self._size}",
                self.path,
            )
        sets = self._data_sets(tags)
        self._prefix = f"DM{version}"
        self._tags = tags
        self._leaves = _leaf_tags(tags)
        self._images: list[tuple[_DataSet, int]] = [(s, z) for s in sets for z in range(s.shape[0])]
        if not self._images:
            raise InputError("DM file holds no image data", self.path)
        self._header_cache: dict[int, dict[str, Any]] = {}

    def _data_sets(self, tags: dict[str, Any]) -> list[_DataSet]:
        """The image data sets, from the tags of each ``ImageList`` entry."""
        out: list[_DataSet] = []
        lists = sorted(
            int(m.group(1)) for key in tags if (m := _DATA_TAG.fullmatch(key)) is not None
        )
        for n in lists:
            base = f".ImageList.{n}.ImageData"
            code = int(_number(tags.get(f"{base}.DataType", -1)))
            dims = []
            for d in range(1, 5):
                if f"{base}.Dimensions.{d}" in tags:
                    dims.append(int(_number(tags[f"{base}.Dimensions.{d}"])))
            if n == 1 and code == THUMBNAIL_TYPE and len(dims) == 2:
                continue  # the thumbnail
            k = n - 1  # the data set's number in the ImageList, from 0
            if code not in DM_DTYPES:
                raise InputError(f"DM data set {k} has unsupported data type {code}", self.path)
            if not 1 <= len(dims) <= 3:
                raise InputError(f"DM data set {k} has {len(dims)} dimensions", self.path)
            nx, ny, nz = (*dims, 1, 1)[:3]
            if min(nx, ny, nz) < 1:
                raise InputError(f"DM data set {k} has dimensions {nx}x{ny}x{nz}", self.path)
            dtype = np.dtype(DM_DTYPES[code])
            offset = int(_number(tags[f"{base}.Data.arrayOffset"]))
            size = int(_number(tags.get(f"{base}.Data.arraySize", -1)))
            need = nx * ny * nz * dtype.itemsize
            if size != need:
                raise InputError(
                    f"DM data set {k} holds {size} bytes, its {nx}x{ny}x{nz} "
                    f"{dtype.name} pixels need {need}",
                    self.path,
                )
            if offset < 0 or offset + size > self._size:
                raise InputError(
                    f"DM file is truncated: data set {k} needs bytes {offset}..{offset + size}, "
                    f"file has {self._size}",
                    self.path,
                )
            out.append(_DataSet(n, offset, dtype, (nz, ny, nx)))
        return out

    def __len__(self) -> int:
        return len(self._images)

    def shape(self, index: int) -> tuple[int, int, int]:
        """(1, ny, nx): each section of a DM data set is an image."""
        _, ny, nx = self._images[index][0].shape
        return 1, ny, nx

    def dtype(self, index: int) -> np.dtype:
        """The data set's pixel type, in native byte order."""
        native: np.dtype = self._images[index][0].dtype.newbyteorder("=")
        return native

    def read(self, index: int, z: int, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` of image ``index`` (``z`` is 0), counted from the last stored
        row, as EMAN2 reads DM.

        Raises:
            InputError: the pixels cannot be read (a read failed or the file ended).
        """
        data, section = self._images[index]
        _, ny, nx = data.shape
        row = nx * data.dtype.itemsize
        start = data.offset + (section * ny + ny - y1) * row  # rows flipped, as in EMAN2
        buf = self._read_run((y1 - y0) * row, start, "DM")
        rows = np.frombuffer(buf, data.dtype).reshape(y1 - y0, nx)[::-1]
        return rows.astype(self.dtype(index))

    def header(self, index: int) -> dict[str, Any]:
        """EMAN2's ``DM3.*``/``DM4.*`` keys, voltage, Cs and pixel size of image ``index``'s
        data set."""
        data = self._images[index][0]
        cached = self._header_cache.get(data.list_index)
        if cached is None:
            cached = self._header_cache[data.list_index] = self._keys(data)
        return dict(cached)

    def shared_keys(self) -> frozenset[str]:
        """Every key when all images come from one data set, else none."""
        if len({d.list_index for d, _ in self._images}) == 1:
            return frozenset(self.header(0))
        return frozenset()

    def _keys(self, data: _DataSet) -> dict[str, Any]:
        out: dict[str, Any] = {}
        leaves = self._leaves
        for key, tag, kind in _EMAN2_KEYS:
            value = leaves.get(tag)
            name = f"{self._prefix}.{key}"
            if kind == "s":
                out[name] = value if isinstance(value, str) else ""
            elif kind == "i":
                out[name] = int(_number(value)) if value is not None else 0
            else:
                out[name] = _number(value) if value is not None else 0.0
        out[f"{self._prefix}.voltage"] /= 1000.0
        out["microscope_voltage"] = np.float32(out[f"{self._prefix}.voltage"])
        out["microscope_cs"] = np.float32(out[f"{self._prefix}.cs"])
        apix = self._calibrated_apix(data)
        if apix is None:
            mag = out[f"{self._prefix}.actual_mag"]
            if mag > 0:
                value = 10000.0 * out[f"{self._prefix}.pixel_size"] / mag
                if APIX_RANGE[0] < value < APIX_RANGE[1]:
                    apix = (value, value)
        if apix is not None:
            out["apix_x"], out["apix_y"] = np.float32(apix[0]), np.float32(apix[1])
            out["apix_z"] = np.float32(apix[0])
        return out

    def _calibrated_apix(self, data: _DataSet) -> tuple[float, float] | None:
        """Pixel size (x, y) in Angstrom from the data set's spatial calibration."""
        base = f".ImageList.{data.list_index}.ImageData.Calibrations.Dimension"
        values = []
        for dim in (1, 2):
            scale = self._tags.get(f"{base}.{dim}.Scale")
            unit = self._tags.get(f"{base}.{dim}.Units")
            factor = UNIT_ANGSTROM.get(str(unit).strip().lower()) if unit is not None else None
            if factor is None or scale is None:
                return None
            value = abs(_number(scale)) * factor
            if not APIX_RANGE[0] < value < APIX_RANGE[1]:
                return None
            values.append(value)
        if data.shape[1] == 1:  # a spectrum: its one row has no calibrated height
            return None
        return values[0], values[1]
