"""Throughput of a batch: the plain local run against a 2-worker Dask LocalCluster.

    python benchmarks/bench_cluster.py [--files 8] [--frames 2] [--repeat 3] [--out DIR]

Writes ``--files`` K2-like float movies (``--frames`` frames of 3838 x 3710 float32,
as in bench.py), then compresses the same batch (bits 5, level 1) with

- the plain local run: ``e2compress --bits 5 --outpath A FILES`` (all cores);
- ``--scheduler`` on a LocalCluster of 2 worker processes x 1 thread, started here
  before the timing (worker start-up is not counted; connecting is);
- the local run with ``--threads 1`` (one core: what one worker has).

Each command runs ``--repeat`` times in a fresh process, the three interleaved (the
load of a shared machine drifts); the median wall time is kept.
MB/s is input bytes (float32) over wall time; per worker = MB/s / workers. Needs the
``dask`` extra. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_worker import generate_movie


def run(argv: list[str]) -> float:
    """Wall seconds of one e2compress command (which must succeed)."""
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "e2compress", *argv], capture_output=True, text=True
    )
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"e2compress failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--frames", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None, help="scratch directory (default: a temporary one)")
    args = ap.parse_args()
    from distributed import Client, LocalCluster

    load0 = os.getloadavg()[0]
    scratch = Path(tempfile.mkdtemp(prefix="e2c-bench-cluster-", dir=args.out))
    try:
        files = []
        nbytes = 0
        for k in range(args.files):
            path = scratch / f"movie{k:02d}.mrc"
            info = generate_movie(str(path), args.frames, seed=100 + k)
            nbytes += 4 * int(info["pixels"])
            files.append(str(path))
        print(
            f"data: {args.files} movies x {args.frames} frames, {nbytes / 1e6:.0f} MB float32",
            file=sys.stderr,
        )
        common = ["--bits", "5", *files]
        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
            ) as cluster,
            Client(cluster),
        ):
            runs = [
                ("local (all cores)", "1 x 2 threads", 1, common),
                ("local --threads 1", "1 x 1 thread", 1, ["--threads", "1", *common]),
                (
                    "Dask LocalCluster --scheduler",
                    "2 workers x 1 thread",
                    2,
                    ["--scheduler", cluster.scheduler_address, *common],
                ),
            ]
            times: list[list[float]] = [[] for _ in runs]
            for _ in range(args.repeat):  # interleaved: the machine's load drifts
                for k, (_, _, _, argv) in enumerate(runs):
                    out = scratch / f"out{k}"
                    shutil.rmtree(out, ignore_errors=True)
                    out.mkdir()
                    times[k].append(run([*argv, "--outpath", str(out)]))
        rows = [
            (name, shape, workers, statistics.median(t))
            for (name, shape, workers, _), t in zip(runs, times, strict=True)
        ]
        print(
            f"- {platform.platform()}, os.cpu_count() = {os.cpu_count()}; load average "
            f"(1 min) at start / end: {load0:.2f} / {os.getloadavg()[0]:.2f}"
        )
        print(
            f"- batch: {args.files} K2-like float movies x {args.frames} frames "
            f"({nbytes / 1e6:.0f} MB float32), bits 5, level 1; median of {args.repeat}"
        )
        print()
        print("| run | workers | wall s | MB/s | MB/s per worker | vs local |")
        print("|---|---|---|---|---|---|")
        base = rows[0][3]
        for name, shape, workers, seconds in rows:
            rate = nbytes / seconds / 1e6
            print(
                f"| {name} | {shape} | {seconds:.1f} | {rate:.0f} | {rate / workers:.0f} "
                f"| {base / seconds:.2f}x |"
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
