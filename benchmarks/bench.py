"""e2compress benchmark: throughput, ratio, peak memory and decode speed in one run.

    python benchmarks/bench.py [--quick] [--out DIR]
    python benchmarks/bench.py --stacks [--quick] [--baseline SRC] [--eman2 DIR]
    python benchmarks/bench.py --stacks --goals [threads|memory] [--repeat N] [--baseline SRC]

Generates deterministic synthetic cryo-EM data in a temporary directory, runs every
writer/reader case in a fresh subprocess (``bench_worker.py``), and prints markdown
tables (per data set, decode, memory, and a summary against the issue's targets).
Results are also written to ``DIR/results.json`` and ``DIR/results.md``.

This parent process imports only the standard library on purpose: a child's
``ru_maxrss`` (from ``os.wait4``) starts at the RSS of the process that spawned it, so
the parent must stay smaller than any child for per-case peak RSS to be right.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

WORKER = Path(__file__).resolve().parent / "bench_worker.py"
MB = 1e6  # every MB in this benchmark is 10**6 bytes (RSS too)
K2_BITS = (0, 4, 5, 8, 10, 12)
LEVELS = (1, 6, 9)
# e2compress settings for the other data sets: lossless, 5 and 10 bits, 8 bits at level 9.
OTHER_SETTINGS = ((0, 1), (5, 1), (10, 1), (8, 9))
# libdeflate-12 wins the probe on these and runs at a few MB/s: all threads only.
SLOW = frozenset({(0, 9), (10, 9), (12, 9)})
MEMORY_FRAMES = 24


# --------------------------------------------------------------------------- data model


@dataclass
class Dataset:
    key: str
    title: str
    filename: str
    params: dict[str, Any]
    pixels: int = 0

    @property
    def float_bytes(self) -> int:
        """Size of the data as float32 (the throughput and ratio reference)."""
        return self.pixels * 4


@dataclass
class Case:
    dataset: str
    writer: str
    bits: int | None  # None: raw integers (lossless MRCZ/TIFF of the count movie)
    level: int | None
    threads: int | None  # None: all cores
    label: str = ""  # codec detail (zstd-1, zlib-6, LZW, ...)
    keep: bool = False  # keep the output (decode benchmark input)
    defaults: bool = False  # e2compress with no options at all (memory case)
    seconds: float | None = None
    out_bytes: int | None = None
    rss_mb: float | None = None
    hwm_mb: float | None = None
    base_rss_mb: float | None = None
    entropy: float | None = None
    engine: str = ""
    note: str = ""
    output: str = ""
    runs: list[float] = field(default_factory=list)

    def ok(self) -> bool:
        return self.seconds is not None and not self.note

    def mb_s(self, ds: Dataset) -> float | None:
        return ds.float_bytes / MB / self.seconds if self.seconds else None

    def ratio(self, ds: Dataset) -> float | None:
        return ds.float_bytes / self.out_bytes if self.out_bytes else None

    def bound(self) -> float | None:
        """Order-0 entropy bound as a ratio vs float32 (32 / H)."""
        if self.entropy is None:
            return None
        return 32.0 / self.entropy if self.entropy > 0 else math.inf

    def pct_of_bound(self, ds: Dataset) -> float | None:
        ratio, bound = self.ratio(ds), self.bound()
        if ratio is None or bound is None or not math.isfinite(bound):
            return None
        return 100.0 * ratio / bound


@dataclass
class DecodeCase:
    bits: int
    method: str
    src: str = ""
    seconds: float | None = None
    pixels: int = 0
    rss_mb: float | None = None
    note: str = ""

    def mb_s(self) -> float | None:
        return self.pixels * 4 / MB / self.seconds if self.seconds else None


DECODE_METHODS = {
    "read_images": "e2compress.read_images(path)",
    "open": "e2compress.open(path)[i]",
    "h5py_float": "h5py ds[...] + float32 rescale",
    "h5py_codes": "h5py ds[...] only (codes, no rescale)",
}


# --------------------------------------------------------------------------- children


class Runner:
    """Spawns worker children and reads their results and peak RSS."""

    def __init__(self, workdir: Path, timeout: float) -> None:
        self.workdir = workdir
        self.timeout = timeout
        self.count = 0

    def run(
        self, spec: dict[str, Any], pythonpath: str | None = None
    ) -> tuple[dict[str, Any], float | None]:
        """Run one task; returns (result, peak RSS MB from ``os.wait4``).

        ``pythonpath`` runs the child with that source tree first on its path (the
        ``--baseline`` e2compress).
        """
        self.count += 1
        spec_path = self.workdir / f"spec{self.count}.json"
        result_path = self.workdir / f"result{self.count}.json"
        spec_path.write_text(json.dumps(spec))
        result_path.unlink(missing_ok=True)
        env = None
        if pythonpath is not None:
            env = dict(os.environ, PYTHONPATH=pythonpath)
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(spec_path), str(result_path)], env=env
        )
        deadline = time.monotonic() + self.timeout
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if not timed_out and time.monotonic() > deadline:
                proc.kill()
                timed_out = True
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
        # ru_maxrss is KiB on Linux, bytes on macOS.
        scale = 1 if sys.platform == "darwin" else 1024
        rss = usage.ru_maxrss * scale / MB
        spec_path.unlink(missing_ok=True)
        if timed_out:
            return {"error": f"timed out after {self.timeout:.0f} s"}, rss
        try:
            result: dict[str, Any] = json.loads(result_path.read_text())
        except (OSError, ValueError):
            result = {"error": f"worker exited with status {proc.returncode} and no result"}
        result_path.unlink(missing_ok=True)
        return result, rss


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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


# --------------------------------------------------------------------------- running


class Bench:
    def __init__(self, args: argparse.Namespace, data_dir: Path, reuse: bool) -> None:
        self.args = args
        self.data_dir = data_dir
        self.reuse = reuse
        self.out_dir = data_dir / "out"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.runner = Runner(data_dir, args.timeout)
        self.entropy_cache: dict[tuple[str, str, int], float] = {}
        self.cases: list[Case] = []
        self.decodes: list[DecodeCase] = []
        self.memory: Case | None = None
        self.memory_ds: Dataset | None = None
        self.datasets: dict[str, Dataset] = {}
        self.threads_all = os.cpu_count() or 1

    # ------------------------------------------------------------------ generation

    def generate(self, ds: Dataset) -> Path:
        path = self.data_dir / ds.filename
        stamp = path.with_name(path.name + ".json")
        if self.reuse and path.exists() and stamp.exists():
            info = json.loads(stamp.read_text())
            if info.get("params") == ds.params:
                ds.pixels = info["pixels"]
                log(f"reusing {path.name}")
                return path
        log(f"generating {ds.title} ...")
        t0 = time.perf_counter()
        spec = {"task": "generate", "dataset": ds.key, "path": str(path), **ds.params}
        result, _ = self.runner.run(spec)
        if "error" in result:
            raise RuntimeError(f"generating {ds.key} failed:\n{result['error']}")
        ds.pixels = result["pixels"]
        stamp.write_text(json.dumps({"params": ds.params, **result}))
        log(f"  {path.stat().st_size / MB:.0f} MB in {time.perf_counter() - t0:.1f} s")
        return path

    # ------------------------------------------------------------------ cases

    def _writer_spec(self, case: Case, src: Path, dst: Path) -> dict[str, Any]:
        threads = case.threads or self.threads_all
        base = {"src": str(src), "dst": str(dst), "bits": case.bits, "level": case.level}
        if case.writer == "e2compress":
            return {
                **base,
                "task": "e2compress",
                "threads": case.threads,
                "defaults": case.defaults,
            }
        if case.writer == "EMAN2-equiv":
            return {**base, "task": "eman2"}
        if case.writer == "MRCZ":
            return {**base, "task": "mrcz", "threads": threads}
        compression = "zlib" if case.label.startswith("zlib") else "lzw"
        return {**base, "task": "tiff", "compression": compression, "threads": threads}

    def run_case(self, case: Case, ds: Dataset, src: Path) -> None:
        suffix = {"MRCZ": ".mrcz", "TIFF": ".tif"}.get(case.writer, ".hdf")
        name = f"{ds.key}_{case.writer}_{case.bits}_{case.level}_{case.threads}{suffix}"
        dst = self.out_dir / name.replace("-", "").replace(" ", "")
        spec = self._writer_spec(case, src, dst)
        for _ in range(self.args.repeat):
            dst.unlink(missing_ok=True)
            result, rss = self.runner.run(spec)
            if "skipped" in result or "error" in result:
                case.note = result.get("skipped") or "FAILED"
                if "error" in result:
                    log(result["error"])
                break
            case.runs.append(result["seconds"])
            case.rss_mb = max(case.rss_mb or 0.0, rss or 0.0)
            case.hwm_mb = max(case.hwm_mb or 0.0, result.get("hwm_mb") or 0.0)
            case.base_rss_mb = result.get("base_rss_mb")
            hwm = result.get("hwm_mb")
            if rss and hwm and rss > 1.1 * hwm + 10:
                log(f"  warning: ru_maxrss {rss:.0f} MB > the child's own VmHWM {hwm:.0f} MB")
            case.engine = result.get("engine", "")
            if "entropy" in result:
                case.entropy = result["entropy"]
        if case.runs:
            case.seconds = min(case.runs)
            case.out_bytes = dst.stat().st_size
            if case.entropy is None and case.bits and suffix == ".hdf":
                case.entropy = self.entropy_of(case, dst)
        if case.keep and case.runs:
            case.output = str(dst)
        else:
            dst.unlink(missing_ok=True)
        log(f"  {describe(case)}: {summary_line(case, ds)}")

    def entropy_of(self, case: Case, path: Path) -> float | None:
        """Entropy of the stored codes; the same for every level and thread count."""
        assert case.bits is not None
        key = (case.dataset, case.writer, case.bits)
        if key not in self.entropy_cache:
            result, _ = self.runner.run({"task": "histogram", "path": str(path), "bits": case.bits})
            if "error" in result:
                log(result["error"])
                return None
            self.entropy_cache[key] = result["entropy"]
        return self.entropy_cache[key]

    def run_dataset(self, ds: Dataset, cases: list[Case]) -> None:
        src = self.generate(ds)
        self.datasets[ds.key] = ds
        log(f"{ds.title}: {len(cases)} cases")
        for case in cases:
            self.run_case(case, ds, src)
            self.cases.append(case)
        if not self.reuse:
            src.unlink(missing_ok=True)

    def run_decode(self) -> None:
        for bits in (5, 10):
            src = next(
                (
                    c.output
                    for c in self.cases
                    if c.dataset == "k2"
                    and c.writer == "e2compress"
                    and c.bits == bits
                    and c.level == 1
                    and c.threads is None
                    and c.output
                ),
                "",
            )
            for method in DECODE_METHODS:
                dec = DecodeCase(bits, method, src)
                if not src:
                    dec.note = "no e2compress output to read"
                else:
                    times: list[float] = []
                    for _ in range(self.args.repeat):
                        result, rss = self.runner.run(
                            {"task": "decode", "method": method, "src": src}
                        )
                        if "error" in result:
                            log(result["error"])
                            dec.note = "FAILED"
                            break
                        times.append(result["seconds"])
                        dec.pixels = result["pixels"]
                        dec.rss_mb = max(dec.rss_mb or 0.0, rss or 0.0)
                    dec.seconds = min(times) if times else None
                self.decodes.append(dec)
                mbs = dec.mb_s()
                log(f"  decode {bits} bits {method}: {fmt(mbs, 0)} MB/s {dec.note}")
            if src:
                Path(src).unlink(missing_ok=True)

    def run_memory(self) -> None:
        ds = Dataset(
            "k2_24",
            f"K2-like float movie ({MEMORY_FRAMES} frames)",
            "k2_movie_24.mrc",
            {"frames": MEMORY_FRAMES},
        )
        src = self.generate(ds)
        case = Case("k2_24", "e2compress", 10, 1, None, defaults=True, label="default options")
        try:
            self.run_case(case, ds, src)
        finally:  # 1.37 GB: never kept, not even with --data
            src.unlink(missing_ok=True)
            src.with_name(src.name + ".json").unlink(missing_ok=True)
        self.memory, self.memory_ds = case, ds

    def info(self) -> dict[str, Any]:
        result, rss = self.runner.run({"task": "info"})
        if "error" in result:
            log(result["error"])
        result.pop("hwm_mb", None)
        result["child_baseline_rss_mb"] = rss
        return result


# --------------------------------------------------------------------------- formatting


def fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "∞"
    return f"{value:.{digits}f}{suffix}"


def threads_text(threads: int | None) -> str:
    return "1" if threads == 1 else f"all ({os.cpu_count()})"


def describe(case: Case) -> str:
    bits = "int" if case.bits is None else str(case.bits)
    lvl = "-" if case.level is None else str(case.level)
    return f"{case.writer} bits {bits} level {lvl} threads {threads_text(case.threads)}"


def summary_line(case: Case, ds: Dataset) -> str:
    if case.note:
        return case.note
    return (
        f"{fmt(case.mb_s(ds), 0)} MB/s, ratio {fmt(case.ratio(ds), 2)}, "
        f"RSS {fmt(case.rss_mb, 0)} MB"
    )


def table(header: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def dataset_table(ds: Dataset, cases: list[Case]) -> str:
    rows = []
    for c in cases:
        writer = c.writer + (f" ({c.label})" if c.label else "")
        bits = "int" if c.bits is None else ("0 (lossless)" if c.bits == 0 else str(c.bits))
        rows.append(
            [
                writer,
                bits,
                "-" if c.level is None else str(c.level),
                threads_text(c.threads),
                fmt(c.mb_s(ds), 0) if not c.note else c.note,
                fmt(c.ratio(ds), 2),
                fmt(c.bound(), 2),
                fmt(c.pct_of_bound(ds), 1, "%"),
                fmt(c.rss_mb, 0),
            ]
        )
    header = [
        "writer",
        "bits",
        "level",
        "threads",
        "MB/s (float32 in)",
        "ratio vs float32",
        "entropy bound (32/H)",
        "% of bound",
        "peak RSS MB",
    ]
    size = ds.float_bytes / MB
    return f"### {ds.title} — {size:.0f} MB as float32\n\n" + table(header, rows)


def decode_table(decodes: list[DecodeCase]) -> str:
    rows = []
    for d in decodes:
        base = next((b for b in decodes if b.bits == d.bits and b.method == "h5py_float"), None)
        speed, ref = d.mb_s(), base.mb_s() if base else None
        rel = speed / ref if speed and ref else None
        rows.append(
            [
                f"{d.bits} bits",
                DECODE_METHODS[d.method],
                fmt(speed, 0) if not d.note else d.note,
                fmt(rel, 2, "x"),
                fmt(d.rss_mb, 0),
            ]
        )
    header = [
        "file (K2 movie, level 1)",
        "reader",
        "MB/s (float32 out)",
        "vs h5py ds[...] + rescale",
        "peak RSS MB",
    ]
    return "### Decode\n\n" + table(header, rows)


# --------------------------------------------------------------------------- targets


@dataclass
class Target:
    label: str
    measured: str
    goal: str
    status: str


def status(value: float | None, ok: bool) -> str:
    return "n/a" if value is None else ("PASS" if ok else "MISS")


def targets(bench: Bench, quick: bool) -> list[Target]:
    """The issue's targets, computed from this run's K2 movie cases."""
    ds = bench.datasets.get("k2")
    if ds is None:
        return []
    k2: Dataset = ds
    out: list[Target] = []

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

    def add(label: str, value: float | None, goal: float, unit: str, detail: str) -> None:
        text = fmt(value, 2 if unit == "x" else 1, unit)
        ok = value is not None and value >= goal
        out.append(Target(label, f"{text} ({detail})", f">= {goal:g}{unit}", status(value, ok)))

    all5, one5 = find("e2compress", 5, 1, None), find("e2compress", 5, 1, 1)
    eman5 = find("EMAN2-equiv", 5, 1, 1)
    add(
        "(1) bits 5 level 1, all threads: throughput vs EMAN2-equiv",
        quotient(speed(all5), speed(eman5)),
        5,
        "x",
        f"{fmt(speed(all5), 0)} vs {fmt(speed(eman5), 0)} MB/s",
    )
    add(
        "(1) bits 5 level 1: ratio vs EMAN2-equiv",
        quotient(ratio(all5), ratio(eman5)),
        1,
        "x",
        f"{fmt(ratio(all5), 2)} vs {fmt(ratio(eman5), 2)}",
    )
    add(
        "(1) bits 5 level 1, one thread: throughput vs EMAN2-equiv",
        quotient(speed(one5), speed(eman5)),
        2,
        "x",
        f"{fmt(speed(one5), 0)} MB/s",
    )
    for bits in (4, 5):
        c9 = find("e2compress", bits, 9, None)
        add(
            f"(2) bits {bits} level 9: ratio as % of the order-0 entropy bound",
            c9.pct_of_bound(k2) if c9 else None,
            93,
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
            2,
            "x",
            detail,
        )
    all10, eman10 = find("e2compress", 10, 1, None), find("EMAN2-equiv", 10, 1, 1)
    add(
        "(3) bits 10 level 1: ratio vs EMAN2-equiv",
        quotient(ratio(all10), ratio(eman10)),
        1.2,
        "x",
        f"{fmt(ratio(all10), 2)} vs {fmt(ratio(eman10), 2)}",
    )
    add(
        "(3) bits 10 level 1, all threads: throughput vs EMAN2-equiv",
        quotient(speed(all10), speed(eman10)),
        3,
        "x",
        f"{fmt(speed(all10), 0)} vs {fmt(speed(eman10), 0)} MB/s",
    )
    mem = bench.memory
    rss = mem.rss_mb if mem and mem.ok() else None
    out.append(
        Target(
            f"(4) peak RSS, {MEMORY_FRAMES}-frame movie (1.37 GB), default options",
            "skipped in --quick" if quick else fmt(rss, 0, " MB"),
            "<= 400 MB",
            "n/a" if rss is None else ("PASS" if rss <= 400 else "MISS"),
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
            2,
            "x",
            f"{fmt(slower, 0)} vs {fmt(ref, 0)} MB/s",
        )
    return out


def targets_table(items: list[Target]) -> str:
    rows = [[t.label, t.measured, t.goal, f"**{t.status}**"] for t in items]
    return "### Summary against the targets (K2 movie)\n\n" + table(
        ["target", "measured", "goal", "result"], rows
    )


def machine_text(info: dict[str, Any], load: tuple[float, float]) -> str:
    engines = info.get("engines", {})
    lines = [
        f"- CPU: {info.get('cpu_model', '?')}; os.cpu_count() = {info.get('cpu_count')}"
        f" (affinity {info.get('cpu_affinity')}); memory {fmt(info.get('memory_gb'), 1)} GB",
        f"- load average (1 min) at start / end: {load[0]:.2f} / {load[1]:.2f}",
        f"- {info.get('platform', '?')}",
        f"- Python {info.get('python')}, numpy {info.get('numpy')}, h5py {info.get('h5py')}"
        f" (HDF5 {info.get('hdf5')}), e2compress {info.get('e2compress')}",
        f"- deflate engines: isal {info.get('isal')}, deflate/libdeflate "
        f"{info.get('deflate (libdeflate)')}, zlib-ng {info.get('zlib_ng')}, "
        f"zlib {info.get('zlib')}",
        "- e2compress per-block candidates: "
        + "; ".join(f"level {lv}: {name}" for lv, name in engines.items()),
        f"- others: mrcfile {info.get('mrcfile')}, tifffile {info.get('tifffile')}, "
        f"imagecodecs {info.get('imagecodecs')}, mrcz {info.get('mrcz')}, "
        f"blosc {info.get('blosc')}",
        f"- child baseline peak RSS (python + numpy + h5py + e2compress imported): "
        f"{fmt(info.get('child_baseline_rss_mb'), 0)} MB",
    ]
    return "\n".join(lines)


def loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return math.nan


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
    goals = targets(bench, args.quick)
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
        "targets": [asdict(t) for t in goals],
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
    goals: list[Target],
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
    parts.append(targets_table(goals))
    return "\n\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
