"""EMAN2's HDF5 image layout (spec §1), the write side: :class:`EmanHdfWriter`, and the
header of each image (:class:`Headers`).

Layout: ``/MDF/images/<i>/image`` datasets, per-image attributes ``EMAN.<key>`` on the
image group, ``imageid_max`` (int32, shape (1,)) on ``/MDF/images``.

Files of one image (movies, micrographs, maps) are written as EMAN2 writes them:
the earliest HDF5 file format and the whole header on the image group. Stacks (more
than one image) use the :class:`StackLayout`: the HDF5 1.8 file format (compact
groups, small object headers, one small chunk-index node per image) and, on each image
group, only the keys EMAN2 needs per image; keys that are the same for every image are
stored once, as attributes of ``/MDF/images`` (EMAN2 reads them as ``Group.<key>``).
A file of one image carries EMAN2's full header (statistics included); in a stack,
EMAN2 recomputes the statistics on read (spec §5.3).
See docs/format.md, "Stack layout", for the measurements behind each setting.
Attribute types: :mod:`~e2compress.attrs`; reading back: :mod:`~e2compress.archive`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np
from h5py import h5d, h5f, h5g, h5p, h5s, h5t

from . import h5direct
from .attrs import AttrMaker, write_attr
from .blocks import dataset_shape
from .options import Options
from .quantize import F32, RenderRange, storage_dtype
from .ranges import Stats
from .readers.base import ImageSource

PathLike = str | os.PathLike[str]
DATATYPE = {0: 7, 1: 2, 2: 4}  # EMAN2 EMDataType for float / uchar / ushort storage


@dataclass(frozen=True)
class StackLayout:
    """How a stack (many images) is stored; see the module docstring.

    ``chunks_per_image`` sizes each image's chunk-index B-tree node (HDF5's
    ``istore_k``): one node of 2k entries per image instead of the default 64.
    """

    chunks_per_image: int = 1
    images: int = 0  # 0: unknown (many)

    @property
    def istore_k(self) -> int:
        """Half the number of entries of one chunk-index node (HDF5: 1..32 here)."""
        return max(1, min(32, -(-self.chunks_per_image // 2)))

    @property
    def meta_block(self) -> int:
        """HDF5 metadata block size: the largest power of two up to 1/8 of the
        stack's metadata (about 1 KB an image), between 1 KB and _STACK_META_BLOCK.

        Small blocks lose ~100 bytes an image in leftovers, large ones up to a block
        at the end of the file (a 32 KB block made a 4-image stack 4x its pixels).
        """
        if self.images <= 0:
            return _STACK_META_BLOCK
        eighth = (self.images << 10) // 8
        return max(1024, min(_STACK_META_BLOCK, 1 << max(0, eighth.bit_length() - 1)))


# Attribute counts beyond which HDF5 moves attributes into a separate heap and B-tree
# ("dense" storage: ~1.5 KB more per image group; measured). An image header is small.
_IMAGE_MAX_COMPACT, _IMAGE_MIN_DENSE = 64, 48
_SHARED_TYPES = (np.dtype("<f4"), np.dtype("<i4"))  # attribute types stored once in a stack file
_GROUP_MAX_COMPACT = 256  # attributes of /MDF/images kept in its object header
_GROUP_COMPACT_LINKS = (16, 14)  # HDF5's max_compact, min_dense for its links
_ROOT_COMPACT_ATTRS = 48  # attributes kept in the root group's object header
_STACK_MDC_BYTES = 4 << 20  # HDF5 metadata cache of a stack being written
_STACK_META_BLOCK = 32 << 10  # HDF5 metadata aggregation block of a stack


class EmanHdfWriter:
    """Writes images into a new file in EMAN2's layout.

    ``stack`` selects the stack layout (see the module docstring); without it the file
    is what EMAN2 itself writes.
    """

    def __init__(self, path: PathLike, stack: StackLayout | None = None) -> None:
        self.stack = stack
        self._attrs = AttrMaker()
        self._direct: h5direct.Writer | None = None
        self._max_id = -1
        self._current: tuple[int, Any] | None = None
        self._dcpls: dict[tuple[Any, ...], Any] = {}
        self._types: dict[np.dtype, Any] = {}
        self._spaces: dict[tuple[int, ...], Any] = {}
        if stack is None:
            self._file = h5py.File(path, "w", libver="earliest", locking=False)
            self._images = self._file.create_group("MDF").create_group("images")
            self._gcpl: Any = None
        else:
            lib = h5direct.library()
            self._direct = h5direct.Writer(lib) if lib is not None else None
            self._attrs = AttrMaker(self._direct)
            self._file = self._create_stack_file(os.fspath(path), stack)
            gcpl = h5p.create(h5p.GROUP_CREATE)
            # EMAN2 opens /MDF/images attributes by creation order: keep it on record.
            gcpl.set_attr_creation_order(h5p.CRT_ORDER_TRACKED | h5p.CRT_ORDER_INDEXED)
            # the shared keys (an MRC header: ~45) in the object header, not in a
            # separate heap and two B-trees (4.3 KB more, measured)
            gcpl.set_attr_phase_change(_GROUP_MAX_COMPACT, _GROUP_MAX_COMPACT - 1)
            # and the links of up to 16 images (HDF5: 8), not a heap and B-tree (1.1 KB)
            h5direct.set_property(gcpl, "H5Pset_link_phase_change", *_GROUP_COMPACT_LINKS)
            mdf = h5g.create(self._file.id, b"MDF")
            self._images = h5py.Group(h5g.create(mdf, b"images", gcpl=gcpl))
            self._attrs.share_types(self._file.id, _SHARED_TYPES)
            self._gcpl = h5p.create(h5p.GROUP_CREATE)
            self._gcpl.set_obj_track_times(False)
            self._gcpl.set_attr_phase_change(_IMAGE_MAX_COMPACT, _IMAGE_MIN_DENSE)
        self._attrs.create(self._images.id, "imageid_max", np.array([-1], dtype=np.int32))

    @staticmethod
    def _create_stack_file(path: str, stack: StackLayout) -> h5py.File:
        fcpl = h5p.create(h5p.FILE_CREATE)
        h5direct.set_property(fcpl, "H5Pset_istore_k", stack.istore_k)
        # the root's attributes (the provenance record and the kept source's hashes,
        # ~20) stay in its object header: past HDF5's 8, a fractal heap and a B-tree
        # for them cost ~2.5 KB
        fcpl.set_attr_phase_change(_ROOT_COMPACT_ATTRS, _ROOT_COMPACT_ATTRS - 2)
        fapl = h5p.create(h5p.FILE_ACCESS)
        fapl.set_libver_bounds(h5f.LIBVER_V18, h5f.LIBVER_V18)  # readable by HDF5 >= 1.8
        # HDF5's metadata cache may grow to 32 MB; a stack's images are written once and
        # not revisited, so a small cache keeps memory flat in the image count
        mdc = fapl.get_mdc_config()
        mdc.max_size = _STACK_MDC_BYTES
        mdc.initial_size = min(mdc.initial_size, _STACK_MDC_BYTES)
        mdc.min_size = min(mdc.min_size, _STACK_MDC_BYTES)
        fapl.set_mdc_config(mdc)
        # metadata is allocated from blocks of this size; with HDF5's 2 KB the leftover
        # of each block around the variable-size chunks is lost: ~100 bytes per image
        # in the file, and held in memory by the free-space manager (measured)
        fapl.set_meta_block_size(stack.meta_block)
        # chunks go where they are written, not into 2 KB blocks whose leftovers
        # are lost (481 bytes of a 4-image stack)
        h5direct.set_property(fapl, "H5Pset_small_data_block_size", 0)
        if hasattr(fapl, "set_file_locking"):
            fapl.set_file_locking(False, True)
        fid = h5f.create(path.encode(), h5f.ACC_TRUNC, fcpl=fcpl, fapl=fapl)
        return h5py.File(fid)

    def __enter__(self) -> EmanHdfWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _dcpl(
        self, dtype: np.dtype, chunks: tuple[int, ...], level: int, shuffle: bool, checksum: bool
    ) -> Any:
        key = (dtype, chunks, level, shuffle, checksum)
        dcpl = self._dcpls.get(key)
        if dcpl is None:
            dcpl = h5p.create(h5p.DATASET_CREATE)
            dcpl.set_chunk(chunks)
            if shuffle:
                dcpl.set_shuffle()
            dcpl.set_deflate(level)
            if checksum:  # last: it covers the deflated bytes
                dcpl.set_fletcher32()
            dcpl.set_obj_track_times(False)
            # no attributes go on the dataset: a minimal object header (HDF5 >= 1.10.5)
            h5direct.set_property(dcpl, "H5Pset_dset_no_attrs_hint", 1)
            self._dcpls[key] = dcpl
        return dcpl

    def create_image(
        self,
        index: int,
        shape: tuple[int, ...],
        bits: int,
        *,
        level: int = 1,
        chunks: tuple[int, ...] | None = None,
        shuffle: bool = False,
        checksum: bool = False,
    ) -> Any:
        """Create ``/MDF/images/<index>/image``, chunked with deflate (and shuffle;
        with ``checksum``, HDF5's Fletcher-32 filter last).

        Returns the low-level dataset (``write_direct_chunk`` writes its chunks, each
        ending with its checksum when ``checksum``: see :mod:`~e2compress.checksum`).
        """
        dtype = storage_dtype(bits)
        if self.stack is None:
            group = self._images.create_group(str(index))
            ds = group.create_dataset(
                "image",
                shape=shape,
                dtype=dtype,
                chunks=chunks,
                compression="gzip",
                compression_opts=level,
                shuffle=shuffle,
                fletcher32=checksum,
            )
            gid, dsid = group.id, ds.id
        else:
            name = str(index).encode()
            dcpl = self._dcpl(dtype, chunks or shape, level, shuffle, checksum)
            tid, space = self._h5type(dtype), self._space(shape)
            hid = None
            if self._direct is not None:
                hid = self._direct.create_group(self._images.id.id, name, self._gcpl.id)
            gid = h5g.GroupID(hid) if hid is not None else None
            if gid is None:  # h5py: the same call, or its error
                gid = h5g.create(self._images.id, name, gcpl=self._gcpl)
            hid = None
            if self._direct is not None:
                hid = self._direct.create_dataset(gid.id, b"image", tid.id, space.id, dcpl.id)
            if hid is not None:
                dsid = h5direct.wrap_dataset(hid)
            else:
                dsid = h5d.create(gid, b"image", tid, space, dcpl=dcpl)
        self._current = (index, gid)
        self._max_id = max(self._max_id, index)
        return dsid

    def _h5type(self, dtype: np.dtype) -> Any:
        tid = self._types.get(dtype)
        if tid is None:
            tid = self._types.setdefault(dtype, h5t.py_create(dtype))
        return tid

    def _space(self, shape: tuple[int, ...]) -> Any:
        space = self._spaces.get(shape)
        if space is None:
            space = self._spaces.setdefault(shape, h5s.create_simple(shape))
        return space

    def write_header(
        self, index: int, header: Mapping[str, Any], raw: Mapping[str, Any] | None = None
    ) -> None:
        """Write ``EMAN.<key>`` attributes (and ``raw`` ones under their own names) on
        image ``index``'s group. Raw values HDF5 or EMAN2 cannot store are left out."""
        if self._current is not None and self._current[0] == index:
            gid = self._current[1]
        else:
            gid = self._images[str(index)].id
        for key, value in header.items():
            self._attrs.create(gid, f"EMAN.{key}", value)
        for name, value in (raw or {}).items():
            try:
                self._attrs.create(gid, name, value)
            except (TypeError, ValueError):
                pass  # variable-length or exotic types EMAN2 cannot read either

    def write_group_header(self, header: Mapping[str, Any]) -> None:
        """Store keys shared by every image on ``/MDF/images`` (EMAN2: ``Group.<key>``).
        Values HDF5 or EMAN2 cannot store are left out."""
        for key, value in header.items():
            try:
                self._attrs.create(self._images.id, key, value)
            except (TypeError, ValueError):
                pass  # variable-length or exotic types EMAN2 cannot read either

    def close(self) -> None:
        """Record ``imageid_max`` and close the file."""
        if self._file.id.valid:
            self._current = None
            write_attr(self._images, "imageid_max", np.array([self._max_id], dtype=np.int32))
            self._file.close()


# Header keys a stack does not store per image: statistics, which EMAN2 recomputes from
# the pixels on read; keys EMAN2 sets itself on read (size and type from the dataset,
# source_n, endianness); EMAN2's defaults for real images. (spec §5.3)
STACK_DROPPED = frozenset(
    (
        "minimum",
        "maximum",
        "mean",
        "sigma",
        "square_sum",
        "mean_nonzero",
        "sigma_nonzero",
        "all_int",
        "nx",
        "ny",
        "nz",
        "datatype",
        "source_n",
        "source_path",
        "HostEndian",
        "ImageEndian",
        "is_complex",
        "is_complex_x",
        "is_complex_ri",
        "changecount",
    )
)
# Kept on every image of a stack even when the same for all: to EMAN2 a ``Group.*`` key
# is not a pixel size. So is a non-zero origin (EMAN2 reads an absent origin as 0).
STACK_APIX = ("apix_x", "apix_y", "apix_z")
STACK_ORIGIN = ("origin_x", "origin_y", "origin_z")


def stack_layout(shape3: tuple[int, int, int], chunk: tuple[int, ...], images: int) -> StackLayout:
    """The stack layout of ``images`` images of ``shape3`` in chunks of shape ``chunk``."""
    grid = math.prod(-(-d // c) for d, c in zip(dataset_shape(shape3), chunk, strict=True))
    return StackLayout(chunks_per_image=grid, images=images)


class Headers:
    """The EMAN2 header of each image, and for a stack the keys stored once for all."""

    def __init__(self, source: ImageSource, opts: Options, *, stacked: bool) -> None:
        self.source = source
        self.opts = opts
        self.stacked = stacked
        self.shared: frozenset[str] = frozenset()
        if stacked:
            first = source.header(0)
            per_image = set(STACK_APIX)
            if any(float(first.get(k, 0.0)) != 0.0 for k in STACK_ORIGIN):
                per_image.update(STACK_ORIGIN)
            self.shared = frozenset(source.shared_keys()) - per_image

    def group(self) -> dict[str, Any]:
        """``/MDF/images`` attributes: those of an HDF source, and for a stack the keys
        that are the same for every image."""
        out = dict(self.source.group_attrs())
        if self.stacked:
            out["source_path"] = self.source.path.name
            out.update((k, v) for k, v in self.source.header(0).items() if k in self.shared)
        return out

    def raw(self, index: int) -> dict[str, Any]:
        """Attributes of an HDF source's image without the ``EMAN.`` prefix, copied as is."""
        return {
            name: value
            for name, value in self.source.raw_attrs(index).items()
            if not name.startswith("EMAN.")
        }

    def image(
        self,
        index: int,
        shape3: tuple[int, int, int],
        rng: RenderRange | None,
        stats: Stats,
        truncated: int,
    ) -> dict[str, Any]:
        """The ``EMAN.*`` keys of one image stored in ``rng`` (None: float32), whose
        pixels have ``stats``, ``truncated`` of them clamped."""
        if not self.stacked:
            return image_header(self.source, index, shape3, rng, stats, self.opts, truncated)
        header: dict[str, Any] = {}
        if rng is not None:  # first: the reader looks these up by name
            header["stored_renderbits"] = rng.bits
            header["stored_rendermin"] = F32(rng.rmin)
            header["stored_rendermax"] = F32(rng.rmax)
            header["stored_truncated"] = truncated
        header.update(apix_x=F32(1.0), apix_y=F32(1.0), apix_z=F32(1.0))
        for name, value in self.source.raw_attrs(index).items():
            if name.startswith("EMAN.") and name[5:] not in STACK_DROPPED:
                header[name[5:]] = value
        for key, value in self.source.header(index).items():
            if key not in self.shared and key not in STACK_DROPPED:
                header[key] = value
        if self.opts.apix is not None:
            header.update({f"apix_{axis}": F32(self.opts.apix) for axis in "xyz"})
        if self.opts.store_level:
            header["render_compress_level"] = self.opts.level
        return header


def image_header(
    source: ImageSource,
    index: int,
    shape3: tuple[int, int, int],
    rng: RenderRange | None,
    st: Stats,
    opts: Options,
    truncated: int,
) -> dict[str, Any]:
    """The full header EMAN2 writes for an image (files of one image)."""
    nz, ny, nx = shape3
    bits = rng.bits if rng is not None else 0
    header: dict[str, Any] = {
        "nx": nx,
        "ny": ny,
        "nz": nz,
        "apix_x": F32(1.0),
        "apix_y": F32(1.0),
        "apix_z": F32(1.0),
        "is_complex": 0,
        "is_complex_ri": 1,
        "is_complex_x": 0,
        "HostEndian": "little",
        "ImageEndian": "little",
    }
    for name, value in source.raw_attrs(index).items():
        if name.startswith("EMAN."):
            header[name[5:]] = value
    header.update(source.header(index))
    if opts.apix is not None:
        for axis in "xyz":
            header[f"apix_{axis}"] = F32(opts.apix)
    with np.errstate(over="ignore"):  # sums beyond float32 are stored as inf, as EMAN2 does
        computed = {
            "minimum": F32(st.minimum if st.count else 0.0),
            "maximum": F32(st.maximum if st.count else 0.0),
            "mean": F32(st.mean),
            "sigma": F32(st.sigma),
            "square_sum": F32(st.sumsq),
            "all_int": int(st.all_int and not st.nonfinite),
            "datatype": DATATYPE[storage_dtype(bits).itemsize if bits else 0],
            "source_path": source.path.name,
            "source_n": index,
        }
    header.update(computed)
    if opts.store_level:
        header["render_compress_level"] = opts.level
    if rng is not None:
        header["stored_rendermin"] = F32(rng.rmin)
        header["stored_rendermax"] = F32(rng.rmax)
        header["stored_renderbits"] = rng.bits
        header["stored_truncated"] = truncated
    return header
