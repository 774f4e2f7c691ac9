"""Regenerate the golden HDF outputs in this directory from the bundled inputs.

Run ``python tests/data/golden/make_golden.py`` from the repository root ONLY after a
deliberate change of the output format (ranges, codes, layout or attributes), and say so
in the commit: tests/test_golden.py compresses every input again on every run and fails
when today's output no longer decodes to exactly these files' values, so regenerating
them to silence it hides exactly the change the test exists to catch.

Each file is named ``<input>.<case>.hdf``: ``bits<N>`` (``bitsauto``), plus
``.nooutliers`` for EMAN2's histogram clamp. The cases are listed in :data:`CASES`,
which test_golden.py reads too.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATA = HERE.parent  # tests/data: the bundled inputs

# input (relative to tests/data) -> cases; small inputs only (the files are checked in)
CASES: dict[str, tuple[str, ...]] = {
    "EMD-3197.map": (
        "bits0",
        "bits5",
        "bits8",
        "bits10",
        "bitsauto",
        "bits5.nooutliers",
        "bits8.nooutliers",
    ),
    "EMD-3001.map": ("bits5", "bits8.nooutliers"),
    "13pf_MT.tif": ("bits5", "bits8"),
    "eman2/stack.hed": ("bits5", "bits8", "bits0"),
}


def options_of(case: str) -> dict[str, Any]:
    """compress_file keywords of a case name (``bits8.nooutliers`` -> bits 8, nooutliers)."""
    bits, *flags = case.split(".")
    value = bits.removeprefix("bits")
    opts: dict[str, Any] = {"bits": "auto" if value == "auto" else int(value)}
    for flag in flags:
        assert flag == "nooutliers", flag
        opts["nooutliers"] = True
    return opts


def golden_name(source: str, case: str) -> str:
    """The golden file's name for ``source`` (relative to tests/data) and ``case``."""
    return f"{Path(source).name}.{case}.hdf"


def all_cases() -> list[tuple[str, str]]:
    """Every (source, case) pair, in a stable order."""
    return [(source, case) for source, cases in CASES.items() for case in cases]


def main() -> None:
    import e2compress

    for source, case in all_cases():
        out = HERE / golden_name(source, case)
        e2compress.compress_file(DATA / source, out, force=True, threads=1, **options_of(case))
        print(f"{out.name}: {out.stat().st_size} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
