"""How an image is cut into HDF5 chunks and into blocks of rows for the worker tasks."""

from __future__ import annotations

from dataclasses import dataclass

BLOCK_BYTES = 16 << 20  # float32 bytes of input per worker task (probe cost ~1/16)


@dataclass(frozen=True)
class Block:
    """Rows ``y0:y1`` of section ``z`` of one image."""

    z: int
    y0: int
    y1: int


def dataset_shape(shape3: tuple[int, int, int]) -> tuple[int, ...]:
    """The HDF5 dataset shape EMAN2 uses for an (nz, ny, nx) image."""
    nz, ny, nx = shape3
    if nz > 1:
        return shape3
    if ny > 1:
        return (ny, nx)
    return (nx,)


def chunk_shape(shape3: tuple[int, int, int], rows: int) -> tuple[int, ...]:
    """HDF5 chunk shape: ``rows`` whole rows of one section."""
    _, ny, nx = shape3
    rank = len(dataset_shape(shape3))
    if rank == 1:
        return (nx,)
    return (1, min(rows, ny), nx) if rank == 3 else (min(rows, ny), nx)


def blocks(
    shape3: tuple[int, int, int], chunk_rows: int, block_bytes: int = BLOCK_BYTES
) -> list[Block]:
    """Whole chunks grouped into blocks of about ``block_bytes`` of float32 input."""
    nz, ny, nx = shape3
    rows = min(chunk_rows, ny)
    per_block = rows * max(1, block_bytes // max(1, rows * nx * 4))
    return [
        Block(z, y0, min(y0 + per_block, ny)) for z in range(nz) for y0 in range(0, ny, per_block)
    ]
