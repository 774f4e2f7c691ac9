"""MRC/CCP4 input via mrcfile: ``.mrcs`` are stacks of 2-D images, others one image."""

from __future__ import annotations

import os
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .sources import ImageSource, reason, strip_compression


class MrcSource(ImageSource):
    """MRC/CCP4 files via mrcfile: ``.mrcs`` are stacks of 2-D images, others one image."""

    kind = "mrc"

    def __init__(self, path: Path, magic: bytes) -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self._open(path, magic)
        self.warnings = [str(w.message) for w in caught]

    def _open(self, path: Path, magic: bytes) -> None:
        import mrcfile
        import mrcfile.utils

        self.path = path
        self._fd: int | None = None
        self._data: np.ndarray | None = None
        self._header_keys: dict[str, Any] | None = None
        compressed = magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh"
        try:
            mrc = mrcfile.open(path, permissive=True, header_only=not compressed)
        except (OSError, EOFError, ValueError, MemoryError, zlib.error) as exc:
            raise InputError(f"cannot read MRC file: {reason(exc)}", path) from None
        try:
            header = mrc.header
            self._header = header
            self._ext_type = bytes(header.exttyp).decode("ascii", "replace").strip("\0 ")
            self._fei = _fei_keys(mrc) if self._ext_type in ("FEI1", "FEI2") else {}
            mode = int(header.mode)
            if mode in (3, 4):
                raise InputError("complex MRC data (mode 3/4) is not supported", path)
            try:
                dtype = mrcfile.utils.data_dtype_from_header(header)
            except ValueError:
                raise InputError(f"unsupported MRC mode {mode}", path) from None
            nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
            if min(nx, ny, nz) < 1:
                raise InputError(f"invalid MRC dimensions nx={nx} ny={ny} nz={nz}", path)
            nsymbt = int(header.nsymbt)
            if nsymbt < 0:
                raise InputError(f"invalid extended header size {nsymbt}", path)
            self._offset = 1024 + nsymbt
            nbytes = nx * ny * nz * dtype.itemsize
            if compressed:
                data = mrc.data
                if data is None or data.size != nx * ny * nz:
                    raise InputError("compressed MRC data is shorter than its header says", path)
                self._data = np.asarray(data).reshape(nz, ny, nx)
            else:
                size = path.stat().st_size
                if size < self._offset + nbytes:
                    raise InputError(
                        f"file is truncated: header says {self._offset + nbytes} bytes "
                        f"(nx={nx} ny={ny} nz={nz} mode {mode}), file has {size}",
                        path,
                    )
            self._dtype = dtype
            self._file_shape = (nz, ny, nx)
        finally:
            mrc.close()
        axes = (int(header.mapc), int(header.mapr), int(header.maps))
        self._perm: tuple[int, ...] | None = None
        if axes != (1, 2, 3) and sorted(axes) == [1, 2, 3]:
            file_axes = [axes[2], axes[1], axes[0]]  # numpy axis 0 = sections
            self._perm = tuple(file_axes.index(t) for t in (3, 2, 1))
        if not compressed:
            try:
                self._fd = os.open(path, os.O_RDONLY)
            except OSError as exc:
                raise InputError(f"cannot open: {reason(exc)}", path) from None
        if self._perm is not None:
            whole = self._data
            if whole is None:
                whole = self._read_file_rows(0, nz * ny).reshape(nz, ny, nx)
            self._data = np.ascontiguousarray(whole.transpose(self._perm))
        shape = self._data.shape if self._data is not None else self._file_shape
        self._stack = strip_compression(path.name).lower().endswith(".mrcs")
        self._image_shape = (1, shape[1], shape[2]) if self._stack else tuple(shape)
        self._count = shape[0] if self._stack else 1

    def _read_file_rows(self, row0: int, row1: int) -> np.ndarray:
        assert self._fd is not None
        nx = self._file_shape[2]
        size = (row1 - row0) * nx * self._dtype.itemsize
        buf = os.pread(self._fd, size, self._offset + row0 * nx * self._dtype.itemsize)
        if len(buf) != size:
            raise InputError("file ended while reading pixel data", self.path)
        arr = np.frombuffer(buf, dtype=self._dtype).reshape(row1 - row0, nx)
        return arr.astype(self._dtype.newbyteorder("="), copy=False)

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

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


def _fei_keys(mrc: Any) -> dict[str, Any]:
    """Scalar fields of the first FEI extended-header record as ``FEIMRC.<name>``."""
    try:
        records = mrc.indexed_extended_header
    except (AttributeError, ValueError):
        return {}
    if records is None or len(records) == 0:
        return {}
    first = records[0]
    out: dict[str, Any] = {}
    for name in first.dtype.names or ():
        value = first[name]
        if isinstance(value, np.bytes_):
            out[f"FEIMRC.{name}"] = _text(bytes(value))
        elif isinstance(value, np.bool_):
            out[f"FEIMRC.{name}"] = int(value)
        elif isinstance(value, np.floating):
            out[f"FEIMRC.{name}"] = np.float64(value) if value.dtype.itemsize == 8 else value
        elif isinstance(value, np.integer):
            out[f"FEIMRC.{name}"] = int(value) if -(2**31) <= int(value) < 2**31 else float(value)
    return out
