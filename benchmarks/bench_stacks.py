"""Particle-stack benchmark: ``python benchmarks/bench.py --stacks [options]``.

Writes synthetic RELION-like particle stacks (one Gaussian blob + N(0, 1) noise per
image, no mask) with e2compress, the EMAN2-equivalent h5py writer and, when an EMAN2
install is given (``--eman2`` or ``$E2C_EMAN2``), real EMAN2; measures throughput,
ratio, HDF5 metadata per image and read speed, a 100,000-image stack (open time and
peak memory) and one K2 movie case (movies must keep their speed and ratio); the
stack goals and whether they are met are in docs/performance.md. Every case runs in a
fresh child process (``bench_worker.py``).

Like ``bench.py`` this imports only the standard library.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common import (
    MB,
    Bench,
    Case,
    Dataset,
    Measure,
    fmt,
    loadavg,
    log,
    machine_text,
    summary_table,
    table,
)

BITS, LEVEL = 5, 1
# (key, images, box); --quick divides the image counts by 4
STACKS = (("stack32", 20_000, 32), ("stack128", 4_000, 128))
BIG = ("stack32_100k", 100_000, 32)
BIG_INDEX = 54_321  # the image open()[i] reads from the big stack
# Real EMAN2 is timed on the first images only (its cost per image is constant; at
# ~0.4 MB/s all 20,000 small images would take minutes).
EMAN2_COUNT = {"stack32": 2_000, "stack128": 1_000}
EMAN2_TIMED = Path(__file__).resolve().parent / "eman2_timed.py"
READERS = {
    "read_images": "e2compress.read_images(path)",
    "open": "e2compress.open(path)[i]",
    "h5py_float": "plain h5py loop + float32 rescale",
}


@dataclass
class StackCase:
    dataset: str
    writer: str  # e2compress | e2compress (baseline) | EMAN2-equiv | EMAN2
    threads: int | None  # None: all cores
    images: int = 0
    pixels: int = 0
    seconds: float | None = None
    file_bytes: int | None = None
    chunk_bytes: int | None = None
    apix: float | None = None
    rss_mb: float | None = None
    note: str = ""
    output: str = ""
    runs: list[float] = field(default_factory=list)

    def ok(self) -> bool:
        return self.seconds is not None and not self.note

    def mb_s(self) -> float | None:
        return self.pixels * 4 / MB / self.seconds if self.seconds else None

    def ratio(self) -> float | None:
        return self.pixels * 4 / self.file_bytes if self.file_bytes else None

    def pixel_ratio(self) -> float | None:
        """Ratio if the file held nothing but the compressed pixels."""
        return self.pixels * 4 / self.chunk_bytes if self.chunk_bytes else None

    def meta_per_image(self) -> float | None:
        """HDF5 metadata per image: file size minus the chunks' stored bytes."""
        if self.file_bytes is None or self.chunk_bytes is None or not self.images:
            return None
        return (self.file_bytes - self.chunk_bytes) / self.images


@dataclass
class ReadCase:
    dataset: str
    method: str
    seconds: float | None = None
    pixels: int = 0
    rss_mb: float | None = None
    note: str = ""

    def mb_s(self) -> float | None:
        return self.pixels * 4 / MB / self.seconds if self.seconds else None


@dataclass
class OpenCase:
    images: int = 0
    seconds: float | None = None
    bytes_read: int | None = None
    note: str = ""


