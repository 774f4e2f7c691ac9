"""The e2compress command line: EMAN2's options, naming rules, exit codes and messages.

Outputs are checked by reading the HDF5 files with h5py and decoding them with EMAN2's
own read formula (spec §2.4), not with the package's reader.
"""

from __future__ import annotations

import bz2
import gzip
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import tifffile

import e2compress
from e2compress import cli, pipeline, runner
from e2compress.quantize import RenderRange, half_step_bound
from helpers import assert_within_half_step, eman_decode, listing, run_cli, temporaries, write_mrc

F32 = np.float32
SUMMARY = re.compile(r"^(\d+) compressed, (\d+) failed, (\d+) skipped$", re.M)


# --------------------------------------------------------------------------- helpers


def rand_image(seed: int, shape: tuple[int, ...] = (40, 48), lo: float = -3.0, hi: float = 7.0):
    rng = np.random.default_rng(seed)
    return (lo + (hi - lo) * rng.random(shape)).astype(F32)


def read_eman(path: Path, index: int = 0) -> tuple[np.ndarray, dict[str, float]]:
    """Image ``index`` decoded independently (:func:`helpers.eman_decode`), and its stored
    mapping and code size by name."""
    values, mapping = eman_decode(path)[index]
    if mapping is None:
        return values, {"bits": 0}
    with h5py.File(path, "r") as f:
        size = f[f"MDF/images/{index}/image"].dtype.itemsize
    bits, rmin, rmax, truncated = mapping
    return values, {
        "bits": bits,
        "rmin": rmin,
        "rmax": rmax,
        "truncated": truncated,
        "dtype_size": size,
    }


def assert_decodes_within_half_step(orig: np.ndarray, path: Path) -> dict[str, float]:
    """Decoded ``path`` (EMAN2's float32 formula) holds ``orig`` by the library's rule."""
    got, m = read_eman(path)
    assert_within_half_step(orig, got, (m["bits"], m["rmin"], m["rmax"], m["truncated"]))
    return m


# --------------------------------------------------------------------------- EMAN2 usage


