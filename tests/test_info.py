"""``e2compress info`` against the file read with plain h5py; the subcommand dispatch."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import mrcfile
import numpy as np
import pytest
import tifffile

import e2compress
from helpers import DATA, run_cli, write_mrc


def _stack(tmp_path: Path) -> Path:
    data = np.random.default_rng(2).normal(5, 1, (3, 40, 70)).astype(np.float32)
    path = write_mrc(tmp_path / "s.mrcs", data)
    with mrcfile.open(path, "r+") as m:
        m.voxel_size = 1.5
    return path


@pytest.mark.parametrize("bits", [0, 6, 12])
def test_info_json_matches_the_file(
    bits: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hdf = tmp_path / "s.hdf"
    e2compress.compress_file(_stack(tmp_path), hdf, bits=bits, value_range=(3.0, 7.0))
    rc, out, err = run_cli(capsys, "info", "--json", hdf)
    assert (rc, err) == (0, "")
    (line,) = out.splitlines()
    info = json.loads(line)
    assert info["file"] == str(hdf)
    assert info["axis_order"] == "x,y,z"
    assert info["format"] == "eman2-hdf"
    assert info["bytes"] == os.path.getsize(hdf)
    assert info["ratio"] == pytest.approx(3 * 40 * 70 * 4 / os.path.getsize(hdf))
    with h5py.File(hdf) as f:
        for k, im in enumerate(info["images"]):
            group = f[f"MDF/images/{k}"]
            ds = group["image"]
            assert im["index"] == k
            assert im["shape"] == [70, 40]  # x first, as the text says "70 x 40"
            assert im["dtype"] == str(ds.dtype)
            assert im["chunks"] == list(ds.chunks)[::-1]
            assert im["stored_bytes"] == ds.id.get_storage_size()
            assert im["ratio"] == pytest.approx(40 * 70 * 4 / ds.id.get_storage_size())
            assert im["apix"] == [1.5, 1.5, 1.5]
            plist = ds.id.get_create_plist()
            codes = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
            names = {
                h5py.h5z.FILTER_SHUFFLE: "shuffle",
                h5py.h5z.FILTER_DEFLATE: "deflate(1)",
                h5py.h5z.FILTER_FLETCHER32: "fletcher32",
            }
            assert im["filters"] == [names[c] for c in codes]
            if bits == 0:
                assert (im["bits"], im["rmin"], im["step"], im["truncated"]) == (
                    0,
                    None,
                    None,
                    None,
                )
                continue
            rmin = float(group.attrs["EMAN.stored_rendermin"][0])
            rmax = float(group.attrs["EMAN.stored_rendermax"][0])
            assert im["bits"] == int(group.attrs["EMAN.stored_renderbits"][0]) == bits
            assert (im["rmin"], im["rmax"]) == (rmin, rmax)
            assert im["step"] == pytest.approx((rmax - rmin) / (2**bits - 1))
            assert im["truncated"] == int(group.attrs["EMAN.stored_truncated"][0])
    assert sum(im["truncated"] or 0 for im in info["images"]) > 0 or bits == 0


def test_info_text_and_other_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hdf = tmp_path / "s.hdf"
    e2compress.compress_file(_stack(tmp_path), hdf, bits=8)
    tif = DATA / "13pf_MT.tif"
    rc, out, err = run_cli(capsys, "info", hdf, tmp_path / "missing.hdf", tif)
    assert rc == 1
    assert err == f"ERROR: {tmp_path / 'missing.hdf'}: no such file\n"
    lines = out.splitlines()
    assert lines[0].startswith(f"{hdf}: eman2-hdf, 3 images, {os.path.getsize(hdf)} bytes")
    assert lines[1].startswith("  [0] 70 x 40 uint8  bits 8  range ")
    assert "filters deflate(1)+fletcher32  chunks 70x40" in lines[1]
    assert lines[1].endswith("apix 1.5 x 1.5 x 1.5 A")
    assert lines[4] == f"{tif}: tiff, 36 images, 703618 bytes, 3.96x smaller than float32"
    assert lines[5].startswith("  [0] 94 x 206 uint8  19364 bytes (4.00x)  apix ")


def test_info_says_larger_when_the_file_is_larger_than_float32(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tiny image: the HDF5 overhead makes the file larger than its float32 pixels;
    info says "larger", never "0.28x smaller"."""
    src = write_mrc(tmp_path / "t.mrc", np.arange(16, dtype=np.float32).reshape(4, 4))
    e2compress.compress_file(src, tmp_path / "t.hdf", bits=0)
    rc, out, _ = run_cli(capsys, "info", tmp_path / "t.hdf")
    assert rc == 0
    size = os.path.getsize(tmp_path / "t.hdf")
    assert size > 64
    assert f", {size / 64:.2f}x larger than float32;" in out.splitlines()[0]
    assert "smaller" not in out


def test_info_of_a_damaged_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.hdf"
    with h5py.File(bad, "w") as f:
        f.create_group("other")
    rc, out, err = run_cli(capsys, "info", bad)
    assert (rc, out) == (1, "")
    assert err == f"ERROR: {bad}: HDF5 file has no EMAN2 image data (no /MDF/images group)\n"


# --------------------------------------------------------------------------- dispatch


def test_a_file_named_like_a_verb_is_compressed_as_dot_slash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with open(tmp_path / "info", "wb") as fh:  # a TIFF (found by its signature) named info
        tifffile.imwrite(fh, np.ones((8, 8), dtype=np.uint8))
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_cli(capsys, "info")  # the subcommand, with no file: a usage error
    assert rc == 2
    assert "the following arguments are required: FILE" in err
    rc, _, err = run_cli(capsys, "--bits", "8", "./info")
    assert (rc, err) == (0, "")
    assert e2compress.read_images(tmp_path / "info.hdf")[0].tolist() == np.ones((8, 8)).tolist()
    os.remove(tmp_path / "info.hdf")
    rc, _, err = run_cli(capsys, "--bits", "8", "--", "info")
    assert (rc, err) == (0, "")
    assert (tmp_path / "info.hdf").exists()


def test_only_a_first_argument_selects_a_subcommand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_mrc(tmp_path / "a.mrc", np.ones((8, 8), dtype=np.float32))
    rc, out, err = run_cli(capsys, "-v", "2", "--bits", "6", src)
    assert (rc, err) == (0, "")
    assert "a.mrc" in out
    rc, _, err = run_cli(capsys, "--bits", "6", "compare")  # a file named compare
    assert rc == 1
    assert "compare: no such file" in err


def test_help_of_each_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    for verb in ("info", "compare", "export", "check"):
        rc, out, _ = run_cli(capsys, verb, "--help")
        assert rc == 0
        assert out.startswith(f"usage: e2compress {verb}")
