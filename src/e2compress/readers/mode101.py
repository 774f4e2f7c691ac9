"""SerialEM's packed 4-bit MRC data (mode 101).

mrcfile does not read it. Two unsigned 4-bit values a byte, the first pixel of each
pair in the low nibble, each row padded to whole bytes (``(nx + 1) // 2`` bytes a
row), as SerialEM and IMOD document. The values
0..15 are returned as uint8, exactly. EMAN2 reads the same values for even nx; for odd
nx it drops the padding nibble of each row's byte count and unpacks the rows as one
stream, which shifts every row after the first (see docs/counting_inputs.md).
"""

from __future__ import annotations

import numpy as np

MODE_4BIT = 101  # SerialEM: two unsigned 4-bit values a byte, low nibble first


def unpack_4bit(buf: bytes, rows: int, nx: int) -> np.ndarray:
    """Rows of mode 101 data: two 4-bit values a byte, low nibble first, each row
    ``(nx + 1) // 2`` bytes (the high nibble of an odd row's last byte is padding).

    Args:
        buf: the stored bytes of ``rows`` rows.
        rows: how many rows ``buf`` holds.
        nx: pixels a row.
    """
    packed = np.frombuffer(buf, dtype=np.uint8).reshape(rows, (nx + 1) // 2)
    out = np.empty((rows, packed.shape[1], 2), dtype=np.uint8)
    np.bitwise_and(packed, 15, out=out[:, :, 0])
    np.right_shift(packed, 4, out=out[:, :, 1])
    flat = out.reshape(rows, -1)
    return flat if flat.shape[1] == nx else np.ascontiguousarray(flat[:, :nx])
