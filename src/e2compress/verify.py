"""Verification: decode the written file block by block and check it against the source."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Executor
from contextlib import closing

import numpy as np

from .blocks import Block, blocks
from .eman_hdf import EmanHdfFile
from .errors import VerificationError
from .executor import Cancel, InlineExecutor, bounded, in_flight, pool_width
from .options import Options
from .quantize import F32, RenderRange, within_half_step
from .report import ImageReport
from .sources import ImageSource

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
                orig = source.read(i, block.z, block.y0, block.y1).astype(np.float32)
                got = out.read_region(i, region).reshape(orig.shape)
                if rng is None:
                    same = (got == orig) | (np.isnan(got) & np.isnan(orig))
                    if not same.all():
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


def _check_quantised(
    orig: np.ndarray, got: np.ndarray, rng: RenderRange, path: PathLike, index: int
) -> int:
    """Check one block; returns the number of clamped pixels in it."""
    rmin, rmax = F32(rng.rmin), F32(rng.rmax)
    below, above = orig < rmin, orig > rmax
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
        worst = float(np.max(np.abs(got[bad].astype(np.float64) - orig[bad])))
        raise VerificationError(
            f"image {index}: decoded error {worst:.3g} exceeds half a step ({rng.step / 2:.3g})",
            path,
        )
    return int(np.count_nonzero(below) + np.count_nonzero(above))
