"""What an EER movie costs, per frame and grouped: ``python benchmarks/bench_eer.py``.

Writes a synthetic Falcon-like EER movie (4096 x 4096, ``--frames`` frames of Poisson
events at ``--dose`` e/px each, coded by the tests' EER encoder), then compresses it with
``--eer-grouping`` 1 (EMAN2's one image a frame) and each ``--groups`` value, each in a
fresh process (its peak RSS is its own), and prints a markdown table: input and output
size, ratio, wall time and peak RSS. Needs the package and the test helpers
(``pip install -e '.[dev]'``); disk: about 20 MB a frame in the temporary directory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
WORKER = """
import json, resource, sys, time
from e2compress import compress_file
t0 = time.perf_counter()
src, dst, bits, grouping = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
report = compress_file(src, dst, bits=bits, eer_grouping=grouping)
seconds = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "out": report.bytes_out, "in": report.bytes_in,
                  "images": len(report.images), "rss_mb": rss, "notes": report.notes}))
"""


class _Frames:
    """Poisson frames generated one at a time (a 4K movie does not fit in memory)."""

    def __init__(self, n: int, size: int, dose: float) -> None:
        self.shape = (n, size, size)
        self._dose = dose

    def __iter__(self):  # type: ignore[no-untyped-def]
        rng = np.random.default_rng(0)
        for _ in range(self.shape[0]):
            yield (rng.poisson(self._dose, self.shape[1:]) > 0).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--dose", type=float, default=0.025, help="e/px a frame (default 0.025)")
    ap.add_argument("--bits", type=int, default=5)
    ap.add_argument("--groups", type=int, nargs="*", default=[10, 40])
    ap.add_argument("--size", type=int, default=4096)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from helpers import write_eer

    with tempfile.TemporaryDirectory() as tmp:
        movie = Path(tmp) / "movie.eer"
        t0 = time.perf_counter()
        write_eer(movie, _Frames(args.frames, args.size, args.dose))  # type: ignore[arg-type]
        print(
            f"wrote {movie.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
        )
        print("| grouping | images | EER MB | HDF MB | ratio | s | s/frame | peak RSS MB |")
        print("|---|---|---|---|---|---|---|---|")
        for grouping in [1, *args.groups]:
            out = Path(tmp) / f"g{grouping}.hdf"
            proc = subprocess.run(
                [sys.executable, "-c", WORKER, str(movie), str(out), str(args.bits), str(grouping)],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(proc.stdout)
            print(
                f"| {grouping} | {r['images']} | {r['in'] / 1e6:.1f} | {r['out'] / 1e6:.1f} | "
                f"{r['in'] / r['out']:.2f} | {r['seconds']:.1f} | "
                f"{r['seconds'] / args.frames:.3f} | {r['rss_mb']:.0f} |"
            )
            print(*r["notes"], sep="\n", file=sys.stderr)
            out.unlink()


if __name__ == "__main__":
    main()
