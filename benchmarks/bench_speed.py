"""Per-core speed on the K2-like movie: this tree against its baselines, in one run.

    python benchmarks/bench_speed.py [--frames 8] [--bits 5] [--repeat 3]
        [--baseline REV] [--data DIR] [--stack] [--eman2 DIR]

Every case runs in a fresh process; the cases are interleaved (one round of all, N
rounds), so load on a shared machine hits them alike. Cases: this tree with the
compiled kernels (numba), this tree with the numpy kernels (``E2C_NO_NUMBA=1``), the
``src`` of git revision REV (``git archive``, optional), each on 1 and 2 threads;
the EMAN2-equivalent writer of ``bench_worker.py`` (numpy + h5py, one thread); and
real EMAN2 (``eman2_timed.py`` in EMAN2's own Python, when ``--eman2`` or
``E2C_EMAN2`` names its build). ``--files N``: each e2compress process compresses the
movie N times, as a batch of N movies (numba's start-up, ~1.5 s of CPU a process, is
paid once; see ``kernels.WARM_BYTES``). For each: the best and median MB/s per file
(float32 bytes of the movie per second of compression, fsync included), the first
file of a fresh process, the least CPU seconds of a process (all its threads: the
SHA-256 thread too), the ratio and the peak RSS. ``--stack`` writes the movie as an
``.mrcs`` stack of frames (one image per frame) instead of one ``.mrc`` volume.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
MB = 1e6

CHILD = r"""
import json, os, sys, time
import e2compress
src, dst, bits, threads, files = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
try:  # a batch says how much work is coming (the compiled kernels pay from 2 GB)
    from e2compress import kernels
    kernels.prepare(files * os.path.getsize(src))
except (ImportError, AttributeError):  # a tree without them
    pass
times = []
for _ in range(files):
    t0 = time.perf_counter()
    r = e2compress.compress_file(src, dst, bits=bits, level=1, threads=threads, verify=False)
    times.append(time.perf_counter() - t0)