class StackBench:
    def __init__(self, args: argparse.Namespace, data_dir: Path, reuse: bool) -> None:
        self.args = args
        self.bench = Bench(args, data_dir, reuse)
        self.runner = self.bench.runner
        self.out_dir = self.bench.out_dir
        self.cases: list[StackCase] = []
        self.reads: list[ReadCase] = []
        self.big: StackCase | None = None
        self.big_hdf: StackCase | None = None
        self.opens: OpenCase | None = None
        self.movie: list[Any] = []
        self.movie_ds: Dataset | None = None
        self.baseline = str(args.baseline.resolve()) if args.baseline else None
        self.eman2_python = self._eman2_python(args.eman2)

    @staticmethod
    def _eman2_python(install: Path | None) -> Path | None:
        if install is None:
            return None
        python = install / "venv" / "bin" / "python"
        return python if python.exists() else None

    # ------------------------------------------------------------------ writers

    def _spec(self, case: StackCase, src: Path, dst: Path) -> dict[str, Any]:
        base = {"src": str(src), "dst": str(dst), "bits": BITS, "level": LEVEL}
        if case.writer.startswith("e2compress"):
            return {**base, "task": "e2compress", "threads": case.threads}
        return {**base, "task": "eman2"}

    def write(self, case: StackCase, src: Path, pixels: int, images: int, keep: bool) -> None:
        name = f"{case.dataset}_{case.writer}_{case.threads}.hdf"
        dst = self.out_dir / name.replace(" ", "").replace("(", "").replace(")", "")
        for _ in range(self.args.repeat):
            dst.unlink(missing_ok=True)
            if case.writer == "EMAN2":
                result, rss = self._run_eman2(src, dst, EMAN2_COUNT[case.dataset.split("_")[0]])
            else:
                path = self.baseline if case.writer.endswith("(baseline)") else None
                result, rss = self.runner.run(self._spec(case, src, dst), pythonpath=path)
            if "error" in result:
                log(result["error"])
                case.note = "FAILED"
                break
            case.runs.append(result["seconds"])
            if rss is not None:  # None: real EMAN2, not a worker child of ours
                case.rss_mb = max(case.rss_mb or 0.0, rss)
            if "images" in result:  # real EMAN2: a prefix of the stack
                images, pixels = result["images"], result["pixels"]
        if case.runs:
            case.seconds = min(case.runs)
            case.images, case.pixels = images, pixels
            meta, _ = self.runner.run({"task": "stackmeta", "path": str(dst)})
            if "error" in meta:
                log(meta["error"])
            else:
                case.file_bytes, case.chunk_bytes = meta["file_bytes"], meta["chunk_bytes"]
                case.apix = meta["apix"]
                if meta["images"] != images:
                    case.note = f"wrote {meta['images']} images, expected {images}"
        if keep and case.ok():
            case.output = str(dst)
        else:
            dst.unlink(missing_ok=True)
        log(
            f"  {case.writer} threads {case.threads or 'all'}: {fmt(case.mb_s(), 1)} MB/s, "
            f"ratio {fmt(case.ratio(), 2)}, metadata {fmt(case.meta_per_image(), 0)} B/image "
            f"{case.note}"
        )

    def _run_eman2(self, src: Path, dst: Path, count: int) -> tuple[dict[str, Any], float | None]:
        assert self.eman2_python is not None
        cmd = [str(self.eman2_python), str(EMAN2_TIMED), str(src), str(dst)]
        cmd += ["--bits", str(BITS), "--level", str(LEVEL), "--count", str(count)]
        # a neutral cwd: EMAN2 writes .eman2log.txt there
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=self.args.timeout, cwd=self.out_dir
        )
        if proc.returncode != 0:
            return {"error": f"EMAN2 failed:\n{proc.stderr[-2000:]}"}, None
        return json.loads(proc.stdout.strip().splitlines()[-1]), None

    # ------------------------------------------------------------------ data sets

    def run_stack(self, key: str, count: int, box: int) -> None:
        ds = Dataset(
            key, f"{count:,} x {box}x{box} float32", f"{key}.mrcs", {"count": count, "box": box}
        )
        src = self.bench.generate(ds)
        pixels = ds.pixels
        log(f"{ds.title}: {pixels * 4 / MB:.0f} MB")
        writers: list[tuple[str, int | None]] = [("e2compress", None), ("e2compress", 1)]
        if self.baseline:
            writers.append(("e2compress (baseline)", None))
        writers.append(("EMAN2-equiv", 1))
        if self.eman2_python:
            writers.append(("EMAN2", 1))
        else:
            self.cases.append(StackCase(key, "EMAN2", 1, note="no EMAN2 (--eman2)"))
        for writer, threads in writers:
            case = StackCase(key, writer, threads)
            keep = writer == "e2compress" and threads is None
            self.write(case, src, pixels, count, keep)
            self.cases.append(case)
        ours = next(c for c in self.cases if c.dataset == key and c.output)
        for method in READERS:
            self.read(key, method, ours.output)
        Path(ours.output).unlink(missing_ok=True)
        if not self.bench.reuse:
            src.unlink(missing_ok=True)

    def read(self, key: str, method: str, path: str) -> None:
        rc = ReadCase(key, method)
        rc.seconds, rc.pixels, rc.rss_mb, rc.note = self.runner.time_decode(
            method, path, self.args.repeat
        )
        self.reads.append(rc)
        log(f"  read {method}: {fmt(rc.mb_s(), 0)} MB/s {rc.note}")

    def run_big(self) -> None:
        key, count, box = BIG
        ds = Dataset(key, f"{count:,} x {box}x{box}", f"{key}.mrcs", {"count": count, "box": box})
        src = self.bench.generate(ds)
        case = StackCase(key, "e2compress", None)
        try:
            self.write(case, src, ds.pixels, count, keep=True)
            oc = OpenCase(images=count)
            if case.output:
                spec = {"task": "open_one", "path": case.output, "index": BIG_INDEX}
                times = []
                for _ in range(self.args.repeat):
                    result, _ = self.runner.run(spec)
                    if "error" in result:
                        log(result["error"])
                        oc.note = "FAILED"
                        break
                    times.append(result["seconds"])
                    oc.bytes_read = result["bytes_read"]
                    oc.images = result["images"]
                oc.seconds = min(times) if times else None
                log(f"  open()[{BIG_INDEX}]: {fmt(oc.seconds, 3)} s, {oc.bytes_read} bytes read")
            self.opens = oc
            if case.output:  # the same stack again, as an HDF input (issue 16)
                hdf = StackCase(key, "e2compress (HDF input)", None)
                self.write(hdf, Path(case.output), ds.pixels, count, keep=False)
                self.big_hdf = hdf
        finally:
            if case.output:
                Path(case.output).unlink(missing_ok=True)
            if not self.bench.reuse:
                src.unlink(missing_ok=True)
        self.big = case

    def run_movie(self) -> None:
        """The K2 movie at bits 5 (2 frames): movies must keep their speed and ratio."""
        ds = Dataset("k2", "K2-like float movie (2 frames)", "k2_movie.mrc", {"frames": 2})
        src = self.bench.generate(ds)
        self.bench.datasets[ds.key] = ds
        for threads in (None, 1):
            case = Case("k2", "e2compress", BITS, LEVEL, threads)
            self.bench.run_case(case, ds, src)
            self.movie.append(case)
        if self.baseline:
            for threads in (None, 1):
                case = Case("k2", "e2compress", BITS, LEVEL, threads, label="baseline")
                self._baseline_movie(case, ds, src)
                self.movie.append(case)
        self.movie_ds = ds
        if not self.bench.reuse:
            src.unlink(missing_ok=True)

    def _baseline_movie(self, case: Any, ds: Dataset, src: Path) -> None:
        dst = self.out_dir / f"k2_baseline_{case.threads}.hdf"
        spec = self.bench._writer_spec(case, src, dst)
        for _ in range(self.args.repeat):
            dst.unlink(missing_ok=True)
            result, rss = self.runner.run(spec, pythonpath=self.baseline)
            if "error" in result:
                log(result["error"])
                case.note = "FAILED"
                break
            case.runs.append(result["seconds"])
            case.rss_mb = max(case.rss_mb or 0.0, rss or 0.0)
        if case.runs:
            case.seconds = min(case.runs)
            case.out_bytes = dst.stat().st_size
        dst.unlink(missing_ok=True)


