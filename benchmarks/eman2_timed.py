"""Time real EMAN2 compressing the first images of a file (run with EMAN2's Python).

    <eman2 python> benchmarks/eman2_timed.py IN OUT.hdf --bits N [--count C] [--level L]

The loop is the default path of EMAN2's ``programs/e2compress.py`` (no range option):
read image i, set ``render_bits`` (and ``render_compress_level``), write it with
``EM_COMPRESSED``. Only that loop and an fsync are timed (not EMAN2's import, which
takes seconds). Prints one JSON line: seconds, images, pixels.

This runs in EMAN2's interpreter only; it must not import h5py (the two HDF5
libraries clash in one process).
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--bits", type=int, required=True)
    p.add_argument("--count", type=int, default=None, help="only the first COUNT images")
    p.add_argument("--level", type=int, default=None)
    args = p.parse_args()

    from EMAN2 import EM_COMPRESSED, IMAGE_UNKNOWN, EMData, EMUtil

    total = EMUtil.get_image_count(args.src)
    count = total if args.count is None else min(args.count, total)
    if os.path.exists(args.dst):
        os.unlink(args.dst)
    pixels = 0
    t0 = time.perf_counter()
    for i in range(count):
        im = EMData(args.src, i)
        im["render_bits"] = args.bits
        if args.level is not None:
            im["render_compress_level"] = args.level
        im.write_image(args.dst, i, IMAGE_UNKNOWN, 0, None, EM_COMPRESSED)
        pixels += im["nx"] * im["ny"] * im["nz"]
    fd = os.open(args.dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "images": count, "pixels": pixels}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
