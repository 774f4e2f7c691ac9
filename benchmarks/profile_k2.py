"""Where one core's time goes compressing the K2-like movie, stage by stage.

    python benchmarks/profile_k2.py [--frames 8] [--bits 5] [--repeat 5] [--data DIR]

Runs each stage of the pipeline alone over the whole movie (blocks and chunks as the
pipeline cuts them: 16 MB blocks, 64-row chunks), on one thread, and prints its CPU
time (``time.thread_time``, the least of ``--repeat`` runs: CPU time is what load on a
shared machine inflates least) and its speed in MB/s of float32 input. Two columns:
the numpy / zlib-ng versions (what runs without numba, and what ran before the
compiled kernels) and the compiled kernels of ``e2compress.kernels``. The SHA-256 of
the source runs in a thread of its own in the pipeline, beside the others.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from e2compress import checksum, codecs, kernels
from e2compress.blocks import blocks
from e2compress.fidelity import residual_tiles
from e2compress.ranges import block_stats, choose_range, header_moments, merge_stats
from e2compress.readers import open_source

HERE = Path(__file__).resolve().parent
ROWS = 64  # rows per chunk (the default)


def least(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--bits", type=int, default=5)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--data", type=Path, default=None, help="keep the movie here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="e2c_prof_") as tmp:
        data_dir = args.data or Path(tmp)
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / f"k2_{args.frames}.mrc"
        if not path.exists():
            spec = data_dir / "gen.json"
            spec.write_text(
                json.dumps(
                    {"task": "generate", "dataset": "k2", "path": str(path), "frames": args.frames}
                )
            )
            subprocess.run(
                [sys.executable, str(HERE / "bench_worker.py"), str(spec), str(data_dir / "r")],
                check=True,
            )
        if not kernels.warm_up():
            sys.exit(f"the compiled kernels are not available: {kernels._COMPILED.error}")
        profile(path, args.bits, args.repeat, Path(tmp))


def profile(path: Path, bits: int, repeat: int, tmp: Path) -> None:
    with open_source(path, keep=False) as source:
        shape3 = source.shape(0)
        parts = blocks(shape3, ROWS)
        pixels = [source.read(0, b.z, b.y0, b.y1) for b in parts]
        mb = sum(x.nbytes for x in pixels) / 1e6
        raw = path.read_bytes()
        rows: list[tuple[str, float, float | None]] = []

        def stage(name: str, before: Callable[[], object], after: Callable[[], object] | None):
            b = least(before, repeat)
            a = least(after, repeat) if after is not None else None
            rows.append((name, b, a))

        def read() -> None:  # each block dropped before the next, as in the pipeline
            for b in parts:
                source.read(0, b.z, b.y0, b.y1)

        stage("read (pread, 16 MB blocks)", read, None)
        st = merge_stats(block_stats(x, None, with_moments=False) for x in pixels)
        rng = choose_range(st, bits)
        stage(
            "range pass: min, max, integer test",
            lambda: [block_stats(x, None, with_moments=False) for x in pixels],
            None,
        )
        noise_rows = 2 + 32 * max(1, (1 << 19) // len(parts) // shape3[2] // 32)
        stage("noise tiles", lambda: [residual_tiles(x[:noise_rows]) for x in pixels], None)
        chunks = [x[r : r + ROWS] for x in pixels for r in range(0, x.shape[0], ROWS)]
        work = np.empty(ROWS * shape3[2], dtype=np.float32)
        stage("header sums (mean, sigma)", lambda: [header_moments(c, work) for c in chunks], None)
        codes = [np.empty(c.shape, dtype=np.uint8 if bits <= 8 else np.uint16) for c in chunks]
        knb = kernels.compiled("quantize")
        assert knb is not None
        lo, hi = np.float32(rng.rmin), np.float32(rng.rmax)
        cmax = np.float32(2**bits - 1)

        def quantise(fn: Callable[..., int]) -> Callable[[], object]:
            return lambda: [
                fn(c.reshape(-1), lo, hi, hi - lo, cmax, kernels.HALF_DOWN, o.reshape(-1))
                for c, o in zip(chunks, codes, strict=True)
            ]

        stage(
            "quantise",
            lambda: [
                kernels.quantize_numpy(c, rng.rmin, rng.rmax, bits, o)
                for c, o in zip(chunks, codes, strict=True)
            ],
            quantise(knb),
        )
        views = [o.reshape(-1).view(np.uint8).data.cast("B") for o in codes]
        stage(
            "deflate, Huffman-only (zlib-ng / compiled)",
            lambda: [codecs.ZLIB_HUFFMAN.compress(v) for v in views],
            lambda: [kernels.huffman_deflate(v) for v in views],
        )
        streams = [kernels.huffman_deflate(v) for v in views]
        probe_rows = max(1, min(ROWS, codecs.PROBE_BYTES // shape3[2]))
        first = [codes[i][:probe_rows] for i in range(0, len(codes), len(codes) // len(parts))]
        engines = codecs.candidates(1)
        stage(
            "probe (3 engines on each block's first rows)",
            lambda: [codecs.choose(engines, f.reshape(-1).data.cast("B")) for f in first],
            None,
        )
        stage("Fletcher-32 (HDF5's)", lambda: [checksum.append(s) for s in streams], None)
        out = tmp / "chunks.h5"

        def write() -> None:
            with h5py.File(out, "w") as f:
                ds = f.create_dataset(
                    "x", shape=(len(chunks) * ROWS, shape3[2]), dtype="u1", chunks=(ROWS, shape3[2])
                )
                for k, s in enumerate(streams):
                    ds.id.write_direct_chunk((k * ROWS, 0), s)

        stage("HDF5 write_direct_chunk", write, None)
        stage("SHA-256 of the source (own thread)", lambda: hashlib.sha256(raw).digest(), None)

    print(
        f"K2-like movie {path.name}: {mb:.0f} MB of float32, bits {bits}; CPU seconds of one "
        f"thread, least of {repeat} runs\n"
    )
    print("| stage | numpy / zlib-ng: s | MB/s | compiled kernels: s | MB/s |")
    print("|---|---|---|---|---|")
    total_b = total_a = 0.0
    for name, b, a in rows:
        after = a if a is not None else b
        if not name.startswith("SHA"):
            total_b += b
            total_a += after
        cells = f"{a:.3f} | {mb / a:.0f}" if a is not None else "same | "
        print(f"| {name} | {b:.3f} | {mb / b:.0f} | {cells} |")
    print(
        f"| all but the SHA-256 (one core's work) | {total_b:.3f} | {mb / total_b:.0f} "
        f"| {total_a:.3f} | {mb / total_a:.0f} |"
    )


if __name__ == "__main__":
    main()