def test_typical_eman2_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--nooutliers --outpath OUT --threads 2 -v 2 --bits 5 a.mrc b.mrc` (EMAN2's usage)."""
    out_dir = tmp_path / "micrographs_5bit"
    out_dir.mkdir()
    data = {}
    for k, name in enumerate(("a", "b")):
        img = rand_image(k, (64, 64), 0.0, 1000.0)
        img.flat[:5] = -2000.0  # 5 outliers at each end (maxout = max(4096 // 20000, 8))
        img.flat[-5:] = 3000.0
        data[name] = img
        write_mrc(tmp_path / f"{name}.mrc", img)
    before = {n: (tmp_path / f"{n}.mrc").read_bytes() for n in data}
    rc, out, err = run_cli(
        capsys,
        "--nooutliers",
        "--outpath",
        out_dir,
        "--threads",
        "2",
        "-v",
        "2",
        "--bits",
        "5",
        tmp_path / "a.mrc",
        tmp_path / "b.mrc",
    )
    assert rc == 0, err
    assert listing(out_dir) == {"a.hdf", "b.hdf"}
    assert SUMMARY.search(out).groups() == ("2", "0", "0")
    assert len(re.findall(r"^\d+\.\d s ", out, re.M)) == 2  # -v 2: one timing line per file
    for name, img in data.items():
        assert (tmp_path / f"{name}.mrc").read_bytes() == before[name]
        m = assert_decodes_within_half_step(img, out_dir / f"{name}.hdf")
        assert m["bits"] == 5
        assert m["dtype_size"] == 1
        # the outliers are clamped, the bulk of the data is not
        outliers = (img < 0) | (img > 1000)
        assert np.all((img[outliers] < m["rmin"]) | (img[outliers] > m["rmax"]))
        assert 10 <= m["truncated"] <= 10 + 16
        assert m["rmin"] > -100
        assert m["rmax"] < 1100
    assert listing(tmp_path) == {"a.mrc", "b.mrc", "micrographs_5bit"}


def script(name: str) -> Path:
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return candidate
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"console script {name} is not installed")
    return Path(found)


@pytest.mark.parametrize("name", ["e2compress", "e2compress.py"])
def test_console_scripts_run(name: str, tmp_path: Path) -> None:
    """Both scripts work; `e2compress.py` in bin/ must not shadow the package on import."""
    exe = script(name)
    version = subprocess.run(
        [str(exe), "--version"], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert version.returncode == 0, version.stderr
    assert e2compress.__version__ in version.stdout
    img = rand_image(3)
    write_mrc(tmp_path / "a.mrc", img)
    proc = subprocess.run(
        [str(exe), "--nooutliers", "--threads", "2", "-v", "2", "--bits", "5", "a.mrc"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert_decodes_within_half_step(img, tmp_path / "a.hdf")


def test_console_script_user_error_has_no_traceback(tmp_path: Path) -> None:
    exe = script("e2compress.py")
    write_mrc(tmp_path / "a.mrc", rand_image(4))
    proc = subprocess.run(
        [str(exe), "--bits", "17", "a.mrc", "missing.mrc"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "--bits" in proc.stderr
    proc = subprocess.run(
        [str(exe), "--bits", "5", "a.mrc", "missing.mrc"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "missing.mrc" in proc.stderr
    assert (tmp_path / "a.hdf").is_file()


def test_python_dash_m(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "e2compress", "--version"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 0
    assert e2compress.__version__ in proc.stdout


def test_main_runs_twice_in_one_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """main() is a library entry point too: a second call must work like the first."""
    write_mrc(tmp_path / "a.mrc", rand_image(5))
    write_mrc(tmp_path / "b.mrc", rand_image(6))
    rc1, _, err1 = run_cli(capsys, "--bits", "5", tmp_path / "a.mrc")
    rc2, _, err2 = run_cli(capsys, "--bits", "5", tmp_path / "b.mrc")
    assert (rc1, rc2) == (0, 0), (err1, err2)
    assert (tmp_path / "b.hdf").is_file()


# --------------------------------------------------------------------------- naming


def test_mrc_output_beside_input_not_in_cwd(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "cwd").mkdir()
    img = rand_image(7)
    write_mrc(tmp_path / "data" / "a.mrc", img)
    monkeypatch.chdir(tmp_path / "cwd")
    rc, _, err = run_cli(capsys, "--bits", "6", "../data/a.mrc")
    assert rc == 0, err
    assert listing(tmp_path / "data") == {"a.mrc", "a.hdf"}
    assert listing(tmp_path / "cwd") == set()
    m = assert_decodes_within_half_step(img, tmp_path / "data" / "a.hdf")
    assert m["bits"] == 6


def test_hdf_input_replaced_in_place_with_new_bits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = rand_image(8, (33, 40), 0.5, 9.5)
    write_mrc(tmp_path / "x.mrc", img)
    assert run_cli(capsys, "--bits", "10", tmp_path / "x.mrc")[0] == 0
    (tmp_path / "x.mrc").unlink()
    v10, m10 = read_eman(tmp_path / "x.hdf")
    assert m10["bits"] == 10
    assert m10["dtype_size"] == 2
    before = (tmp_path / "x.hdf").read_bytes()
    rc, _, err = run_cli(capsys, "--bits", "5", tmp_path / "x.hdf")
    assert rc == 0, err
    assert listing(tmp_path) == {"x.hdf"}
    assert (tmp_path / "x.hdf").read_bytes() != before
    m5 = assert_decodes_within_half_step(v10.reshape(img.shape), tmp_path / "x.hdf")
    assert m5["bits"] == 5
    assert m5["dtype_size"] == 1
    # and, transitively, within one 10-bit plus one 5-bit half step of the original
    v5, _ = read_eman(tmp_path / "x.hdf")
    bound = half_step_bound(RenderRange(5, m5["rmin"], m5["rmax"])) + half_step_bound(
        RenderRange(10, m10["rmin"], m10["rmax"])
    )
    assert np.abs(v5.reshape(img.shape) - img).max() <= bound


def test_hdf_input_with_outpath_leaves_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = rand_image(9)
    write_mrc(tmp_path / "name.mrc", img)
    assert run_cli(capsys, "--bits", "12", tmp_path / "name.mrc")[0] == 0
    before = (tmp_path / "name.hdf").read_bytes()
    v12, _ = read_eman(tmp_path / "name.hdf")
    (tmp_path / "out").mkdir()
    rc, _, err = run_cli(
        capsys, "--bits", "4", "--outpath", tmp_path / "out", tmp_path / "name.hdf"
    )
    assert rc == 0, err
    assert (tmp_path / "name.hdf").read_bytes() == before
    assert listing(tmp_path / "out") == {"name.hdf"}
    m = assert_decodes_within_half_step(v12.reshape(img.shape), tmp_path / "out" / "name.hdf")
    assert m["bits"] == 4


@pytest.mark.parametrize(("suffix", "packer"), [(".bz2", bz2.compress), (".gz", gzip.compress)])
def test_compressed_mrc_named_without_both_suffixes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str, packer
) -> None:
    img = rand_image(10, (24, 30))
    write_mrc(tmp_path / "plain.mrc", img)
    packed = tmp_path / f"x.mrc{suffix}"
    packed.write_bytes(packer((tmp_path / "plain.mrc").read_bytes()))
    (tmp_path / "plain.mrc").unlink()
    rc, _, err = run_cli(capsys, "--bits", "8", packed)
    assert rc == 0, err
    assert listing(tmp_path) == {f"x.mrc{suffix}", "x.hdf"}
    assert_decodes_within_half_step(img, tmp_path / "x.hdf")


def test_inputs_with_the_same_output_fail_and_the_others_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two a.mrc from different directories into one --outpath: both are reported as failed
    (one line each, naming both), neither is written, the other input is compressed, exit 1
    (it was exit 2 with nothing done)."""
    for d in ("d1", "d2", "O"):
        (tmp_path / d).mkdir()
    write_mrc(tmp_path / "d1" / "a.mrc", rand_image(11))
    write_mrc(tmp_path / "d2" / "a.mrc", rand_image(12))
    c = rand_image(13)
    write_mrc(tmp_path / "d1" / "c.mrc", c)
    a1, a2 = tmp_path / "d1" / "a.mrc", tmp_path / "d2" / "a.mrc"
    rc, out, err = run_cli(capsys, "--outpath", tmp_path / "O", tmp_path / "d1" / "c.mrc", a1, a2)
    assert rc == 1
    assert listing(tmp_path / "O") == {"c.hdf"}
    assert_decodes_within_half_step(c, tmp_path / "O" / "c.hdf")
    assert listing(tmp_path / "d1") == {"a.mrc", "c.mrc"}
    lines = err.splitlines()
    assert len(lines) == 2, err
    for line, mine, other in ((lines[0], a1, a2), (lines[1], a2, a1)):
        assert line.startswith(f"ERROR: {mine}: {other} ")
        assert str(tmp_path / "O" / "a.hdf") in line
    assert SUMMARY.search(out).groups() == ("1", "2", "0")
    assert "a.mrc" not in out  # each failure is reported once, on stderr


@pytest.mark.parametrize(
    ("names", "packed"),
    [(("x.map", "x.map.bz2"), "x.map.bz2"), (("a.mrc", "a.tif"), None), (("s.mrc", "s.hdf"), None)],
)
def test_name_collision_fails_those_inputs_only(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    names: tuple[str, str],
    packed: str | None,
) -> None:
    """x.map and x.map.bz2 (and a.mrc with a.tif, s.mrc with s.hdf) both name x.hdf: each
    is one failure line naming both, the good file between them is compressed, exit 1."""
    first, second = (tmp_path / n for n in names)
    write_mrc(first, rand_image(14))
    if packed is not None:
        second.write_bytes(bz2.compress(first.read_bytes()))
    elif second.suffix == ".tif":
        tifffile.imwrite(second, np.zeros((16, 16), np.uint8))
    else:
        write_mrc(tmp_path / "stage.mrc", rand_image(15))
        e2compress.compress_file(tmp_path / "stage.mrc", second, bits=8)
        (tmp_path / "stage.mrc").unlink()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    good = rand_image(16)
    write_mrc(tmp_path / "good.mrc", good)
    rc, out, err = run_cli(capsys, "--bits", "5", first, tmp_path / "good.mrc", second)
    assert rc == 1
    assert listing(tmp_path) == {*before, "good.mrc", "good.hdf"}
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name in before} == before
    assert_decodes_within_half_step(good, tmp_path / "good.hdf")
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith(f"ERROR: {first}: {second} would also be written to ")
    assert lines[1].startswith(f"ERROR: {second}: {first} would also be written to ")
    assert SUMMARY.search(out).groups() == ("1", "2", "0")


def test_same_file_twice_is_compressed_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file given twice (also as ./a.mrc) is compressed once; each repeat is one WARNING
    line and counts as skipped; exit 0. An .hdf given twice is not requantised twice."""
    img = rand_image(17)
    write_mrc(tmp_path / "a.mrc", img)
    monkeypatch.chdir(tmp_path)
    calls: list[str] = []
    real = runner.compress_file

    def counting(src: str, *args: object, **kwargs: object) -> object:
        calls.append(str(src))
        return real(src, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "compress_file", counting)
    rc, out, err = run_cli(capsys, "--bits", "5", "a.mrc", tmp_path / "a.mrc", "./a.mrc")
    assert rc == 0, err
    assert calls == ["a.mrc"]
    assert_decodes_within_half_step(img, tmp_path / "a.hdf")
    assert err.splitlines() == [
        f"WARNING: {tmp_path / 'a.mrc'}: given more than once; compressed once",
        "WARNING: ./a.mrc: given more than once; compressed once",
    ]
    assert SUMMARY.search(out).groups() == ("1", "0", "2")


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("form", [["--range", "-5,5"], ["--range=-5,5"]])
def test_range_option_forms(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], form: list[str]
) -> None:
    img = rand_image(15, (40, 40), -10.0, 10.0)
    write_mrc(tmp_path / "a.mrc", img)
    rc, _, err = run_cli(capsys, "--bits", "8", *form, tmp_path / "a.mrc")
    assert rc == 0, err
    m = assert_decodes_within_half_step(img, tmp_path / "a.hdf")
    step = (m["rmax"] - m["rmin"]) / 255
    # clamped data span [-5, 5]; 0 is put on a code, so the range may grow by < 1 step
    assert -5 - step <= m["rmin"] <= -5 + 1e-6
    assert 5 - 1e-6 <= m["rmax"] <= 5 + step
    outside = int(np.count_nonzero((img < -5) | (img > 5)))
    assert outside > 100
    assert outside - 20 <= m["truncated"] <= outside
    got, _ = read_eman(tmp_path / "a.hdf")
    assert np.all(np.abs(got) <= 5 + step)


def test_range_forms_give_identical_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = rand_image(16, (40, 40), -10.0, 10.0)
    write_mrc(tmp_path / "a.mrc", img)
    results = []
    for k, form in enumerate((["--range", "-5,5"], ["--range=-5,5"])):
        d = tmp_path / f"o{k}"
        d.mkdir()
        assert run_cli(capsys, "--bits", "8", "--outpath", d, *form, tmp_path / "a.mrc")[0] == 0
        results.append(read_eman(d / "a.hdf"))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]


def test_sigrange_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(17)
    img = (100.0 + 5.0 * rng.standard_normal((64, 64))).astype(F32)
    write_mrc(tmp_path / "a.mrc", img)
    rc, _, err = run_cli(capsys, "--bits", "8", "--sigrange", "3,3", tmp_path / "a.mrc")
    assert rc == 0, err
    mean = float(np.mean(img, dtype=np.float64))
    sigma = float(np.std(img, dtype=np.float64, ddof=1))
    m = assert_decodes_within_half_step(img, tmp_path / "a.hdf")
    # positive non-integer data: the limits are kept as given (spec §2.2 rule 4)
    assert m["rmin"] == pytest.approx(mean - 3 * sigma, rel=1e-5)
    assert m["rmax"] == pytest.approx(mean + 3 * sigma, rel=1e-5)
    assert m["truncated"] == int(np.count_nonzero(np.abs(img - mean) > 3 * sigma))


@pytest.mark.parametrize(
    "opts",
    [
        ["--nooutliers", "--range", "0,1"],
        ["--range", "0,1", "--sigrange", "2,2"],
        ["--nooutliers", "--sigrange", "2,2"],
        ["--nooutliers", "--range=0,1", "--sigrange=2,2"],
    ],
)
def test_more_than_one_range_option_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], opts: list[str]
) -> None:
    write_mrc(tmp_path / "a.mrc", rand_image(18))
    rc, _, err = run_cli(capsys, *opts, tmp_path / "a.mrc")
    assert rc == 2
    assert "only one of" in err
    for name in ("--nooutliers", "--range", "--sigrange"):
        assert name in err
    assert listing(tmp_path) == {"a.mrc"}


@pytest.mark.parametrize(
    ("opts", "needle"),
    [
        (["--bits", "1"], "--bits"),
        (["--bits", "-1"], "--bits"),
        (["--bits", "five"], "--bits"),
        (["--compresslevel", "10"], "--compresslevel"),
        (["--compresslevel", "-1"], "--compresslevel"),
        (["--range", "5,1"], "--range"),
        (["--range", "3,3"], "--range"),
        (["--range", "1,2,3"], "--range"),
        (["--range", "nan,1"], "--range"),
        (["--sigrange", "0,3"], "--sigrange"),
        (["--sigrange", "3,-1"], "--sigrange"),
        (["--bits", "5.5"], "--bits"),
        (["--bits", "17"], "--bits"),
        (["--threads", "0"], "--threads"),
        (["--threads", "-2"], "--threads"),
        (["--threads", "1.5"], "--threads"),
        (["--outpath", ""], "--outpath"),
    ],
)
def test_bad_option_values_exit_2_before_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], opts: list[str], needle: str
) -> None:
    write_mrc(tmp_path / "a.mrc", rand_image(19))
    rc, _out, err = run_cli(capsys, *opts, tmp_path / "a.mrc")
    assert rc == 2
    assert needle in err
    assert listing(tmp_path) == {"a.mrc"}


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"threads": 0}, "threads"),
        ({"threads": -1}, "threads"),
        ({"threads": 2.0}, "threads"),
        ({"threads": True}, "threads"),
        ({"bits": 5.5}, "bits"),
        ({"bits": 17}, "bits"),
        ({"bits": 1}, "bits"),
        ({"bits": True}, "bits"),
    ],
)
def test_library_rejects_the_same_values(
    tmp_path: Path, kwargs: dict[str, object], needle: str
) -> None:
    """compress_file refuses what the CLI refuses, with an E2CompressError naming the
    parameter, and writes nothing."""
    write_mrc(tmp_path / "a.mrc", rand_image(19))
    with pytest.raises(e2compress.E2CompressError, match=needle):
        e2compress.compress_file(tmp_path / "a.mrc", **kwargs)  # type: ignore[arg-type]
    assert listing(tmp_path) == {"a.mrc"}


def test_outpath_must_be_existing_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_mrc(tmp_path / "a.mrc", rand_image(20))
    (tmp_path / "afile").write_text("x")
    for outpath in (tmp_path / "missing", tmp_path / "afile"):
        rc, _, err = run_cli(capsys, "--outpath", outpath, tmp_path / "a.mrc")
        assert rc == 2
        assert "--outpath" in err
        assert outpath.name in err
    assert listing(tmp_path) == {"a.mrc", "afile"}
    assert (tmp_path / "afile").read_text() == "x"


def test_no_input_files_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(capsys, "--bits", "5")
    assert rc == 2
    assert "usage" in err.lower()


@pytest.mark.parametrize(
    ("opts", "level"),
    [
        (["-v"], 1),
        (["-vv"], 2),
        (["-v", "2"], 2),
        (["--verbose", "2"], 2),
        (["--verbose=2"], 2),
        (["-v2"], 2),
    ],
)
def test_verbosity_forms(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], opts: list[str], level: int
) -> None:
    write_mrc(tmp_path / "a.mrc", rand_image(21))
    rc, out, err = run_cli(capsys, *opts, "--bits", "5", tmp_path / "a.mrc")
    assert rc == 0, err
    assert "Processing" in out
    assert "a.mrc" in out
    timing = re.findall(r"^\d+\.\d s .*MB", out, re.M)
    assert len(timing) == (1 if level >= 2 else 0)
    assert SUMMARY.search(out).groups() == ("1", "0", "0")
    assert (tmp_path / "a.hdf").is_file()


def test_v_before_a_file_name_is_level_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_mrc(tmp_path / "a.mrc", rand_image(22))
    rc, out, err = run_cli(capsys, "--bits", "5", "-v", tmp_path / "a.mrc")
    assert rc == 0, err
    assert (tmp_path / "a.hdf").is_file()
    assert "Processing" in out
    assert not re.search(r"^\d+\.\d s ", out, re.M)


def test_quiet_single_file_prints_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_mrc(tmp_path / "a.mrc", rand_image(23))
    rc, out, err = run_cli(capsys, "--bits", "5", tmp_path / "a.mrc")
    assert (rc, out, err) == (0, "", "")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    rc, out, _ = run_cli(capsys, "--version")
    assert rc == 0
    assert out.strip() == f"e2compress {e2compress.__version__}"
    assert e2compress.__version__ == version("e2compress")


def test_help_shows_typical_usage(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(capsys, "--help")
    assert rc == 0
    assert re.search(r"--nooutliers --outpath \S+ --threads \d+ -v 2 --bits 5 \*\.mrc", out), out
    for opt in (
        "--bits",
        "--compresslevel",
        "--nooutliers",
        "--range",
        "--sigrange",
        "--outpath",
        "--threads",
        "--verbose",
        "--skip-existing",
    ):
        assert opt in out


def test_help_warns_about_recompressing_quantised_hdf(capsys: pytest.CaptureFixture[str]) -> None:
    """--help says that requantising adds rounding to rounding and more bits gain nothing."""
    rc, out, _ = run_cli(capsys, "--help")
    assert rc == 0
    text = " ".join(out.split())
    assert "Recompressing an .hdf that is already quantised rounds values that were rounded" in text
    assert "the new rounding error adds to the old one" in text
    assert "more bits gain nothing" in text


def test_help_documents_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(capsys, "--help")
    assert rc == 0
    text = " ".join(out.split())
    assert re.search(
        r"exit status: 0 every file was compressed \(the output is complete and "
        r"decodes to within half a quantisation step\) or skipped",
        text,
    ), text
    assert re.search(r" 1 any file failed", text)
    assert re.search(r" 2 bad options", text)
    assert re.search(r" 129/130/143 stopped by SIGHUP/SIGINT/SIGTERM", text)


# --------------------------------------------------------------------------- failures


def test_missing_input_among_good_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    imgs = {n: rand_image(30 + k) for k, n in enumerate(("a", "c"))}
    for n, img in imgs.items():
        write_mrc(tmp_path / f"{n}.mrc", img)
    rc, out, err = run_cli(
        capsys, "--bits", "5", tmp_path / "a.mrc", tmp_path / "b.mrc", tmp_path / "c.mrc"
    )
    assert rc == 1
    for n, img in imgs.items():
        assert_decodes_within_half_step(img, tmp_path / f"{n}.hdf")
    assert listing(tmp_path) == {"a.mrc", "a.hdf", "c.mrc", "c.hdf"}
    assert SUMMARY.search(out).groups() == ("2", "1", "0")
    lines = [ln for ln in err.splitlines() if "b.mrc" in ln]
    assert len(lines) == 1, err  # one line per failure, naming the file
    assert "a.mrc" not in err
    assert "c.mrc" not in err


def test_summary_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for k, n in enumerate("abc"):
        write_mrc(tmp_path / f"{n}.mrc", rand_image(40 + k))
    (tmp_path / "bad.mrc").write_bytes(b"\0" * 100)
    rc, out, _ = run_cli(capsys, "--bits", "5", *(tmp_path / f"{n}.mrc" for n in "abc"))
    assert rc == 0
    assert SUMMARY.search(out).groups() == ("3", "0", "0")
    rc, out, _ = run_cli(
        capsys, "--bits", "5", "--skip-existing", tmp_path / "a.mrc", tmp_path / "bad.mrc"
    )
    assert rc == 1
    assert SUMMARY.search(out).groups() == ("0", "1", "1")


def test_skip_existing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    imgs = {n: rand_image(50 + k) for k, n in enumerate("abc")}
    for n, img in imgs.items():
        write_mrc(tmp_path / f"{n}.mrc", img)
    files = [tmp_path / f"{n}.mrc" for n in "abc"]
    assert run_cli(capsys, "--bits", "5", *files[:2])[0] == 0
    stat_before = {n: os.stat(tmp_path / f"{n}.hdf") for n in "ab"}
    bytes_before = {n: (tmp_path / f"{n}.hdf").read_bytes() for n in "ab"}
    # b.hdf is torn (half an HDF5 file, not a valid EMAN2 file): it must be redone, not
    # skipped (a file that is not HDF5 at all is never replaced: test_output_integrity)
    torn = (tmp_path / "b.hdf").read_bytes()
    (tmp_path / "b.hdf").write_bytes(torn[: len(torn) // 2])
    rc, out, err = run_cli(capsys, "--bits", "5", "--skip-existing", *files)
    assert rc == 0, err
    assert SUMMARY.search(out).groups() == ("2", "0", "1")
    after = os.stat(tmp_path / "a.hdf")
    assert (after.st_ino, after.st_mtime_ns) == (
        stat_before["a"].st_ino,
        stat_before["a"].st_mtime_ns,
    )
    assert (tmp_path / "a.hdf").read_bytes() == bytes_before["a"]
    for n in "bc":
        assert_decodes_within_half_step(imgs[n], tmp_path / f"{n}.hdf")
    # a second identical run skips everything
    rc, out, _ = run_cli(capsys, "--bits", "5", "--skip-existing", *files)
    assert rc == 0
    assert SUMMARY.search(out).groups() == ("0", "0", "3")


def test_bits_zero_is_lossless(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = rand_image(60)
    write_mrc(tmp_path / "a.mrc", img)
    rc, _, err = run_cli(capsys, "--bits", "0", tmp_path / "a.mrc")
    assert rc == 0, err
    got, m = read_eman(tmp_path / "a.hdf")
    assert m["bits"] == 0
    np.testing.assert_array_equal(got, img)
    assert temporaries(tmp_path) == []


def test_each_failure_is_reported_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A failed file is named on one line in all the output (it was on stderr as ERROR:
    and again on stdout as failed:)."""
    write_mrc(tmp_path / "good.mrc", rand_image(61))
    (tmp_path / "bad.mrc").write_bytes(b"\0" * 100)
    rc, out, err = run_cli(
        capsys, "--bits", "5", tmp_path / "good.mrc", tmp_path / "bad.mrc", tmp_path / "gone.mrc"
    )
    assert rc == 1
    lines = (out + err).splitlines()
    for name in ("bad.mrc", "gone.mrc"):
        named = [ln for ln in lines if name in ln]
        assert len(named) == 1, lines
        assert named[0] in err.splitlines()
        assert named[0].startswith(f"ERROR: {tmp_path / name}: ")
    assert out.splitlines() == ["1 compressed, 2 failed, 0 skipped"]


def test_report_warnings_printed_once_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each line of CompressReport.warnings is printed once, on stderr, as WARNING:; the
    file still counts as compressed."""
    img = rand_image(62)
    write_mrc(tmp_path / "a.mrc", img)
    real = runner.compress_file

    def warning(src: str, *args: object, **kwargs: object) -> pipeline.CompressReport:
        report = real(src, *args, **kwargs)  # type: ignore[arg-type]
        report.warnings = [f"{src}: first thing", f"{src}: second thing"]
        return report

    monkeypatch.setattr(runner, "compress_file", warning)
    rc, out, err = run_cli(capsys, "--bits", "5", tmp_path / "a.mrc")
    assert rc == 0
    assert err.splitlines() == [
        f"WARNING: {tmp_path / 'a.mrc'}: first thing",
        f"WARNING: {tmp_path / 'a.mrc'}: second thing",
    ]
    assert out == ""
    assert_decodes_within_half_step(img, tmp_path / "a.hdf")


class LineStream(io.TextIOBase):
    """Records each write and flush; writes that overlap in time (from two threads) are
    counted, and each write lingers so that an unlocked writer would overlap."""

    def __init__(self, name: str, events: list[tuple[str, str]], busy: threading.Lock) -> None:
        self.name = name
        self.events = events
        self.busy = busy
        self.overlaps = 0

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not self.busy.acquire(blocking=False):
            self.overlaps += 1
            self.events.append((self.name, text))
            return len(text)
        try:
            self.events.append((self.name, text))
            time.sleep(0.001)
        finally:
            self.busy.release()
        return len(text)

    def flush(self) -> None:
        self.events.append((self.name, ""))


def test_concurrent_files_write_whole_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two files at once with -v 2 and failures: every write is one whole line, flushed
    before the next, never overlapping another write (stdout and stderr share one lock)."""
    names = []
    for k in range(4):
        write_mrc(tmp_path / f"g{k}.mrc", rand_image(70 + k, (64, 64)))
        (tmp_path / f"b{k}.mrc").write_bytes(b"\0" * 100)
        names += [tmp_path / f"g{k}.mrc", tmp_path / f"b{k}.mrc"]
    events: list[tuple[str, str]] = []
    busy = threading.Lock()
    out, err = LineStream("out", events, busy), LineStream("err", events, busy)
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    rc = cli.main(["--settle", "0", "--threads", "2", "-v", "2", "--bits", "5", *map(str, names)])
    monkeypatch.undo()
    assert rc == 1
    assert out.overlaps == err.overlaps == 0
    writes = [(k, (name, text)) for k, (name, text) in enumerate(events) if text]
    for k, (name, text) in writes:
        assert text.endswith("\n")
        assert text.count("\n") == 1, text
        assert events[k + 1] == (name, ""), "a line was not flushed at once"
    lines = [(name, text.rstrip("\n")) for _, (name, text) in writes]
    for k in range(4):
        good, bad = tmp_path / f"g{k}.mrc", tmp_path / f"b{k}.mrc"
        assert ("out", f"Processing {good} -> {tmp_path / f'g{k}.hdf'}") in lines
        timing = re.compile(rf"\d+\.\d s  {re.escape(str(good))}: ")
        assert len([t for n, t in lines if n == "out" and timing.match(t)]) == 1
        assert sum(1 for n, t in lines if n == "err" and t.startswith(f"ERROR: {bad}: ")) == 1
    assert lines[-1] == ("out", "4 compressed, 4 failed, 0 skipped")
    assert lines[-2][0] == "out"
    assert lines[-2][1].startswith("total: ")  # -v: bytes, ratio, throughput, failures
    assert lines[-2][1].endswith(", 4 failed")
    assert len(lines) == 8 + 4 + 4 + 2  # Processing x8, timing x4, ERROR x4, totals, summary


# --------------------------------------------------------------------------- stopping


def test_ppid_already_gone_stops_in_one_line(tmp_path: Path) -> None:
    """--ppid of a process that has already exited: exit 143, one stderr line, no traceback,
    nothing written (it was a traceback from the signal handler, exit 1)."""
    exe = script("e2compress")
    write_mrc(tmp_path / "a.mrc", rand_image(80))
    dead = subprocess.Popen(["true"])
    dead.wait()
    proc = subprocess.run(
        [str(exe), "--ppid", str(dead.pid), "--bits", "5", "a.mrc"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 143, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("e2compress: ")
    assert f"--ppid process {dead.pid}" in lines[0]
    assert proc.stdout == ""
    assert listing(tmp_path) == {"a.mrc"}


def test_ppid_alive_runs_normally(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--ppid of a live process (the parent of a subprocess, or this very process) is no
    reason to stop."""
    img = rand_image(81)
    write_mrc(tmp_path / "a.mrc", img)
    proc = subprocess.run(
        [str(script("e2compress")), "--ppid", str(os.getpid()), "--bits", "5", "a.mrc"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    assert_decodes_within_half_step(img, tmp_path / "a.hdf")
    (tmp_path / "a.hdf").unlink()
    assert run_cli(capsys, "--ppid", os.getpid(), "--bits", "5", tmp_path / "a.mrc")[0] == 0
    assert_decodes_within_half_step(img, tmp_path / "a.hdf")


def freeze_mid_write(proc: subprocess.Popen[str], temp: Path) -> None:
    """Wait for ``temp`` to appear, then SIGSTOP ``proc`` and check that ``temp`` is still
    there: the process is stopped in the middle of writing it (no timing involved)."""
    guard = time.monotonic() + 60  # hang guard only
    while not temp.exists():
        assert proc.poll() is None, f"exited ({proc.returncode}) before {temp.name} was seen"
        if time.monotonic() > guard:
            pytest.fail(f"hang: no {temp.name} after 60 s")
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGSTOP)
    os.waitpid(proc.pid, os.WUNTRACED)  # returns once it is stopped
    assert temp.exists(), "the write finished before the stop: use a larger input"


def test_sighup_mid_write_cleans_up_and_exits_129(tmp_path: Path) -> None:
    """SIGHUP (a dropped SSH session) mid-write is handled like SIGTERM: no hidden
    temporary left, no output, input unchanged, exit 129, one line naming the file (it
    killed the process and left .big.hdf.e2compress.tmp)."""
    exe = script("e2compress")
    frames = np.random.default_rng(82).standard_normal((24, 1024, 1024), dtype=F32)
    src = write_mrc(tmp_path / "big.mrc", frames)
    del frames
    before = src.read_bytes()
    target = tmp_path / "big.hdf"
    temp = tmp_path / f".big.hdf{pipeline.TMP_SUFFIX}"
    proc = subprocess.Popen(
        [str(exe), "--threads", "1", "--verify", "--bits", "5", "big.mrc"],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        freeze_mid_write(proc, temp)
        os.kill(proc.pid, signal.SIGCONT)
        os.kill(proc.pid, signal.SIGHUP)  # sent to a running process, as a hang-up is
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)
    assert proc.returncode == 129, err
    assert "Traceback" not in err
    assert temporaries(tmp_path) == []
    assert src.read_bytes() == before
    assert out == ""
    if target.exists():  # stopped after its last block: the output is complete and right
        assert listing(tmp_path) == {"big.mrc", "big.hdf"}
        assert err.splitlines() == [
            "e2compress: interrupted by SIGHUP: 1 compressed, 0 failed, 0 skipped, 0 not written"
        ]
    else:
        assert listing(tmp_path) == {"big.mrc"}
        assert err.splitlines() == [
            "ERROR: big.mrc: interrupted by SIGHUP; output not written, input unchanged"
        ]


def test_signal_taken_by_a_worker_thread_stops_the_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel may hand a process signal to any thread, but Python runs the handler in
    the main thread only: the CLI's main thread must still act on it while a file is
    being written (it waited in Future.result() and noticed only after the file)."""
    img = rand_image(83, (4, 64, 64))
    write_mrc(tmp_path / "a.mrc", img)
    real = pipeline.verify_output
    seen: list[bool] = []

    def signalled(*args: Any, **kwargs: Any) -> None:  # runs in a worker thread, mid-write
        token = kwargs["cancel"] if "cancel" in kwargs else args[5]
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
        guard = time.monotonic() + 60  # hang guard only
        while not token.is_set() and time.monotonic() < guard:
            time.sleep(0.01)
        seen.append(token.is_set())
        real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "verify_output", signalled)
    rc, out, err = run_cli(capsys, "--verify", "--threads", "2", "--bits", "5", tmp_path / "a.mrc")
    assert seen == [True], "the main thread did not run the handler while the file was written"
    assert rc == 143, err
    assert out == ""
    assert err.splitlines() == [
        f"ERROR: {tmp_path / 'a.mrc'}: interrupted by SIGTERM; output not written, input unchanged"
    ]
    assert listing(tmp_path) == {"a.mrc"}


def test_scripts_in_bin_import_the_package_not_the_console_script(tmp_path: Path) -> None:
    """Any program started from the venv's bin/ (dask worker, pytest) has bin/ first on
    sys.path, beside the console script e2compress.py: ``import e2compress`` must still
    give the package (with its submodules), in a fresh process."""
    script("e2compress.py")
    bindir = Path(sys.executable).parent
    if not (bindir / "e2compress.py").exists():
        pytest.skip("the console script is not in this interpreter's bin/")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import e2compress, e2compress.runner; "
        "print(e2compress.__version__, hasattr(e2compress, 'compress_file'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(bindir)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [e2compress.__version__, "True"]
