"""Verification: decode the written file block by block and check it against the source."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Executor
from contextlib import closing

import h5py
import numpy as np

from .archive import EmanHdfFile, render_range
from .blocks import Block, blocks
from .decode import stored_whole
from .errors import VerificationError
from .executor import Cancel, InlineExecutor, bounded, in_flight, pool_width
from .options import Options
from .quantize import (
    F32,
    RenderRange,
    integer_inexact,
    range_limits,
    storage_dtype,
    within_half_step,
)
from .readers.base import ImageSource
from .report import ImageReport

SAMPLED_IMAGES = 64  # images of a stack whose layout is checked (first, last, spread)

PathLike = str | os.PathLike[str]
# Smaller than the encoder's blocks: a check holds float64 copies of its block.
VERIFY_BLOCK_BYTES = 4 << 20


def verify_output(
    source: ImageSource,
    path: PathLike,
    opts: Options,
    reports: Sequence[ImageReport],
    pool: Executor | None = None,
    cancel: Cancel | None = None,
) -> None:
    """Decode every image of ``path`` and check it against ``source``, block by block.

    Inside [rmin, rmax] the error must be at most half a quantisation step; clamped
    pixels must hold the end codes and be counted; lossless (bits 0) output must be
    bit-identical (NaN included).
    """
    workers = pool or InlineExecutor()
    window = in_flight(pool_width(workers), 8 * VERIFY_BLOCK_BYTES)
    token = cancel or Cancel()
    with EmanHdfFile(path, locking=False, threads=1) as out:
        if len(out) != len(source):
            raise VerificationError(f"wrote {len(out)} images, source has {len(source)}", path)
        for rep in reports:
            i = rep.index
            shape3 = source.shape(i)
            rng = out.render_range(i)
            rank = len(out.shape(i))

            def check(
                block: Block, i: int = i, rng: RenderRange | None = rng, rank: int = rank
            ) -> int:
                token.check()
                rows = slice(block.y0, block.y1)
                region = (block.z, rows) if rank == 3 else (rows,) if rank == 2 else (slice(None),)
                orig = source.read(i, block.z, block.y0, block.y1)  # native: never a float32 view
                got = out.read_region(i, region).reshape(orig.shape)
                if rng is None:
                    if not _same_values(orig, got):
                        raise VerificationError(f"image {i}: lossless data differ", path)
                    return 0
                return _check_quantised(orig, got, rng, path, i)

            parts = blocks(shape3, opts.chunk_rows, VERIFY_BLOCK_BYTES)
            with closing(bounded(workers, check, parts, window)) as results:
                clamped = sum(results)
            if rng is not None and clamped != rep.truncated:
                raise VerificationError(
                    f"image {i}: {clamped} pixels lie outside the stored range, "
                    f"stored_truncated says {rep.truncated}",
                    path,
                )


def _same_values(orig: np.ndarray, got: np.ndarray) -> bool:
    """Every value equal, compared in float64 (NaN matching NaN)."""
    a = orig.astype(np.float64)
    b = got.astype(np.float64)
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    if orig.dtype.kind in "iu" and orig.dtype.itemsize == 8:  # float64 equality is exact
        same &= ~integer_inexact(orig, 53)  # only for integers float64 holds
    return bool(same.all())


def _check_quantised(
    orig: np.ndarray, got: np.ndarray, rng: RenderRange, path: PathLike, index: int
) -> int:
    """Check one block against the source in its own dtype; returns the number of
    clamped pixels in it."""
    lo, hi = range_limits(rng)
    wide = orig.astype(np.float64)
    below, above = wide < lo, wide > hi
    ok = within_half_step(orig, got, rng)
    clamped_ok = ok[below].all() and ok[above].all()
    if not clamped_ok:
        raise VerificationError(f"image {index}: clamped pixels do not hold the end codes", path)
    if not ok.all():
        bad = ~ok
        if not np.isfinite(got[bad]).all():
            raise VerificationError(
                f"image {index}: {int(np.count_nonzero(bad))} pixels decode to NaN or "
                "infinity where the source is finite",
                path,
            )
        worst = float(np.max(np.abs(got[bad].astype(np.float64) - wide[bad])))
        raise VerificationError(
            f"image {index}: decoded error {worst:.3g} exceeds half a step ({rng.step / 2:.3g})",
            path,
        )
    return int(np.count_nonzero(below) + np.count_nonzero(above))


def _sample(count: int) -> list[int]:
    if count <= SAMPLED_IMAGES:
        return list(range(count))
    return sorted({round(k * (count - 1) / (SAMPLED_IMAGES - 1)) for k in range(SAMPLED_IMAGES)})


def check_complete(path: PathLike, images: Sequence[ImageReport], count: int) -> None:
    """Open the written file afresh with plain h5py (not through the writer) and check
    that it holds what was written: ``count`` images (``imageid_max`` and groups), and
    for every image of a file of up to SAMPLED_IMAGES (else a spread sample, first and
    last included): its shape, storage type and stored mapping as reported, and every
    chunk written and inside the file. Cheap: nothing is decoded.

    Raises:
        VerificationError: the file is not complete or not as reported.
    """
    size = os.stat(path).st_size
    try:
        with h5py.File(path, "r", locking=False) as f:
            group = f.get("MDF/images")
            if not isinstance(group, h5py.Group):
                raise VerificationError("written file has no /MDF/images group", path)
            stored = int(np.ravel(group.attrs["imageid_max"])[0]) + 1
            if not stored == len(group) == len(images) == count:
                raise VerificationError(
                    f"written file holds {stored} images ({len(group)} groups), "
                    f"the source has {count}",
                    path,
                )
            for k in _sample(count):
                _check_image(group[str(k)], images[k], size, path)
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise VerificationError(f"written file cannot be read back ({exc})", path) from None


def _check_image(group: h5py.Group, rep: ImageReport, size: int, path: PathLike) -> None:
    ds = group["image"]
    where = f"image {rep.index}"
    if tuple(ds.shape) != tuple(rep.shape) or ds.dtype != storage_dtype(rep.bits):
        raise VerificationError(
            f"{where}: stored as {ds.dtype} {ds.shape}, written as "
            f"{storage_dtype(rep.bits)} {tuple(rep.shape)}",
            path,
        )
    rng = render_range(group.attrs)
    if rng is not None and not rng.is_finite:
        raise VerificationError(
            f"{where}: stored range {rng.rmin:g}..{rng.rmax:g} holds NaN or infinity", path
        )
    if rep.bits and (
        rng is None
        or rng.bits != rep.bits
        or F32(rng.rmin) != F32(rep.rmin)
        or F32(rng.rmax) != F32(rep.rmax)
    ):
        raise VerificationError(f"{where}: stored mapping {rng} is not the one used", path)
    if not stored_whole(ds, size, need_deflate=False):
        raise VerificationError(f"{where}: chunks missing or beyond the end of the file", path)
