"""What keeping the source's bytes and hashing it costs: this tree against a baseline.

    python benchmarks/bench_hash.py [--baseline REV] [--repeat N] [--frames N]

Compresses the same synthetic inputs with this tree's ``src`` and with the ``src`` of
git revision REV (default ``main``, extracted with ``git archive`` into a temporary
directory), each run in a fresh process, the two interleaved, N times (default 3), and
prints the median throughput of each and their ratio. Inputs: a float32 movie
(K2-sized frames, MRC), an uint16 micrograph with a 909 KB FEI2-sized extended header
(MRC), an uncompressed uint16 TIFF stack and an LZW uint16 TIFF (whose strips the
hashing reader decodes itself). Also prints hashlib's own SHA-256 speed on this
machine, the bound on what hashing can cost. Timings on a shared machine are noisy:
compare only the two columns of one run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MB = 1e6

CHILD = r"""
import json, sys, time
import e2compress
src, dst, bits = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
e2compress.compress_file(src, dst, bits=bits, threads=2, force=True)
print(json.dumps({"seconds": time.perf_counter() - t0, "module": e2compress.__file__}))
"""


def make_inputs(directory: Path, frames: int) -> dict[str, Path]:
    """Deterministic inputs (written once)."""
    import mrcfile
    import tifffile

    rng = np.random.default_rng(7)
    out = {}
    movie = directory / "movie.mrc"
    data = rng.poisson(1.0, size=(frames, 3838, 3710)).astype(np.float32)
    with mrcfile.new(movie, overwrite=True) as m:
        m.set_data(data)
    out["float32 movie (MRC)"] = movie
    micro = directory / "micrograph.mrc"
    image = rng.normal(3500, 600, size=(3838, 3710)).clip(0, 65535).astype(np.uint16)
    with mrcfile.new(micro, overwrite=True) as m:
        m.set_data(image)
        record = np.zeros(888, dtype=np.uint8)  # FEI2-like: 1024 records, mostly alike
        record[:4] = np.frombuffer((888).to_bytes(4, "little"), dtype=np.uint8)
        ext = np.tile(record, 1024)
        ext[:888] = np.frombuffer(rng.bytes(888), dtype=np.uint8)
        m.set_extended_header(ext.view("V1"))
        m.header.exttyp = b"FEI2"
    out["uint16 micrograph + 909 KB ext. header (MRC)"] = micro
    pages = rng.normal(3500, 600, size=(frames, 2048, 2048)).clip(0, 65535).astype(np.uint16)
    tif = directory / "stack.tif"
    tifffile.imwrite(tif, pages)
    out["uint16 stack (TIFF)"] = tif
    lzw = directory / "stack_lzw.tif"
    tifffile.imwrite(lzw, pages, compression="lzw")
    out["uint16 stack (LZW TIFF)"] = lzw
    return out


def run(src_dir: Path, source: Path, out: Path, bits: int) -> tuple[float, str]:
    env = dict(os.environ, PYTHONPATH=str(src_dir))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(source), str(out), str(bits)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    return float(got["seconds"]), str(got["module"])


def hashlib_speed() -> float:
    block = np.random.default_rng(0).bytes(256 << 20)
    t0 = time.perf_counter()
    hashlib.sha256(block).hexdigest()
    return len(block) / (time.perf_counter() - t0) / MB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default="main", help="git revision to compare with")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--bits", type=int, nargs="+", default=[5, 0])
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="e2c_hash_") as tmp:
        tmpdir = Path(tmp)
        base = tmpdir / "baseline"
        base.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.baseline, "src"],
            capture_output=True,
            check=True,
        ).stdout
        with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
            tar.extractall(base, filter="data")
        trees = {"this tree": REPO / "src", f"baseline ({args.baseline})": base / "src"}
        inputs = make_inputs(tmpdir, args.frames)
        print(f"hashlib SHA-256 on this machine: {hashlib_speed():.0f} MB/s (one core)")
        print(f"load average at start: {os.getloadavg()[0]:.2f}\n")
        print("| input | bits | MB in | this tree MB/s | baseline MB/s | this / baseline |")
        print("|---|---|---|---|---|---|")
        for name, source in inputs.items():
            size = source.stat().st_size
            for bits in args.bits:
                times: dict[str, list[float]] = {k: [] for k in trees}
                for _ in range(args.repeat):
                    for label, src_dir in trees.items():
                        seconds, module = run(src_dir, source, tmpdir / "out.hdf", bits)
                        assert str(src_dir) in module, f"{label} imported {module}"
                        times[label].append(seconds)
                speeds = [size / statistics.median(t) / MB for t in times.values()]
                print(
                    f"| {name} | {bits} | {size / MB:.0f} | {speeds[0]:.0f} | {speeds[1]:.0f} "
                    f"| {speeds[0] / speeds[1]:.3f} |",
                    flush=True,
                )
        print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
