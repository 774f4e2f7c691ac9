"""The EMAN2 HDF layout: the header of each image, and what a stack stores once.

A file of one image carries EMAN2's full header (statistics included); a stack stores
the keys the same for every image once on ``/MDF/images`` and, per image, only what
differs (EMAN2 recomputes the statistics on read). See the format spec, section 5.3.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .blocks import chunk_shape, dataset_shape
from .eman_hdf import DATATYPE, StackLayout
from .options import Options
from .quantize import F32, RenderRange, Stats, storage_dtype
from .readers import ImageSource

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


def stack_layout(shape3: tuple[int, int, int], rows: int, images: int) -> StackLayout:
    """The stack layout of ``images`` images of ``shape3`` in chunks of ``rows`` rows."""
    chunk = chunk_shape(shape3, rows)
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