# --------------------------------------------------------------------------- report


def _writer_label(c: StackCase) -> str:
    if c.writer == "EMAN2" and c.images:
        return f"EMAN2 (first {c.images:,} images)"
    return c.writer


def stack_table(key: str, title: str, cases: list[StackCase]) -> str:
    rows = [
        [
            _writer_label(c),
            "1" if c.threads == 1 else "all",
            fmt(c.mb_s(), 1) if not c.note else c.note,
            fmt(c.ratio(), 2),
            fmt(c.pixel_ratio(), 2),
            fmt(c.meta_per_image(), 0),
            fmt(c.apix, 2),
            fmt(c.rss_mb, 0),
        ]
        for c in cases
    ]
    header = [
        "writer",
        "threads",
        "MB/s (float32 in)",
        "ratio",
        "pixels-only ratio",
        "HDF5 metadata B/image",
        "apix read back",
        "peak RSS MB",
    ]
    return f"### {title} ({key}), bits {BITS}, level {LEVEL}\n\n" + table(header, rows)


def read_table(reads: list[ReadCase]) -> str:
    rows = []
    for r in reads:
        base = next((b for b in reads if b.dataset == r.dataset and b.method == "h5py_float"), None)
        rel = r.mb_s() / base.mb_s() if base and r.mb_s() and base.mb_s() else None
        rows.append(
            [
                r.dataset,
                READERS[r.method],
                fmt(r.mb_s(), 0) if not r.note else r.note,
                fmt(rel, 2, "x"),
                fmt(r.rss_mb, 0),
            ]
        )
    header = ["stack", "reader", "MB/s (float32 out)", "vs plain h5py", "peak RSS MB"]
    return "### Reading the e2compress output\n\n" + table(header, rows)


