"""Shared test fixtures: paths to the read-only shared data (``../shared`` from the repo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import mrcfile
import numpy as np
import pytest
import tifffile

from e2compress.cli import main
from e2compress.commands import VERBS
from e2compress.quantize import RenderRange, within_half_step

F32 = np.float32
REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
REAL = SHARED / "data" / "real"
EMAN2_WRITTEN = SHARED / "data" / "eman2_written"
REAL_FILES = sorted(
    p for p in REAL.glob("*") if p.is_file() and p.name not in ("MANIFEST.md", "SHA256SUMS")
)
# Small real files with permissive licences, shipped with the tests (see tests/data/README.md):
# the core tests run on these in a clone without ../shared.
DATA = REPO / "tests" / "data"
CORE_FILES = sorted(p for p in DATA.glob("*") if p.is_file() and p.suffix != ".md")


def real_file_params() -> list[Any]:
    """Every real file as a pytest param: the bundled ones always, the rest of the shared
    corpus marked ``shared`` (skipped without ../shared)."""
    core = {p.name for p in CORE_FILES}
    params: list[Any] = [pytest.param(p, id=p.name) for p in CORE_FILES]
    params += [
        pytest.param(p, id=p.name, marks=pytest.mark.shared)
        for p in REAL_FILES
        if p.name not in core
    ]
    return params


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not REAL.is_dir():
        skip = pytest.mark.skip(reason="../shared/data is not present beside the repo")
        for item in items:
            if "shared" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def ranges_json() -> dict[str, Any]:
    with open(EMAN2_WRITTEN / "ranges.json") as fh:
        return json.load(fh)


@pytest.fixture(autouse=True)
def _fresh_cli_state() -> Iterator[None]:
    """cli.main() must restore the signal handlers it installs; check it, then undo."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    handlers = {s: signal.getsignal(s) for s in sigs}
    yield
    left = {s: signal.getsignal(s) for s in sigs}
    for s, h in handlers.items():
        signal.signal(s, h)
    assert left == handlers, "a test left signal handlers installed"


Mapping = tuple[int, float, float, int]  # bits, rmin, rmax, stored_truncated


def eman_decode(path: Path) -> list[tuple[np.ndarray, Mapping | None]]:
    """Every image of ``path`` read with plain h5py and decoded with EMAN2's float32
    formula (spec §2.4), independently of e2compress's reader, with its stored mapping
    (None for float storage)."""
    f32 = np.float32
    out: list[tuple[np.ndarray, Mapping | None]] = []
    with h5py.File(path, "r") as f:
        images = f["MDF/images"]
        count = int(np.ravel(images.attrs["imageid_max"])[0]) + 1
        for i in range(count):
            group = images[str(i)]
            codes = group["image"][...]
            bits = int(np.ravel(group.attrs.get("EMAN.stored_renderbits", [0]))[0])
            if bits <= 0:
                out.append((codes.astype(f32), None))
                continue
            rmin = f32(np.ravel(group.attrs["EMAN.stored_rendermin"])[0])
            rmax = f32(np.ravel(group.attrs["EMAN.stored_rendermax"])[0])
            values = (codes.astype(f32) / f32(2**bits - 1)) * (rmax - rmin) + rmin
            truncated = int(np.ravel(group.attrs["EMAN.stored_truncated"])[0])
            out.append((values, (bits, float(rmin), float(rmax), truncated)))
    return out


def eman2_home() -> Path:
    """The real EMAN2 build named by ``$E2C_EMAN2``; skips the test when it is not set."""
    home = os.environ.get("E2C_EMAN2")
    if not home:
        pytest.skip("real EMAN2 not available (set E2C_EMAN2 to its build directory)")
    return Path(home).expanduser()


