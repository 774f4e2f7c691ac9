"""How an image is cut into HDF5 chunks and into blocks of rows for the worker tasks."""

from __future__ import annotations

from dataclasses import dataclass

BLOCK_BYTES = 16 << 20  # float32 bytes of input per worker task (probe cost ~1/16)


@dataclass(frozen=True)
class Block:
    """Rows ``y0:y1`` of section ``z`` of one image, or ``sections`` whole sections
    from ``z`` (then ``y0:y1`` is every row)."""

    z: int
    y0: int
    y1: int
    sections: int = 1


def dataset_shape(shape3: tuple[int, int, int]) -> tuple[int, ...]:
    """The HDF5 dataset shape EMAN2 uses for an (nz, ny, nx) image."""
    nz, ny, nx = shape3
    if nz > 1:
        return shape3
    if ny > 1:
        return (ny, nx)
    return (nx,)


def chunk_shape(shape3: tuple[int, int, int], rows: int, sections: int = 1) -> tuple[int, ...]:
    """HDF5 chunk shape: ``rows`` whole rows of one section, or (a volume) ``sections``
    whole sections."""
    nz, ny, nx = shape3
    rank = len(dataset_shape(shape3))
    if rank == 1:
        return (nx,)
    if rank == 3:
        return (min(sections, nz), ny, nx) if sections > 1 else (1, min(rows, ny), nx)
    return (min(rows, ny), nx)


def blocks(
    shape3: tuple[int, int, int],
    chunk_rows: int,
    block_bytes: int = BLOCK_BYTES,
    sections: int = 1,
) -> list[Block]:
    """Whole chunks (as :func:`chunk_shape`) grouped into blocks of about ``block_bytes``
    of float32 input."""
    nz, ny, nx = shape3
    if nz > 1 and sections > 1:  # chunks of several whole sections
        per_chunk = min(sections, nz)
        per = per_chunk * max(1, block_bytes // max(1, per_chunk * ny * nx * 4))
        return [Block(z, 0, ny, min(per, nz - z)) for z in range(0, nz, per)]
    rows = min(chunk_rows, ny)
    per_block = rows * max(1, block_bytes // max(1, rows * nx * 4))
    return [
        Block(z, y0, min(y0 + per_block, ny)) for z in range(nz) for y0 in range(0, ny, per_block)
    ]