def stack_summary(sb: StackBench, quick: bool) -> list[Measure]:
    """The quantities the stack goals are about (the goals, and whether they are met,
    are in docs/performance.md)."""
    out: list[Measure] = []

    def find(key: str, writer: str, threads: int | None) -> StackCase | None:
        return next(
            (
                c
                for c in sb.cases
                if (c.dataset, c.writer, c.threads) == (key, writer, threads) and c.ok()
            ),
            None,
        )

    def add(label: str, measured: str) -> None:
        out.append(Measure(label, measured))

    for key, _, box in STACKS:
        ours, equiv, real = (
            find(key, "e2compress", None),
            find(key, "EMAN2-equiv", 1),
            find(key, "EMAN2", 1),
        )
        s_ours = ours.mb_s() if ours else None
        for other, name in ((equiv, "EMAN2-equivalent"), (real, "real EMAN2")):
            s_other = other.mb_s() if other else None
            q = s_ours / s_other if s_ours and s_other else None
            add(
                f"{box}^2 stack: throughput (all threads) vs {name}",
                f"{fmt(q, 2, 'x')} ({fmt(s_ours, 1)} vs {fmt(s_other, 2)} MB/s)",
            )
        meta = ours.meta_per_image() if ours else None
        add(
            f"{box}^2 stack: HDF5 metadata per image",
            f"{fmt(meta, 0)} B",
        )
        ratio, pix = (ours.ratio(), ours.pixel_ratio()) if ours else (None, None)
        if box == 32:
            add(
                "32^2 stack: ratio vs float32 input",
                fmt(ratio, 2, "x"),
            )
        else:
            rel = ratio / pix if ratio and pix else None
            add(
                f"{box}^2 stack: ratio as a fraction of the pixels-only ratio",
                f"{fmt(100 * rel if rel else None, 1)} % ({fmt(ratio, 2)} of {fmt(pix, 2)})",
            )
        speeds = {r.method: r.mb_s() for r in sb.reads if r.dataset == key}
        ref = speeds.get("h5py_float")
        for method in ("read_images", "open"):
            v = speeds.get(method)
            q = v / ref if v and ref else None
            add(
                f"{box}^2 stack: {READERS[method]} vs plain h5py + rescale",
                f"{fmt(q, 2, 'x')} ({fmt(v, 0)} vs {fmt(ref, 0)} MB/s)",
            )
    one, all_ = find("stack128", "e2compress", 1), find("stack128", "e2compress", None)
    q = one.seconds / all_.seconds if one and all_ and one.seconds and all_.seconds else None
    add(
        "128^2 stack: all threads vs one thread",
        f"{fmt(q, 2, 'x')} (noisy on a shared machine; see goals mode)",
    )
    oc = sb.opens
    sec = oc.seconds if oc and not oc.note else None
    add(
        f"open()[{BIG_INDEX}] on a {BIG[1]:,}-image stack",
        "skipped in --quick"
        if quick
        else f"{fmt(sec, 3)} s, {fmt((oc.bytes_read or 0) / 1e3 if oc else None, 0)} kB read",
    )
    big, small = sb.big, find("stack32", "e2compress", None)
    q = big.rss_mb / small.rss_mb if big and small and big.rss_mb and small.rss_mb else None
    add(
        f"peak RSS, {BIG[1]:,} vs {STACKS[0][1] // (4 if quick else 1):,} images of 32^2",
        "skipped in --quick"
        if quick
        else f"{fmt(q, 2, 'x')} ({fmt(big.rss_mb if big else None, 0)} vs "
        f"{fmt(small.rss_mb if small else None, 0)} MB)",
    )
    h = sb.big_hdf
    q = h.rss_mb / big.rss_mb if h and big and h.rss_mb and big.rss_mb else None
    add(
        f"peak RSS, {BIG[1]:,}-image stack as HDF input vs as .mrcs",
        "skipped in --quick"
        if quick
        else f"{fmt(q, 2, 'x')} ({fmt(h.rss_mb if h else None, 0)} vs "
        f"{fmt(big.rss_mb if big else None, 0)} MB)",
    )
    return out


