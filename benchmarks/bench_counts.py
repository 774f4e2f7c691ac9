"""Size and speed of ``counts`` against lossy bits: ``python benchmarks/bench_counts.py``.

Writes synthetic gain-normalised K2-like movies (3838 x 3710 float32 frames, Poisson
counts at ``--dose`` e/px a frame times a float32 gain ~ N(1, ``--spread``), as
``.mrcs``, one frame at a time), one for each of ``--frames``, and compresses each with
``counts=True`` and with ``bits=--bits``, each in a fresh process (its peak RSS is its
own). Prints a markdown table: input size, output size and ratio of each, the bytes of
the stored gain per pixel, MB/s (float32 input bytes over the wall time of
``compress_file``, page-cached input, fsync included) and peak RSS. Disk: one movie at
a time (57 MB a frame) plus its two outputs, in the temporary directory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SHAPE = (3838, 3710)
WORKER = """
import json, resource, sys, time
import h5py
from e2compress import compress_file
src, dst, mode, threads = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
kw = {"counts": True} if mode == "counts" else {"bits": int(mode)}
t0 = time.perf_counter()
report = compress_file(src, dst, threads=int(threads) or None, verify=False, **kw)
seconds = time.perf_counter() - t0
gain = 0
with h5py.File(dst, "r") as f:
    if "e2compress/gain" in f:
        gain = f["e2compress/gain"].id.get_storage_size()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "out": report.bytes_out, "in": report.bytes_in,
                  "gain": gain, "rss_mb": rss}))
"""


WRITER = """
import sys
import mrcfile
import numpy as np
path, frames, dose, spread = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
shape = tuple(int(v) for v in sys.argv[5:7])
rng = np.random.default_rng(0)
gain = (1.0 + spread * rng.standard_normal(shape)).astype(np.float32)
with mrcfile.new_mmap(path, (frames, *shape), mrc_mode=2, overwrite=True) as m:
    m.set_image_stack()
    for i in range(frames):  # float32 count * gain, multiplied in float32
        m.data[i] = rng.poisson(dose, shape).astype(np.float32) * gain
"""


def write_movie(path: Path, frames: int, dose: float, spread: float) -> None:
    """The movie, one frame at a time, in a child process (this one stays small: a
    child's peak RSS starts at its parent's)."""
    subprocess.run(
        [sys.executable, "-c", WRITER, str(path), str(frames), str(dose), str(spread)]
        + [str(v) for v in SHAPE],
        check=True,
    )


def run(src: Path, dst: Path, mode: str, threads: int) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, str(src), str(dst), mode, str(threads)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        raise SystemExit(f"{mode} on {src.name} failed: {proc.stderr.strip()[-2000:]}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    dst.unlink()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, nargs="*", default=[8, 16, 24, 40, 60, 100])
    ap.add_argument("--dose", type=float, default=1.0, help="e/px a frame (default 1)")
    ap.add_argument("--spread", type=float, default=0.05, help="gain sigma (default 0.05)")
    ap.add_argument("--bits", type=int, default=5, help="the lossy comparison (default 5)")
    ap.add_argument("--threads", type=int, default=0, help="0: all cores (default)")
    ap.add_argument("--dir", type=Path, default=None, help="scratch directory")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for n in args.frames:
            src = Path(tmp) / f"movie_{n}.mrcs"
            print(f"{n} frames: writing", file=sys.stderr, flush=True)
            write_movie(src, n, args.dose, args.spread)
            counts = run(src, Path(tmp) / "counts.hdf", "counts", args.threads)
            lossy = run(src, Path(tmp) / "lossy.hdf", str(args.bits), args.threads)
            src.unlink()
            rows.append((n, counts, lossy))
            print(f"{n} frames: done", file=sys.stderr, flush=True)
    pixels = SHAPE[0] * SHAPE[1]
    print(
        f"| frames | input MB | counts MB | counts ratio | gain B/px | bits {args.bits} MB "
        f"| bits {args.bits} ratio | counts / bits {args.bits} | counts MB/s "
        f"| bits {args.bits} MB/s | counts peak RSS MB | bits {args.bits} peak RSS MB |"
    )
    print("|" + "---|" * 12)
    for n, c, b in rows:
        mb = c["in"] / 1e6
        print(
            f"| {n} | {mb:.0f} | {c['out'] / 1e6:.1f} | {c['in'] / c['out']:.1f}x "
            f"| {c['gain'] / pixels:.2f} | {b['out'] / 1e6:.1f} | {b['in'] / b['out']:.1f}x "
            f"| {c['out'] / b['out']:.2f} | {mb / c['seconds']:.0f} | {mb / b['seconds']:.0f} "
            f"| {c['rss_mb']:.0f} | {b['rss_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
