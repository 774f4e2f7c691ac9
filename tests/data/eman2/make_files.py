"""Writes the IMAGIC and SPIDER files in this directory with real EMAN2.

Run with the Python of an EMAN2 build (``$E2C_EMAN2/venv/bin/python make_files.py``).
Image ``k`` of every file holds ``arange(n) * 0.25 + 1000 * k - 37.5`` in (z, y, x)
order, with ``apix`` 1.5: the tests compute the same values independently.
"""

import numpy as np
from EMAN2 import EMData, EMNumPy, EMUtil  # noqa: F401


def image(k, nx, ny, nz=1):
    a = np.arange(nz * ny * nx, dtype=np.float32) * np.float32(0.25) + np.float32(1000 * k - 37.5)
    a = a.reshape(nz, ny, nx)
    e = EMNumPy.numpy2em(a if nz > 1 else a[0])
    for axis in "xyz":
        e[f"apix_{axis}"] = 1.5
    return e


SINGLE = EMUtil.ImageType.IMAGE_SINGLE_SPIDER
for k in range(3):
    image(k, 16, 12).write_image("stack.hed", k)
    image(k, 16, 12).write_image("stack.spi", k)
for k in range(2):  # big-endian (use_host_endian=False on a little-endian machine)
    image(k, 8, 8).write_image(
        "square_be.hed",
        k,
        EMUtil.ImageType.IMAGE_IMAGIC,
        False,
        None,
        EMUtil.EMDataType.EM_FLOAT,
        False,
    )
image(0, 10, 6, 4).write_image("volume.hed", 0)
image(0, 10, 6).write_image("single.spi", 0, SINGLE)
image(0, 10, 6, 4).write_image(
    "volume_be.spi", 0, SINGLE, False, None, EMUtil.EMDataType.EM_FLOAT, False
)