def movie_table(sb: StackBench) -> str:
    ds = sb.movie_ds
    assert ds is not None
    rows = [
        [
            "e2compress" + (" (baseline)" if c.label == "baseline" else ""),
            "1" if c.threads == 1 else "all",
            fmt(c.mb_s(ds), 0) if not c.note else c.note,
            fmt(c.ratio(ds), 3),
            fmt(c.rss_mb, 0),
        ]
        for c in sb.movie
    ]
    header = ["writer", "threads", "MB/s (float32 in)", "ratio", "peak RSS MB"]
    return f"### Movies keep their speed and ratio: {ds.title}, bits {BITS}\n\n" + table(
        header, rows
    )


def render(
    sb: StackBench,
    info: dict[str, Any],
    goals: list[Measure],
    elapsed: float,
    load: tuple[float, float],
) -> str:
    mode = "--quick" if sb.args.quick else "full"
    parts = [f"## e2compress stack benchmark ({mode} run, {elapsed / 60:.1f} min)"]
    parts.append(machine_text(info, load))
    eman2 = str(sb.eman2_python) if sb.eman2_python else "not given (--eman2 / $E2C_EMAN2)"
    parts.append(f"- real EMAN2: {eman2}; baseline e2compress: {sb.baseline or 'none'}")
    for key, count, box in stacks(sb.args.quick):
        cases = [c for c in sb.cases if c.dataset == key]
        parts.append(stack_table(key, f"{count:,} x {box}x{box} float32", cases))
    if sb.reads:
        parts.append(read_table(sb.reads))
    if sb.big is not None:
        big = [sb.big, *([sb.big_hdf] if sb.big_hdf else [])]
        parts.append(stack_table(BIG[0], f"{BIG[1]:,} x {BIG[2]}x{BIG[2]} float32", big))
    if sb.movie:
        parts.append(movie_table(sb))
    parts.append(summary_table("Summary (goals: docs/performance.md)", goals))
    return "\n\n".join(parts)