print(json.dumps({"seconds": times, "module": e2compress.__file__, "engine": r.engine}))
"""


@dataclass
class Case:
    label: str
    threads: int
    argv: list[str]
    env: dict[str, str]
    seconds: list[float] = field(default_factory=list)  # per file
    first: list[float] = field(default_factory=list)  # the first file of each process
    cpu: list[float] = field(default_factory=list)
    rss: float = 0.0
    out_bytes: int = 0


def run_rusage(case: Case, dst: Path) -> None:
    """One run of ``case`` in a fresh process: its time, CPU time (``wait4``) and peak RSS."""
    dst.unlink(missing_ok=True)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(case.argv, stdout=out, stderr=err, env=case.env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            raise RuntimeError(f"{case.label} failed:\n{err.read()}")
        got = json.loads(out.read().strip().splitlines()[-1])
    seconds = got["seconds"] if isinstance(got["seconds"], list) else [got["seconds"]]
    case.seconds += [float(t) for t in seconds]
    case.first.append(float(seconds[0]))
    case.cpu.append(usage.ru_utime + usage.ru_stime)
    case.rss = max(case.rss, usage.ru_maxrss / 1e3)
    case.out_bytes = dst.stat().st_size


def generate(directory: Path, frames: int, stack: bool) -> tuple[Path, int]:
    """The K2-like movie of ``bench_worker.py`` (reused when present)."""
    path = directory / (f"k2_{frames}.mrcs" if stack else f"k2_{frames}.mrc")
    if not path.exists():
        spec = directory / "gen.json"
        spec.write_text(
            json.dumps({"task": "generate", "dataset": "k2", "path": str(path), "frames": frames})
        )
        subprocess.run(
            [sys.executable, str(HERE / "bench_worker.py"), str(spec), str(directory / "r.json")],
            check=True,
        )
    import mrcfile

    with mrcfile.mmap(path, permissive=True) as m:
        pixels = int(m.data.size)
    return path, pixels


def baseline_tree(rev: str, directory: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "src"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(directory, filter="data")
    return directory / "src"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--bits", type=int, default=5)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--baseline", default=None, help="git revision to compare with")
    p.add_argument("--data", type=Path, default=None, help="keep the movie here")
    p.add_argument("--stack", action="store_true", help="an .mrcs stack of frames")
    p.add_argument("--eman2", type=Path, default=os.environ.get("E2C_EMAN2"))
    p.add_argument(
        "--files",
        type=int,
        default=1,
        help="e2compress compresses the movie this many times in one process (a batch)",
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="e2c_speed_") as tmp:
        tmpdir = Path(tmp)
        data_dir = args.data or tmpdir
        data_dir.mkdir(parents=True, exist_ok=True)
        src, pixels = generate(data_dir, args.frames, args.stack)
        f32_mb = pixels * 4 / MB
        dst = tmpdir / "out.hdf"
        base_env = dict(os.environ)
        base_env.pop("E2C_NO_NUMBA", None)
        py = [sys.executable, "-c", CHILD, str(src), str(dst), str(args.bits)]
        batch = [str(args.files)]
        here = tmpdir / "this" / "src"  # a copy: edits made while this runs do not leak in
        shutil.copytree(REPO / "src", here, ignore=shutil.ignore_patterns("*.egg-info"))
        trees = {"e2compress (numba kernels)": (here, {})}
        trees["e2compress (numpy kernels)"] = (here, {"E2C_NO_NUMBA": "1"})
        if args.baseline:
            tree = baseline_tree(args.baseline, tmpdir / "baseline")
            trees[f"e2compress {args.baseline}"] = (tree, {})
        cases = [
            Case(label, t, [*py, str(t), *batch], {**base_env, "PYTHONPATH": str(tree), **extra})
            for label, (tree, extra) in trees.items()
            for t in (1, 2)
        ]
        spec = tmpdir / "eman2equiv.json"
        spec.write_text(
            json.dumps(
                {"task": "eman2", "src": str(src), "dst": str(dst), "bits": args.bits, "level": 1}
            )
        )
        worker = [sys.executable, str(HERE / "bench_worker.py"), str(spec), str(tmpdir / "w.json")]
        cases.append(Case("EMAN2-equivalent (numpy + h5py)", 1, worker, base_env))
        if args.eman2:
            eman_py = str(Path(args.eman2).expanduser() / "venv" / "bin" / "python")
            timed = [eman_py, str(HERE / "eman2_timed.py"), str(src), str(dst)]
            cases.append(Case("real EMAN2", 1, [*timed, "--bits", str(args.bits)], base_env))
        print(f"load average at start: {os.getloadavg()[0]:.2f}", file=sys.stderr)
        for r in range(args.repeat):
            for case in cases:
                if case.label == "EMAN2-equivalent (numpy + h5py)":
                    run_eman2_equiv(case, dst, tmpdir / "w.json")
                else:
                    run_rusage(case, dst)
                print(
                    f"round {r + 1}: {case.label} t{case.threads}: {case.seconds[-1]:.2f} s "
                    f"(first {case.first[-1]:.2f} s)",
                    file=sys.stderr,
                )
        load_end = os.getloadavg()[0]
        ref = {c.label: c for c in cases}
        equiv = ref["EMAN2-equivalent (numpy + h5py)"]
        real = ref.get("real EMAN2")
        print(
            f"K2-like movie, {args.frames} frames of 3838 x 3710 float32 "
            f"({'.mrcs stack' if args.stack else '.mrc volume'}), {f32_mb:.0f} MB, bits "
            f"{args.bits}, level 1; {args.repeat} interleaved rounds of a fresh process "
            f"each, e2compress compressing it {args.files} time(s) in that process; load "
            f"average at end {load_end:.2f}\n"
        )
        print(
            "| writer | threads | best MB/s | median MB/s | first file in a process, median "
            "MB/s | least CPU s a process | ratio | peak RSS MB | best vs EMAN2-equiv "
            "| best vs real EMAN2 |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for c in cases:
            best = f32_mb / min(c.seconds)
            med = f32_mb / statistics.median(c.seconds)
            first = f32_mb / statistics.median(c.first)
            vs_equiv = best / (f32_mb / min(equiv.seconds))
            vs_real = f"{best / (f32_mb / min(real.seconds)):.2f}x" if real else "-"
            cpu = f"{min(c.cpu):.2f}" if c.cpu else "-"
            print(
                f"| {c.label} | {c.threads} | {best:.0f} | {med:.0f} | {first:.0f} | {cpu} "
                f"| {pixels * 4 / c.out_bytes:.2f} | {c.rss:.0f} | {vs_equiv:.2f}x | {vs_real} |"
            )


def run_eman2_equiv(case: Case, dst: Path, result: Path) -> None:
    """The EMAN2-equivalent writer reports its time in a result file."""
    dst.unlink(missing_ok=True)
    proc = subprocess.Popen(case.argv, env=case.env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{case.label} failed")
    case.seconds.append(float(json.loads(result.read_text())["seconds"]))
    case.first.append(case.seconds[-1])
    case.cpu.append(usage.ru_utime + usage.ru_stime)
    case.rss = max(case.rss, usage.ru_maxrss / 1e3)
    case.out_bytes = dst.stat().st_size


if __name__ == "__main__":
    main()
