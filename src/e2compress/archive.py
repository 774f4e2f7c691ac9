"""Reading an EMAN2 HDF file back (spec §1): :class:`EmanHdfFile`, lazy and decoded.

Written by :mod:`~e2compress.layout`; the chunks and codes are decoded by
:mod:`~e2compress.decode`, the attributes read by :mod:`~e2compress.attrs`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import h5py
import numpy as np
from h5py import h5a, h5d, h5g, h5t

from . import h5direct
from .attrs import plain_value, read_attr
from .decode import ChunkLayout, Decoder, chunk_layout, decode, read_values, value_dtype
from .errors import InputError
from .quantize import RenderRange, code_max

PathLike = str | os.PathLike[str]
_I32, _F32 = np.dtype("<i4"), np.dtype("<f4")
# Images up to this many bytes are decoded in the calling thread (a pool task costs more).
POOL_MIN_BYTES = 1 << 20
_READ_MDC_BYTES = 256 << 10  # HDF5 metadata cache of a file being read


def render_range(attrs: Mapping[str, Any]) -> RenderRange | None:
    """The stored quantisation mapping of an image group, or None for plain values."""
    try:
        bits = int(np.asarray(attrs["EMAN.stored_renderbits"]).reshape(-1)[0])
        rmin = float(np.asarray(attrs["EMAN.stored_rendermin"]).reshape(-1)[0])
        rmax = float(np.asarray(attrs["EMAN.stored_rendermax"]).reshape(-1)[0])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    if bits <= 0 or bits > 16:
        return None
    return RenderRange(bits, rmin, rmax)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _open_h5(path: str, locking: bool | None) -> h5py.File:
    """Open read-only with a small metadata cache (see :func:`_bound_cache`); retry
    without HDF5 file locking where locks are refused."""
    if locking is not None:
        return _bound_cache(h5py.File(path, "r", locking=locking))
    try:
        return _bound_cache(h5py.File(path, "r"))
    except OSError as exc:
        if "lock" not in str(exc).lower():
            raise
        return _bound_cache(h5py.File(path, "r", locking=False))


def _bound_cache(f: h5py.File) -> h5py.File:
    """Cap the HDF5 metadata cache of a file being read at _READ_MDC_BYTES.

    HDF5 lets it grow to 32 MB of accounted size, about 10x that in memory (measured:
    +120 MB after opening the 20,000 datasets of a stack; +2 MB with this cap, at the
    same speed). Each image's metadata is visited once; the group's index stays cached.
    """
    config = f.id.get_mdc_config()
    config.max_size = _READ_MDC_BYTES
    config.min_size = min(config.min_size, _READ_MDC_BYTES)
    config.initial_size = min(config.initial_size, _READ_MDC_BYTES)
    config.set_initial_size = True
    f.id.set_mdc_config(config)
    return f


_RANGE_ATTRS = (
    (b"EMAN.stored_renderbits", _I32),
    (b"EMAN.stored_rendermin", _F32),
    (b"EMAN.stored_rendermax", _F32),
)
_RANGE_DIRECT = tuple((name, "i" if dt == _I32 else "f") for name, dt in _RANGE_ATTRS)
_MAX_KNOWN = 16  # dataset types / creation property lists remembered per file


class EmanHdfFile:
    """A lazily read EMAN2 HDF file: ``len()``, ``f[i]`` (decoded), ``f.header(i)``.

    Reading an image opens only that image's dataset and its three mapping attributes
    (low-level h5py calls); nothing is read for the other images.
    """

    def __init__(
        self, path: PathLike, *, threads: int | None = None, locking: bool | None = None
    ) -> None:
        self.path = os.fspath(path)
        try:
            self._file = _open_h5(self.path, locking)
        except OSError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"not a readable HDF5 file ({reason})", self.path) from None
        try:
            self._images, self._count = self._layout()
        except InputError:
            self._file.close()
            raise
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
            self._file.close()
            raise InputError(
                f"damaged EMAN2 HDF structure ({_first_line(exc)})", self.path
            ) from None
        self._images_id = self._images.id
        self._threads = threads or os.cpu_count() or 1
        self._pool: ThreadPoolExecutor | None = None
        self._group_attrs: dict[str, Any] | None = None
        self._mtypes = {dt: h5t.py_create(dt) for dt in (_I32, _F32)}
        # dataset types and creation property lists seen so far (h5py objects kept
        # alive for comparisons) with what they mean; a stack has one of each
        self._types: list[Any] = []
        self._dtypes: list[np.dtype] = []
        self._plists: list[Any] = []
        self._layouts: list[ChunkLayout] = []
        lib = h5direct.library()
        self._direct = h5direct.Reader(lib) if lib is not None else None

    def _layout(self) -> tuple[h5py.Group, int]:
        if "num_dataset" in self._file.attrs:
            raise InputError("legacy pre-2006 EMAN HDF layout is not supported", self.path)
        images = self._file.get("MDF/images")
        if not isinstance(images, h5py.Group):
            raise InputError("HDF5 file has no EMAN2 image data (no /MDF/images group)", self.path)
        if "imageid_max" in images.attrs:
            count = int(np.asarray(images.attrs["imageid_max"]).reshape(-1)[0]) + 1
        else:
            count = len([k for k in images if k.isdigit()])
        if count < 0:
            raise InputError(f"invalid imageid_max {count - 1}", self.path)
        if count > len(images):
            raise InputError(
                f"imageid_max says {count} images, the file has {len(images)} groups", self.path
            )
        return images, count

    def __enter__(self) -> EmanHdfFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file and the decode threads."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._types.clear()
        self._plists.clear()
        if self._file.id.valid:
            self._file.close()

    @property
    def h5file(self) -> h5py.File:
        """The open h5py file (for what lies outside ``/MDF``, e.g. kept source bytes)."""
        return self._file

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self._count:
            raise IndexError(f"image {index} out of range (file has {self._count})")

    def _dsid(self, index: int) -> Any:
        """The low-level dataset of image ``index``."""
        self._check_index(index)
        try:
            return h5d.open(self._images_id, b"%d/image" % index)
        except KeyError:
            raise InputError(f"image {index} does not exist", self.path) from None
        except (OSError, RuntimeError, ValueError) as exc:
            raise InputError(f"image {index} is damaged ({_first_line(exc)})", self.path) from None

    def _group_id(self, index: int) -> Any:
        """The low-level group of image ``index`` (its dataset is not opened)."""
        self._check_index(index)
        try:
            return h5g.open(self._images_id, b"%d" % index)
        except KeyError:
            raise InputError(f"image {index} does not exist", self.path) from None
        except (OSError, RuntimeError, ValueError) as exc:
            raise InputError(f"image {index} is damaged ({_first_line(exc)})", self.path) from None

    def dataset(self, index: int) -> h5py.Dataset:
        """The raw h5py dataset of image ``index``."""
        return h5py.Dataset(self._dsid(index))

    def render_range(self, index: int) -> RenderRange | None:
        """The stored quantisation mapping of image ``index`` (None for float data)."""
        self._open(index)  # the image must exist
        return self._range(index)

    def value_dtype(self, index: int) -> np.dtype:
        """The type ``f[index]`` returns: float32, or float64 where float32 cannot hold
        the stored values (:func:`value_dtype`)."""
        _, _, dtype, _ = self._open(index)
        return value_dtype(dtype, self._range(index))

    def _range(self, index: int) -> RenderRange | None:
        """The mapping, read with three attribute reads; general parser if unusual."""
        name = b"%d" % index
        if self._direct is not None:
            got = self._direct.read_scalars(self._images_id.id, name, _RANGE_DIRECT)
            if got is False:
                return None
            if got is not None:
                bits, rmin, rmax = got
                return RenderRange(int(bits), rmin, rmax) if 0 < bits <= 16 else None
        values = []
        try:
            for attr, dtype in _RANGE_ATTRS:
                aid = h5a.open(self._images_id, attr, obj_name=name)
                if aid.get_storage_size() != 4:  # not one 4-byte number
                    return render_range(self._images[str(index)].attrs)
                buf = np.empty(1, dtype=dtype)
                aid.read(buf, mtype=self._mtypes[dtype])
                values.append(buf[0])
        except KeyError:
            return None
        except (OSError, RuntimeError, TypeError, ValueError):
            return render_range(self._images[str(index)].attrs)
        bits = int(values[0])
        if bits <= 0 or bits > 16:
            return None
        return RenderRange(bits, float(values[1]), float(values[2]))

    def _dtype(self, dsid: Any, known: int = -1) -> np.dtype:
        """The dataset's element type (``known``: its position in ``self._types``)."""
        if known >= 0:
            return self._dtypes[known]
        tid = dsid.get_type()
        dtype: np.dtype = tid.dtype
        if len(self._types) < _MAX_KNOWN:
            self._types.append(tid)
            self._dtypes.append(dtype)
        return dtype

    def _layout_for(self, dsid: Any, known: int = -1) -> ChunkLayout:
        """The dataset's chunk layout (``known``: its position in ``self._plists``)."""
        if known >= 0:
            return self._layouts[known]
        plist = dsid.get_create_plist()
        layout = chunk_layout(plist)
        if len(self._plists) < _MAX_KNOWN:
            self._plists.append(plist)
            self._layouts.append(layout)
        return layout

    def _open(self, index: int) -> tuple[Any, tuple[int, ...], np.dtype, ChunkLayout]:
        """Image ``index``'s dataset, dims, element type and layout.

        Direct HDF5 calls where possible (see :mod:`h5direct`), else h5py (which also
        gives the errors).
        """
        self._check_index(index)
        direct = self._direct
        if direct is not None:
            hid = direct.open_dataset(self._images_id.id, b"%d/image" % index)
            if hid is not None:
                dsid = h5direct.wrap_dataset(hid)
                chunks = [layout.chunks for layout in self._layouts]
                info = direct.info(hid, self._types, self._plists, chunks)
                if info is not None:
                    dtype = self._dtype(dsid, info.type_index)
                    return dsid, info.dims, dtype, self._layout_for(dsid, info.plist_index)
        dsid = self._dsid(index)
        try:
            shape = dsid.get_space().get_simple_extent_dims()
            return dsid, shape, self._dtype(dsid), self._layout_for(dsid)
        except (OSError, RuntimeError, ValueError) as exc:
            raise InputError(f"image {index} is damaged ({_first_line(exc)})", self.path) from None

    def shape(self, index: int) -> tuple[int, ...]:
        """Shape of image ``index``: (ny, nx) or (nz, ny, nx)."""
        return self._open(index)[1]

    def raw_attrs(self, index: int) -> dict[str, Any]:
        """Attributes of image ``index`` as stored (names with their ``EMAN.`` prefix)."""
        gid = self._group_id(index)
        out: dict[str, Any] = {}
        names: list[bytes] = []
        try:
            h5a.iterate(gid, names.append)
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise InputError(
                f"image {index} has damaged attributes ({_first_line(exc)})", self.path
            ) from None
        for raw in names:
            try:
                name = raw.decode()
            except UnicodeDecodeError:
                continue  # a damaged, non-UTF-8 name: not an EMAN2 key
            try:
                out[name] = read_attr(gid, raw)
            except (OSError, RuntimeError, TypeError, ValueError):
                continue
        return out

    def group_attrs(self) -> dict[str, Any]:
        """Attributes of ``/MDF/images`` other than ``imageid_max``, as stored: keys
        shared by all images (EMAN2 shows them as ``Group.<name>``)."""
        if self._group_attrs is None:
            out: dict[str, Any] = {}
            try:
                names = list(self._images.attrs)
            except (OSError, RuntimeError, KeyError, ValueError):
                names = []
            for name in names:
                if isinstance(name, str) and name != "imageid_max":
                    try:
                        out[name] = self._images.attrs[name]
                    except (OSError, RuntimeError, TypeError, ValueError):
                        continue
            self._group_attrs = out
        return dict(self._group_attrs)

    def group_header(self) -> dict[str, Any]:
        """:meth:`group_attrs` as EMAN2 reports them: ``Group.<name>``, plain values."""
        return {f"Group.{name}": plain_value(value) for name, value in self.group_attrs().items()}

    def header(self, index: int) -> dict[str, Any]:
        """Header of image ``index`` as EMAN2 reports it (prefix stripped, ``Group.*``)."""
        out = self.group_header()
        for name, value in self.raw_attrs(index).items():
            key = name[5:] if name.startswith("EMAN.") else name
            out[key] = plain_value(value)
        shape = self.shape(index)
        out["nx"], out["ny"], out["nz"] = [*shape[::-1], 1, 1][:3]
        return out

    def _read(self, index: int, rng: RenderRange | None, decoded: bool) -> np.ndarray:
        dsid, shape, dtype, layout = self._open(index)
        try:
            size = math.prod(shape)
            pool = self._executor() if size * dtype.itemsize >= POOL_MIN_BYTES else None
            decoder = None
            unsigned = dtype.kind == "u" and dtype.itemsize <= 2
            # a table is cheaper than per-pixel arithmetic when there are more pixels
            if decoded and rng is not None and unsigned and size > code_max(rng.bits):
                decoder = Decoder.of(rng, dtype, size)
            values = read_values(dsid, layout, shape, dtype, pool, decoder)
        except (OSError, RuntimeError, ValueError) as exc:
            raise InputError(f"cannot read image {index} ({_first_line(exc)})", self.path) from None
        if not decoded or decoder is not None:
            return values
        return decode(values, rng)

    def read_codes(self, index: int) -> np.ndarray:
        """The stored values of image ``index`` without rescaling."""
        return self._read(index, None, decoded=False)

    def _executor(self) -> Executor | None:
        if self._pool is None and self._threads > 1:
            self._pool = ThreadPoolExecutor(max_workers=self._threads)
        return self._pool

    def __getitem__(self, index: int) -> np.ndarray:
        if index < 0:
            index += self._count
        self._check_index(index)
        return self._read(index, self._range(index), decoded=True)

    def read_region(self, index: int, region: tuple[int | slice, ...]) -> np.ndarray:
        """Decoded values of a slice of image ``index`` (reads only the chunks needed)."""
        shape = self.shape(index)
        whole = len(region) <= len(shape) and all(
            isinstance(r, slice) and r.indices(s) == (0, s, 1)
            for r, s in zip(region, shape, strict=False)
        )
        if whole:
            return self[index]
        ds = self.dataset(index)
        return decode(np.asarray(ds[region]), self._range(index))
