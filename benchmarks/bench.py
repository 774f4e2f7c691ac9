"""e2compress benchmark: throughput, ratio, peak memory and decode speed in one run.

    python benchmarks/bench.py [--quick] [--out DIR]
    python benchmarks/bench.py --stacks [--quick] [--baseline SRC] [--eman2 DIR]
    python benchmarks/bench.py --stacks --goals [threads|memory] [--repeat N] [--baseline SRC]

Generates deterministic synthetic cryo-EM data in a temporary directory, runs every
writer/reader case in a fresh subprocess (``bench_worker.py``), and prints markdown
tables (per data set, decode, memory, and a summary of the quantities the goals in
docs/performance.md are about; that page holds the goals and whether they are met).
Results are also written to ``DIR/results.json`` and ``DIR/results.md``.

This parent process imports only the standard library on purpose: a child's
``ru_maxrss`` (from ``os.wait4``) starts at the RSS of the process that spawned it, so
the parent must stay smaller than any child for per-case peak RSS to be right.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from common import (
    MB,
    MEMORY_FRAMES,
    Bench,
    Case,
    Dataset,
    Measure,
    dataset_table,
    decode_table,
    fmt,
    loadavg,
    log,
    machine_text,
    summary_table,
    table,
)

K2_BITS = (0, 4, 5, 8, 10, 12)
LEVELS = (1, 6, 9)
# e2compress settings for the other data sets: lossless, 5 and 10 bits, 8 bits at level 9.
OTHER_SETTINGS = ((0, 1), (5, 1), (10, 1), (8, 9))
# libdeflate-12 wins the probe on these and runs at a few MB/s: all threads only.
SLOW = frozenset({(0, 9), (10, 9), (12, 9)})


# --------------------------------------------------------------------------- case matrix


def k2_cases(quick: bool) -> list[Case]:
    cases: list[Case] = []
    for bits in K2_BITS:
        for level in LEVELS:
            if quick and level > 1 and bits in (0, 10, 12):
                continue
            one_thread = level == 1 or (not quick and (bits, level) not in SLOW)
            for threads in (1, None) if one_thread else (None,):
                keep = level == 1 and threads is None and bits in (5, 10)
                cases.append(Case("k2", "e2compress", bits, level, threads, keep=keep))
    for bits in K2_BITS:
        cases.append(Case("k2", "EMAN2-equiv", bits, 1, 1))
    if not quick:
        cases += [Case("k2", "EMAN2-equiv", bits, 9, 1) for bits in (4, 5)]
    cases += [Case("k2", "MRCZ", bits, 1, None, label="zstd-1") for bits in (5, 8)]
    return cases


def other_cases(key: str) -> list[Case]:
    cases = [
        Case(key, "e2compress", bits, level, threads)
        for bits, level in OTHER_SETTINGS
        for threads in (1, None)
    ]
    eman_bits = sorted({bits for bits, _ in OTHER_SETTINGS})
    cases += [Case(key, "EMAN2-equiv", bits, 1, 1) for bits in eman_bits]
    if key == "counts":
        cases.append(Case(key, "MRCZ", None, 1, None, label="zstd-1, raw int8"))
        cases.append(Case(key, "TIFF", None, 6, None, label="zlib-6"))
        cases.append(Case(key, "TIFF", None, None, None, label="LZW"))
    else:
        cases.append(Case(key, "MRCZ", 5, 1, None, label="zstd-1"))
    return cases


def datasets(quick: bool, frames: int | None, particles: int | None) -> list[Dataset]:
    nframes = frames or (2 if quick else 8)
    nparticles = particles or (300 if quick else 2000)
    plural = "frame" if nframes == 1 else "frames"
    return [
        Dataset(
            "k2", f"K2-like float movie ({nframes} {plural})", "k2_movie.mrc", {"frames": nframes}
        ),
        Dataset(
            "counts",
            f"Integer count movie, int8 MRC mode 0 ({nframes} {plural})",
            "count_movie.mrc",
            {"frames": nframes},
        ),
        Dataset(
            "micrograph",
            "Motion-corrected micrograph (sum of 40 frames, low-passed)",
            "micrograph.mrc",
            {},
        ),
        Dataset(
            "particles",
            f"Particle stack ({nparticles} x 256x256, masked)",
            "particles.mrcs",
            {"count": nparticles},
        ),
    ]


# --------------------------------------------------------------------------- summary


def summary(bench: Bench, quick: bool) -> list[Measure]:
    """The quantities the performance goals are about, from this run's K2 movie cases
    (the goals, and whether they are met, are in docs/performance.md)."""
    ds = bench.datasets.get("k2")
    if ds is None:
        return []
    k2: Dataset = ds
    out: list[Measure] = []

    def find(writer: str, bits: int, level: int, threads: int | None) -> Case | None:
        key = ("k2", writer, bits, level, threads)
        return next(
            (
                c
                for c in bench.cases
                if (c.dataset, c.writer, c.bits, c.level, c.threads) == key and c.ok()
            ),
            None,
        )

    def speed(c: Case | None) -> float | None:
        return c.mb_s(k2) if c else None

    def ratio(c: Case | None) -> float | None:
        return c.ratio(k2) if c else None

    def quotient(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    def add(label: str, value: float | None, unit: str, detail: str) -> None:
        out.append(Measure(label, f"{fmt(value, 2 if unit == 'x' else 1, unit)} ({detail})"))

    all5, one5 = find("e2compress", 5, 1, None), find("e2compress", 5, 1, 1)
    eman5 = find("EMAN2-equiv", 5, 1, 1)
    add(
        "(1) bits 5 level 1, all threads: throughput vs EMAN2-equiv",
        quotient(speed(all5), speed(eman5)),
        "x",
        f"{fmt(speed(all5), 0)} vs {fmt(speed(eman5), 0)} MB/s",
    )
    add(
        "(1) bits 5 level 1: ratio vs EMAN2-equiv",
        quotient(ratio(all5), ratio(eman5)),
        "x",
        f"{fmt(ratio(all5), 2)} vs {fmt(ratio(eman5), 2)}",
    )
    add(
        "(1) bits 5 level 1, one thread: throughput vs EMAN2-equiv",
        quotient(speed(one5), speed(eman5)),
        "x",
        f"{fmt(speed(one5), 0)} MB/s",
    )
    for bits in (4, 5):
        c9 = find("e2compress", bits, 9, None)
        add(
            f"(2) bits {bits} level 9: ratio as % of the order-0 entropy bound",
            c9.pct_of_bound(k2) if c9 else None,
            "%",
            f"{fmt(ratio(c9), 2)} of {fmt(c9.bound() if c9 else None, 2)}",
        )
    for bits in (4, 5):
        c9, e9 = find("e2compress", bits, 9, None), find("EMAN2-equiv", bits, 9, 1)
        detail = f"{fmt(speed(c9), 0)} vs {fmt(speed(e9), 1)} MB/s"
        if quick:
            detail = "EMAN2-equiv level 9 is skipped in --quick"
        add(
            f"(2) bits {bits} level 9, all threads: throughput vs EMAN2-equiv level 9",
            quotient(speed(c9), speed(e9)),
            "x",
            detail,
        )
    all10, eman10 = find("e2compress", 10, 1, None), find("EMAN2-equiv", 10, 1, 1)
    add(
        "(3) bits 10 level 1: ratio vs EMAN2-equiv",
        quotient(ratio(all10), ratio(eman10)),
        "x",
        f"{fmt(ratio(all10), 2)} vs {fmt(ratio(eman10), 2)}",
    )
    add(
        "(3) bits 10 level 1, all threads: throughput vs EMAN2-equiv",
        quotient(speed(all10), speed(eman10)),
        "x",
        f"{fmt(speed(all10), 0)} vs {fmt(speed(eman10), 0)} MB/s",
    )
    mem = bench.memory
    rss = mem.rss_mb if mem and mem.ok() else None
    out.append(
        Measure(
            f"(4) peak RSS, {MEMORY_FRAMES}-frame movie (1.37 GB), default options",
            "skipped in --quick" if quick else fmt(rss, 0, " MB"),
        )
    )
    for bits in (5, 10):
        speeds = {d.method: d.mb_s() for d in bench.decodes if d.bits == bits}
        ours = [v for m, v in speeds.items() if m in ("read_images", "open") and v]
        ref = speeds.get("h5py_float")
        slower = min(ours) if ours else None
        add(
            f"(5) decode {bits} bits: e2compress (slower of read_images/open) vs h5py",
            quotient(slower, ref),
            "x",
            f"{fmt(slower, 0)} vs {fmt(ref, 0)} MB/s",
        )
    return out


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="2 frames, 300 particles, no slow level-6/9 cases, no memory case",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path(tempfile.gettempdir()) / "e2c_bench",
        help="directory for results.json and results.md (default: %(default)s)",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="keep and reuse the generated data in this directory "
        "(default: a temporary directory, deleted at the end)",
    )
    p.add_argument(
        "--frames",
        type=int,
        default=None,
        help="override the movie frame count (default 8, --quick 2)",
    )
    p.add_argument(
        "--particles",
        type=int,
        default=None,
        help="override the particle count (default 2000, --quick 300)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each case N times and keep the fastest (default 1)",
    )
    p.add_argument(
        "--stacks",
        action="store_true",
        help="the particle-stack benchmark instead (benchmarks/bench_stacks.py)",
    )
    p.add_argument(
        "--goals",
        nargs="?",
        const="all",
        choices=("all", "threads", "memory"),
        help="--stacks: only issue 16's goals (threads: 2 threads vs 1 on 4,000 x 128^2; "
        "memory: peak RSS of a 100,000-image HDF stack vs .mrcs; default both), "
        "configurations interleaved",
    )
    p.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="--stacks: also run the e2compress cases with this source tree (e.g. "
        "another checkout's src/) for a before/after comparison in one run",
    )
    p.add_argument(
        "--eman2",
        type=Path,
        default=Path(os.environ["E2C_EMAN2"]) if os.environ.get("E2C_EMAN2") else None,
        help="--stacks: an EMAN2 install (its venv/bin/python runs eman2_timed.py) to "
        "time real EMAN2 (default: $E2C_EMAN2; without it those cases are skipped)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=1200,
        help="seconds before a case is killed (default %(default)s)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.repeat < 1:
        raise SystemExit("--repeat must be >= 1")
    if args.stacks:
        from bench_stacks import run_goals, run_stacks

        return run_goals(args) if args.goals else run_stacks(args)
    t_start = time.perf_counter()
    load_start = loadavg()
    reuse = args.data is not None
    data_dir = args.data or Path(tempfile.mkdtemp(prefix="e2c_bench_data_"))
    data_dir.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, data_dir, reuse)
    try:
        info = bench.info()
        dsets = datasets(args.quick, args.frames, args.particles)
        for ds in dsets:
            cases = k2_cases(args.quick) if ds.key == "k2" else other_cases(ds.key)
            bench.run_dataset(ds, cases)
        log("decode benchmark")
        bench.run_decode()
        if not args.quick:
            log("memory case")
            bench.run_memory()
    finally:
        if reuse:
            shutil.rmtree(bench.out_dir, ignore_errors=True)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    elapsed = time.perf_counter() - t_start
    goals = summary(bench, args.quick)
    report = render(bench, info, dsets, goals, args, elapsed, (load_start, loadavg()))
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(report + "\n")
    payload = {
        "mode": "quick" if args.quick else "full",
        "elapsed_s": elapsed,
        "machine": info,
        "datasets": {d.key: asdict(d) for d in dsets},
        "cases": [case_json(c, bench.datasets.get(c.dataset)) for c in bench.cases],
        "decode": [{**asdict(d), "mb_s": d.mb_s()} for d in bench.decodes],
        "memory": case_json(bench.memory, bench.memory_ds) if bench.memory else None,
        "summary": [asdict(t) for t in goals],
    }
    (args.out / "results.json").write_text(json.dumps(payload, indent=1, default=str))
    log(f"results written to {args.out}")
    return 0


def case_json(case: Case, ds: Dataset | None) -> dict[str, Any]:
    out = asdict(case)
    out.pop("output", None)
    if ds is not None:
        out.update(
            mb_s=case.mb_s(ds),
            ratio=case.ratio(ds),
            bound=case.bound(),
            pct_of_bound=case.pct_of_bound(ds),
        )
    return out


def render(
    bench: Bench,
    info: dict[str, Any],
    dsets: list[Dataset],
    goals: list[Measure],
    args: argparse.Namespace,
    elapsed: float,
    load: tuple[float, float],
) -> str:
    mode = "--quick" if args.quick else "full"
    parts = [
        f"## e2compress benchmark ({mode} run, {elapsed / 60:.1f} min)",
        machine_text(info, load),
    ]
    for ds in dsets:
        cases = [c for c in bench.cases if c.dataset == ds.key]
        if cases:
            parts.append(dataset_table(ds, cases))
    if bench.decodes:
        parts.append(decode_table(bench.decodes))
    if bench.memory and bench.memory_ds:
        mem, mds = bench.memory, bench.memory_ds
        parts.append(
            f"### Memory: {mds.title}, {mds.float_bytes / MB:.0f} MB, e2compress default "
            "options (bits 10, level 1, all threads)\n\n"
            + table(
                ["MB/s (float32 in)", "ratio vs float32", "peak RSS MB"],
                [
                    [
                        fmt(mem.mb_s(mds), 0) if not mem.note else mem.note,
                        fmt(mem.ratio(mds), 2),
                        fmt(mem.rss_mb, 0),
                    ]
                ],
            )
        )
    parts.append(summary_table("Summary (K2 movie; goals: docs/performance.md)", goals))
    return "\n\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
