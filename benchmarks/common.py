"""Shared parts of the benchmarks (bench.py, bench_stacks.py): the data model, the
child-process runner, the Bench driver and the markdown helpers. Standard library only
(see bench.py: the parent must stay smaller than any child)."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORKER = Path(__file__).resolve().parent / "bench_worker.py"
MB = 1e6  # every MB in this benchmark is 10**6 bytes (RSS too)
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

    def time_decode(
        self, method: str, src: str, repeat: int
    ) -> tuple[float | None, int, float | None, str]:
        """Decode ``src`` by ``method`` in ``repeat`` fresh children: (best seconds,
        pixels, peak RSS MB, note: "FAILED" when a child failed)."""
        times: list[float] = []
        pixels, rss_mb, note = 0, None, ""
        for _ in range(repeat):
            result, rss = self.run({"task": "decode", "method": method, "src": src})
            if "error" in result:
                log(result["error"])
                note = "FAILED"
                break
            times.append(result["seconds"])
            pixels = result["pixels"]
            rss_mb = max(rss_mb or 0.0, rss or 0.0)
        return (min(times) if times else None), pixels, rss_mb, note


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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
                    dec.seconds, dec.pixels, dec.rss_mb, dec.note = self.runner.time_decode(
                        method, src, self.args.repeat
                    )
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


@dataclass
class Measure:
    """One line of a summary table: what was measured (goals: docs/performance.md)."""

    label: str
    measured: str


def summary_table(title: str, items: list[Measure]) -> str:
    """The summary lines as a markdown table (the goals and whether they are met are in
    docs/performance.md, not here)."""
    rows = [[m.label, m.measured] for m in items]
    return f"### {title}\n\n" + table(["quantity", "measured"], rows)


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