def stacks(quick: bool) -> list[tuple[str, int, int]]:
    return [(key, count // 4 if quick else count, box) for key, count, box in STACKS]


def run_stacks(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    load_start = loadavg()
    reuse = args.data is not None
    data_dir = args.data or Path(tempfile.mkdtemp(prefix="e2c_stacks_data_"))
    data_dir.mkdir(parents=True, exist_ok=True)
    sb = StackBench(args, data_dir, reuse)
    try:
        info = sb.bench.info()
        for key, count, box in stacks(args.quick):
            sb.run_stack(key, count, box)
        if not args.quick:
            log(f"{BIG[1]:,}-image stack")
            sb.run_big()
            log("movie")
            sb.run_movie()
    finally:
        if reuse:
            shutil.rmtree(sb.out_dir, ignore_errors=True)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    elapsed = time.perf_counter() - t_start
    goals = stack_summary(sb, args.quick)
    report = render(sb, info, goals, elapsed, (load_start, loadavg()))
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stacks.md").write_text(report + "\n")
    payload = {
        "mode": "quick" if args.quick else "full",
        "elapsed_s": elapsed,
        "machine": info,
        "cases": [
            {
                **asdict(c),
                "mb_s": c.mb_s(),
                "ratio": c.ratio(),
                "pixel_ratio": c.pixel_ratio(),
                "meta_per_image": c.meta_per_image(),
            }
            for c in [
                *sb.cases,
                *([sb.big] if sb.big else []),
                *([sb.big_hdf] if sb.big_hdf else []),
            ]
        ],
        "reads": [{**asdict(r), "mb_s": r.mb_s()} for r in sb.reads],
        "open": asdict(sb.opens) if sb.opens else None,
        "summary": [asdict(t) for t in goals],
    }
    (args.out / "stacks.json").write_text(json.dumps(payload, indent=1, default=str))
    log(f"results written to {args.out}")
    return 0


# --------------------------------------------------------------------------- goals mode

GOAL_THREADS = ("stack128", 4_000, 128)  # issue 16: 2 threads >= 1.5x one thread
GOAL_MEMORY = BIG  # issue 16: peak RSS of an HDF stack <= 1.2x the same as .mrcs


def run_goals(args: argparse.Namespace) -> int:
    """Only issue 16's two stack goals (``--goals threads|memory``, default both), with
    every configuration interleaved (new code, then the --baseline tree's) in each of
    --repeat rounds, so that a shared machine's load hits them alike; fastest run kept."""
    t_start, load_start = time.perf_counter(), loadavg()
    reuse = args.data is not None
    data_dir = args.data or Path(tempfile.mkdtemp(prefix="e2c_goals_data_"))
    data_dir.mkdir(parents=True, exist_ok=True)
    sb = StackBench(args, data_dir, reuse)
    trees: list[tuple[str, str | None]] = [("e2compress", None)]
    if sb.baseline:
        trees.append(("e2compress (baseline)", sb.baseline))
    lines: list[list[str]] = []
    rows: list[dict[str, Any]] = []
    try:
        info = sb.bench.info()
        if args.goals in ("all", "threads"):
            _goal_threads(sb, trees, lines, rows)
        if args.goals in ("all", "memory") and not args.quick:
            _goal_memory(sb, trees, lines, rows)
    finally:
        shutil.rmtree(sb.out_dir if reuse else data_dir, ignore_errors=True)
    header = ["case", "code", "one thread / .mrcs", "all threads / HDF", "ratio"]
    report = "\n\n".join(
        [
            f"## e2compress stack goals ({(time.perf_counter() - t_start) / 60:.1f} min, "
            f"--repeat {args.repeat}, fastest of interleaved rounds)",
            machine_text(info, (load_start, loadavg())),
            table(header, lines),
        ]
    )
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stack_goals.md").write_text(report + "\n")
    (args.out / "stack_goals.json").write_text(json.dumps(rows, indent=1, default=str))
    return 0


def _goal_threads(
    sb: StackBench,
    trees: list[tuple[str, str | None]],
    lines: list[list[str]],
    rows: list[dict[str, Any]],
) -> None:
    """One thread against all threads on 4,000 x 128^2 at bits 5 (goal: >= 1.5x)."""
    key, count, box = GOAL_THREADS
    count = count // 4 if sb.args.quick else count
    ds = Dataset(key, f"{count:,} x {box}x{box}", f"{key}.mrcs", {"count": count, "box": box})
    src = sb.bench.generate(ds)
    dst = sb.out_dir / "threads.hdf"
    times: dict[tuple[str, int | None], list[float]] = {}
    for r in range(sb.args.repeat):
        for label, tree in trees:
            for threads in (1, None):
                spec = {"task": "e2compress", "src": str(src), "dst": str(dst)}
                spec.update(bits=BITS, level=LEVEL, threads=threads)
                dst.unlink(missing_ok=True)
                result, _ = sb.runner.run(spec, pythonpath=tree)
                got = result.get("seconds")
                times.setdefault((label, threads), []).append(got or math.nan)
                log(
                    f"  round {r + 1} {label} threads {threads or 'all'}: {fmt(got, 2)} s "
                    f"(load {loadavg():.2f}) {result.get('error', '')}"
                )
    dst.unlink(missing_ok=True)
    mb = ds.pixels * 4 / MB
    for label, _ in trees:
        one, all_ = min(times[(label, 1)]), min(times[(label, None)])
        q = one / all_ if all_ > 0 else None
        lines.append(
            [
                f"{ds.title}, bits {BITS}",
                label,
                f"{mb / one:.1f} MB/s",
                f"{mb / all_:.1f} MB/s",
                fmt(q, 2, "x"),
            ]
        )
        rows.append(
            {
                "goal": "threads",
                "tree": label,
                "one_s": times[(label, 1)],
                "all_s": times[(label, None)],
                "speedup": q,
            }
        )


def _goal_memory(
    sb: StackBench,
    trees: list[tuple[str, str | None]],
    lines: list[list[str]],
    rows: list[dict[str, Any]],
) -> None:
    """Peak RSS compressing a 100,000 x 32^2 stack given as HDF against as .mrcs."""
    key, count, box = GOAL_MEMORY
    ds = Dataset(key, f"{count:,} x {box}x{box}", f"{key}.mrcs", {"count": count, "box": box})
    src = sb.bench.generate(ds)
    hdf = sb.out_dir / "big_input.hdf"
    spec = {
        "task": "e2compress",
        "src": str(src),
        "dst": str(hdf),
        "bits": BITS,
        "level": LEVEL,
        "threads": None,
    }
    sb.runner.run(spec)
    out = sb.out_dir / "big_out.hdf"
    for label, tree in trees:
        peaks: dict[str, float | None] = {}
        for kind, path in (("mrcs", src), ("hdf", hdf)):
            out.unlink(missing_ok=True)
            result, rss = sb.runner.run({**spec, "src": str(path), "dst": str(out)}, tree)
            peaks[kind] = rss if "error" not in result else None
            log(
                f"  {label} {kind} input: peak {fmt(rss, 0)} MB, "
                f"{fmt(result.get('seconds'), 1)} s {result.get('error', '')}"
            )
        m, h = peaks["mrcs"], peaks["hdf"]
        q = h / m if h and m else None
        lines.append(
            [
                f"{ds.title}: peak RSS, HDF input vs .mrcs",
                label,
                f"{fmt(m, 0)} MB",
                f"{fmt(h, 0)} MB",
                fmt(q, 2, "x"),
            ]
        )
        rows.append({"goal": "memory", "tree": label, **peaks, "ratio": q})
    for path in (hdf, out):
        path.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit("run it as: python benchmarks/bench.py --stacks [--goals]")
