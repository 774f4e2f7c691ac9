"""What the Fletcher-32 chunk checksums cost: the same files with and without them.

    python benchmarks/bench_checksum.py [--frames 4] [--repeat 5] [--threads 1] [--out DIR]

Writes a K2-like float movie (``--frames`` frames of 3838 x 3710 float32, as in
bench.py), a 128 x 128 particle stack and a micrograph, then compresses each with
``checksum=True`` and ``checksum=False`` (bits 5 and 10, level 1), ``--repeat`` times,
the two settings interleaved in one process (the load of a shared machine drifts, so
the baseline is measured in the same run, next to each timed case). The median wall
time is kept; MB/s is float32 input bytes over it. The CPU time of the process (all its
threads) is kept too, the least of the repeats (other jobs on a shared machine only
ever add to it). The direct cost is also timed: the checksum alone over every stored
chunk of the written file (HDF5's own function, least of the repeats), as a share of
the least CPU time of the run without checksums. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py

sys.path.insert(0, str(Path(__file__).resolve().parent))

import e2compress
from bench_worker import generate_micrograph, generate_movie, generate_stack
from e2compress import checksum


def chunk_bytes(path: Path) -> list[bytes]:
    """Every stored chunk of every image of ``path``, without its checksum."""
    out = []
    with h5py.File(path, "r") as f:
        images = f["MDF/images"]
        for name in images:
            ds = images[name]["image"]
            for k in range(ds.id.get_num_chunks()):
                offset = ds.id.get_chunk_info(k).chunk_offset
                _, raw = ds.id.read_direct_chunk(offset)
                out.append(bytes(raw)[: -checksum.SIZE] if ds.fletcher32 else bytes(raw))
    return out


def checksum_seconds(chunks: list[bytes], repeat: int) -> float:
    """Fastest of ``repeat`` timings of the checksum over ``chunks``."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for c in chunks:
            checksum.fletcher32(c)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="default: all cores")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="e2c_checksum_"))
    work.mkdir(parents=True, exist_ok=True)
    data = {
        "K2 movie": (work / "movie.mrc", lambda f: generate_movie(str(f), args.frames, 1)),
        "micrograph": (work / "micrograph.mrc", lambda f: generate_micrograph(str(f), 2)),
        "stack 128²": (work / "stack.mrcs", lambda f: generate_stack(str(f), 2000, 128, 3)),
    }
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.2f} at start; threads {args.threads or 'all'}; "
        f"median of {args.repeat}",
        file=sys.stderr,
    )
    rows = []
    load0 = os.getloadavg()[0]
    try:
        for title, (path, make) in data.items():
            if not path.exists():
                make(path)
            mb = _float_mb(path)
            for bits in (5, 10):
                times: dict[bool, list[float]] = {True: [], False: []}
                cpu: dict[bool, list[float]] = {True: [], False: []}
                sizes: dict[bool, int] = {}
                for _ in range(args.repeat):
                    for on in (True, False):
                        out = work / f"out_{on}.hdf"
                        opts = e2compress.Options(bits=bits, checksum=on)
                        t0, c0 = time.perf_counter(), time.process_time()
                        e2compress.compress_file(path, out, options=opts, threads=args.threads)
                        times[on].append(time.perf_counter() - t0)
                        cpu[on].append(time.process_time() - c0)
                        sizes[on] = out.stat().st_size
                chunks = chunk_bytes(work / "out_True.hdf")
                direct = checksum_seconds(chunks, args.repeat)
                on_s, off_s = statistics.median(times[True]), statistics.median(times[False])
                on_c, off_c = min(cpu[True]), min(cpu[False])
                rows.append(
                    (
                        title,
                        bits,
                        mb / off_s,
                        mb / on_s,
                        100 * (on_s / off_s - 1),
                        100 * (on_c / off_c - 1),
                        100 * direct / off_c,
                        sum(len(c) for c in chunks) / direct / 1e6,
                        100 * (sizes[True] / sizes[False] - 1),
                    )
                )
                print(f"{title} bits {bits}: done", file=sys.stderr)
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"load {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end\n")
    print(
        "| data | bits | without | with checksums | wall time cost | CPU time cost (least) | "
        "checksum alone (share of the CPU time) | checksum speed | size cost |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for title, bits, off, on, cost, cpu_cost, share, speed, size in rows:
        print(
            f"| {title} | {bits} | {off:.0f} MB/s | {on:.0f} MB/s | {cost:+.1f} % | "
            f"{cpu_cost:+.1f} % | {share:.2f} % | {speed:.0f} MB/s | {size:+.3f} % |"
        )


def _float_mb(path: Path) -> float:
    """Float32 bytes of every image of ``path``, in MB."""
    with e2compress.open_source(path) as src:
        n = 0
        for i in range(len(src)):
            z, y, x = src.shape(i)
            n += z * y * x
    return n * 4 / 1e6


if __name__ == "__main__":
    main()