def eman2_read(path: Path, tmp: Path) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Every image of ``path`` as real EMAN2 reads it (float32 stack) and its headers.

    Runs the EMAN2 oracle (``../shared/tools/eman2``) built in ``$E2C_EMAN2`` as a
    subprocess (EMAN2 and h5py must never share a process); skips when it is not set.
    """
    root = eman2_home()
    npy, js = tmp / f"{path.stem}.eman2.npy", tmp / f"{path.stem}.eman2.json"
    oracle = [str(root / "venv/bin/python"), str(root / "eman2_oracle.py")]
    proc = subprocess.run(
        [*oracle, "read", str(path), str(npy), "--json", str(js)],
        capture_output=True,
        text=True,
        cwd=tmp,
        timeout=600,
    )
    assert proc.returncode == 0, f"EMAN2 could not read {path.name}: {proc.stderr[-2000:]}"
    headers = json.loads(js.read_text())
    return np.load(npy), headers if isinstance(headers, list) else [headers]


def assert_within_half_step(
    orig: np.ndarray, decoded: np.ndarray, mapping: Mapping | RenderRange
) -> int:
    """The library's one tolerance rule (``quantize.within_half_step``) holds for every
    pixel: within half a step inside the stored range, end values outside it. Checks the
    stored clamped count when ``mapping`` carries one; returns the clamped count."""
    rng = mapping if isinstance(mapping, RenderRange) else RenderRange(*mapping[:3])
    orig = np.asarray(orig, dtype=np.float32)
    got = np.asarray(decoded).reshape(orig.shape)
    ok = within_half_step(orig, got, rng)
    bad = np.argwhere(~ok)
    if bad.size:
        first = tuple(bad[0])
        raise AssertionError(f"{len(bad)} pixels off, first {first}: {got[first]} vs {orig[first]}")
    clamped = int(np.count_nonzero((orig < F32(rng.rmin)) | (orig > F32(rng.rmax))))
    if not isinstance(mapping, RenderRange):
        assert clamped == mapping[3]
    return clamped


def cli_args(*argv: object) -> list[str]:
    """``argv`` as text, with ``--settle 0`` first on a compression command line: the
    tests' inputs are written just before (the tests of --settle give their own, which
    comes later and wins)."""
    args = [str(a) for a in argv]
    if not args or args[0] not in (*VERBS, "watch"):
        args = ["--settle", "0", *args]
    return args


def run_cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    """cli.main(argv) in-process; returns (exit status, stdout, stderr), never a traceback.
    The arguments go through :func:`cli_args`."""
    try:
        rc = main(cli_args(*argv))
    except SystemExit as exc:  # argparse errors, --help, --version
        rc = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert "Traceback" not in out
    return rc, out, err


def write_mrc(path: Path, data: np.ndarray) -> Path:
    """Write ``data`` as an MRC file with mrcfile (NaN pixels allowed)."""
    with np.errstate(invalid="ignore", over="ignore"), mrcfile.new(path, overwrite=True) as m:
        m.set_data(data)  # mrcfile's header statistics warn about NaN pixels
    return path


def plain_name(path: Path) -> str:
    """File name without a .bz2/.gz suffix."""
    return path.name.removesuffix(".bz2").removesuffix(".gz")


def true_images(path: Path) -> tuple[np.ndarray, ...]:
    """The images of ``path`` read with mrcfile/tifffile (independently of e2compress), as
    EMAN2 sees them: TIFF pages with rows flipped, MRC axes in (z, y, x) order from
    mapc/mapr/maps, ``.mrcs`` sections as separate images."""
    if plain_name(path).endswith((".tif", ".tiff")):
        data = tifffile.imread(path)
        pages = data[None] if data.ndim == 2 else data
        return tuple(np.ascontiguousarray(p[::-1]) for p in pages)
    with mrcfile.open(path, permissive=True) as mrc:
        data = np.array(mrc.data)
        axes = (int(mrc.header.mapc), int(mrc.header.mapr), int(mrc.header.maps))
    if axes != (1, 2, 3):
        # numpy axes 0, 1, 2 hold the file's sections, rows, columns = axes maps, mapr, mapc
        held = (axes[2], axes[1], axes[0])
        data = np.ascontiguousarray(data.transpose([held.index(a) for a in (3, 2, 1)]))
    if plain_name(path).endswith(".mrcs"):
        return tuple(data)
    return (data,)
