"""Bad inputs: exit 1, one line naming the file, nothing written, input untouched, and
the good files of the same run still compressed."""

from __future__ import annotations

import bz2
import gzip
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from e2compress import E2CompressError, compress_file, output_path
from e2compress.quantize import RenderRange
from helpers import DATA, assert_within_half_step, run_cli, temporaries, write_mrc

F32 = np.float32
TMP_SUFFIX = ".e2compress.tmp"


def good_image(seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((24, 32)) * 10 - 2).astype(F32)


def eman_decode(path: Path, index: int = 0) -> tuple[np.ndarray, int, float, float]:
    """EMAN2's read formula (spec §2.4) with h5py: values, bits, rmin, rmax."""
    with h5py.File(path, "r") as f:
        group = f[f"MDF/images/{index}"]
        codes = group["image"][...]
        bits = int(np.ravel(group.attrs.get("EMAN.stored_renderbits", [0]))[0])
        if bits <= 0:
            return codes.astype(F32), 0, 0.0, 0.0
        rmin = F32(np.ravel(group.attrs["EMAN.stored_rendermin"])[0])
        rmax = F32(np.ravel(group.attrs["EMAN.stored_rendermax"])[0])
    values = (codes.astype(F32) / F32(2**bits - 1)) * (rmax - rmin) + rmin
    return values, bits, float(rmin), float(rmax)


def assert_good_output(path: Path, orig: np.ndarray, bits: int = 5) -> None:
    got, stored_bits, rmin, rmax = eman_decode(path)
    assert stored_bits == bits
    assert_within_half_step(orig, got, RenderRange(bits, rmin, rmax))


def snapshot(path: Path) -> object:
    if path.is_dir():
        return sorted(p.name for p in path.iterdir())
    if path.exists():
        return path.read_bytes()
    return None


# --------------------------------------------------------------------------- bad inputs


def _valid_mrc(tmp: Path, name: str) -> Path:
    return write_mrc(tmp / name, good_image(1))


def _patched(offset: int, value: int, name: str = "x.mrc") -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        path = _valid_mrc(tmp, name)
        with open(path, "r+b") as fh:
            fh.seek(offset)
            fh.write(struct.pack("<i", value))
        return path

    return build


def _nonexistent(tmp: Path) -> Path:
    return tmp / "nothere.mrc"


def _directory(tmp: Path) -> Path:
    d = tmp / "adir.mrc"
    d.mkdir()
    (d / "inner.txt").write_text("keep")
    return d


def _empty(tmp: Path) -> Path:
    p = tmp / "empty.mrc"
    p.write_bytes(b"")
    return p


def _random_mrc(tmp: Path) -> Path:
    p = tmp / "x.mrc"
    p.write_bytes(np.random.default_rng(7).bytes(5000))
    return p


def _truncated_real(tmp: Path) -> Path:
    src = DATA / "EMD-3197.map"
    p = tmp / "EMD-3197.map"
    shutil.copyfile(src, p)
    os.truncate(p, src.stat().st_size - 4000)
    return p


def _corrupt_bz2(tmp: Path) -> Path:
    p = tmp / "x.mrc.bz2"
    p.write_bytes(b"BZh9" + np.random.default_rng(8).bytes(2000))
    return p


def _corrupt_gz(tmp: Path) -> Path:
    p = tmp / "x.mrc.gz"
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"
    p.write_bytes(header + np.random.default_rng(9).bytes(2000))
    return p


def _damaged_tail(suffix: str, packer: Callable[[bytes], bytes]) -> Callable[[Path], Path]:
    """A valid compressed MRC whose stream is damaged after the first few kB."""

    def build(tmp: Path) -> Path:
        plain = write_mrc(tmp / "plain.mrc", good_image(14).repeat(8, axis=0))
        packed = bytearray(packer(plain.read_bytes()))
        plain.unlink()
        cut = len(packed) * 2 // 3
        packed[cut : cut + 64] = bytes(b ^ 0xA5 for b in packed[cut : cut + 64])
        p = tmp / f"tail.mrc{suffix}"
        p.write_bytes(bytes(packed))
        return p

    return build


def _truncated_tiff(tmp: Path) -> Path:
    p = tmp / "t.tif"
    tifffile.imwrite(p, np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def _random_tiff(tmp: Path) -> Path:
    p = tmp / "r.tif"
    p.write_bytes(np.random.default_rng(10).bytes(3000))
    return p


def _foreign_hdf(tmp: Path) -> Path:
    p = tmp / "plain.hdf"
    with h5py.File(p, "w") as f:
        f["data"] = np.zeros((16, 16), F32)
    return p


def _random_hdf(tmp: Path) -> Path:
    p = tmp / "junk.hdf"
    p.write_bytes(np.random.default_rng(11).bytes(3000))
    return p


def _unwritten_hdf(images: int, missing: int, compressed: bool) -> Callable[[Path], Path]:
    """An EMAN2 HDF file whose image ``missing`` has a chunk never written (as a writer
    that crashed leaves it; HDF5 reads it back as fill values without an error)."""

    def build(tmp: Path) -> Path:
        p = tmp / f"unwritten{images}.hdf"
        rng = np.random.default_rng(14)
        with h5py.File(p, "w") as f:
            group = f.create_group("MDF/images")
            group.attrs["imageid_max"] = np.array([images - 1], dtype=np.int32)
            for i in range(images):
                g = group.create_group(str(i))
                if compressed:
                    codes = rng.integers(0, 32, (32, 24)).astype(np.uint8)
                    ds = g.create_dataset(
                        "image",
                        shape=codes.shape,
                        dtype=np.uint8,
                        chunks=(8, 24),
                        compression="gzip",
                    )
                    g.attrs["EMAN.stored_renderbits"] = np.array([5], dtype=np.int32)
                    g.attrs["EMAN.stored_rendermin"] = np.array([-1.0], dtype=F32)
                    g.attrs["EMAN.stored_rendermax"] = np.array([1.0], dtype=F32)
                else:
                    codes = rng.random((32, 24)).astype(F32)
                    ds = g.create_dataset("image", shape=codes.shape, dtype=F32, chunks=(8, 24))
                rows = 16 if i == missing else 32  # chunks 2 and 3 of 4 never written
                ds[:rows] = codes[:rows]
        return p

    return build


BAD_INPUTS: dict[str, tuple[Callable[[Path], Path], tuple[str, ...]]] = {
    "nonexistent": (_nonexistent, ("no such file",)),
    "directory": (_directory, ("directory",)),
    "empty": (_empty, ("empty",)),
    "random_bytes_mrc": (_random_mrc, ()),
    "truncated_mrc": (_truncated_real, ("truncated",)),
    "nx_negative": (_patched(0, -5), ("nx=-5",)),
    "nx_zero": (_patched(0, 0), ("nx=0",)),
    "ny_negative": (_patched(4, -1), ("ny=-1",)),
    "nz_zero": (_patched(8, 0), ("nz=0",)),
    "nx_absurd": (_patched(0, 2**30), ()),
    "mode_99": (_patched(12, 99), ("mode 99",)),
    "corrupt_bz2": (_corrupt_bz2, ()),
    "corrupt_gz": (_corrupt_gz, ()),
    "damaged_bz2_tail": (_damaged_tail(".bz2", bz2.compress), ()),
    "damaged_gz_tail": (_damaged_tail(".gz", gzip.compress), ()),
    "truncated_tiff": (_truncated_tiff, ()),
    "random_bytes_tiff": (_random_tiff, ()),
    "foreign_hdf": (_foreign_hdf, ()),
    "random_bytes_hdf": (_random_hdf, ()),
    "hdf_unwritten_chunk": (_unwritten_hdf(1, 0, True), ("image 0", "unwritten chunks")),
    "hdf_stack_unwritten_chunk": (_unwritten_hdf(3, 2, False), ("image 2", "unwritten chunks")),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_cleanly(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build, words = BAD_INPUTS[case]
    bad = build(tmp_path)
    img_a, img_b = good_image(2), good_image(3)
    good_a = write_mrc(tmp_path / "good_a.mrc", img_a)
    good_b = write_mrc(tmp_path / "good_b.mrc", img_b)
    before = snapshot(bad)
    listing_before = sorted(p.name for p in tmp_path.iterdir())
    target = output_path(bad)

    rc, out, err = run_cli(capsys, "--bits", "5", good_a, bad, good_b)

    assert rc == 1
    # the message: one line, naming the file and the cause, no internal-error label
    named = [ln for ln in err.splitlines() if str(bad) in ln]
    assert named, err
    assert named[0].startswith("ERROR: ")
    assert all(ln.split(": ", 1)[1] == named[0].split(": ", 1)[1] for ln in named), named
    assert "unexpected error" not in err, named[0]
    for word in words:
        assert word in named[0]
    assert str(good_a) not in err
    assert str(good_b) not in err
    assert "2 compressed, 1 failed, 0 skipped" in out
    # nothing written for it, nothing left behind, input untouched
    assert snapshot(bad) == before
    if target != bad:
        assert not target.exists()
    assert temporaries(tmp_path) == []
    expected = {*listing_before, "good_a.hdf", "good_b.hdf"}
    assert {p.name for p in tmp_path.iterdir()} == expected
    # the good files of the same run are complete and correct
    assert_good_output(tmp_path / "good_a.hdf", img_a)
    assert_good_output(tmp_path / "good_b.hdf", img_b)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_library_raises_e2compress_error(case: str, tmp_path: Path) -> None:
    """The library reports each of them as an E2CompressError naming the file."""
    build, _ = BAD_INPUTS[case]
    bad = build(tmp_path)
    before = snapshot(bad)
    with pytest.raises(E2CompressError) as info:
        compress_file(bad, tmp_path / "out.hdf", bits=5, threads=1)
    assert str(bad) in str(info.value)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out.hdf").exists()
    assert temporaries(tmp_path) == []
    assert snapshot(bad) == before


# --------------------------------------------------------------------------- NaN / Inf


def _nan_image() -> np.ndarray:
    img = good_image(4)
    img[1, 2] = np.nan
    img[3, 4] = np.inf
    img[5, 6] = -np.inf
    img[7, 8] = np.nan
    return img


def test_nan_inf_refused_when_quantising(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write_mrc(tmp_path / "nan.mrc", _nan_image())
    img = good_image(5)
    good = write_mrc(tmp_path / "good.mrc", img)
    before = bad.read_bytes()
    rc, out, err = run_cli(capsys, "--bits", "5", bad, good)
    assert rc == 1
    named = [ln for ln in err.splitlines() if str(bad) in ln]
    assert named[0].startswith("ERROR: ")
    assert "4 pixels" in named[0]
    assert "NaN" in named[0]
    assert "--bits 0 keeps them" in named[0]  # the CLI names its flag for bits=0
    assert bad.read_bytes() == before
    assert not (tmp_path / "nan.hdf").exists()
    assert temporaries(tmp_path) == []
    assert_good_output(tmp_path / "good.hdf", img)
    assert "1 compressed, 1 failed, 0 skipped" in out


@pytest.mark.parametrize("opts", [["--nooutliers"], ["--range", "0,5"], ["--sigrange", "2,2"]])
def test_nan_inf_refused_with_range_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], opts: list[str]
) -> None:
    bad = write_mrc(tmp_path / "nan.mrc", _nan_image())
    rc, _, err = run_cli(capsys, "--bits", "8", *opts, bad)
    assert rc == 1
    assert "4 pixels" in err
    assert not (tmp_path / "nan.hdf").exists()
    assert temporaries(tmp_path) == []


def test_nan_inf_kept_exactly_with_bits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = _nan_image()
    src = write_mrc(tmp_path / "nan.mrc", img)
    rc, _, err = run_cli(capsys, "--bits", "0", src)
    assert rc == 0, err
    got, bits, _, _ = eman_decode(tmp_path / "nan.hdf")
    assert bits == 0
    got = got.reshape(img.shape)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(img))
    assert got[3, 4] == np.inf
    assert got[5, 6] == -np.inf
    finite = np.isfinite(img)
    np.testing.assert_array_equal(got[finite], img[finite])
    with h5py.File(tmp_path / "nan.hdf", "r") as f:
        assert f["MDF/images/0/image"].dtype == np.dtype("<f4")


# --------------------------------------------------------------------------- damaged HDF


def test_damaged_chunk_in_eman_hdf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = (np.random.default_rng(12).random((64, 48)) * 100).astype(F32)
    write_mrc(tmp_path / "d.mrc", img)
    assert run_cli(capsys, "--bits", "10", tmp_path / "d.mrc")[0] == 0
    (tmp_path / "d.mrc").unlink()
    damaged = tmp_path / "d.hdf"
    with h5py.File(damaged, "r") as f:
        ds = f["MDF/images/0/image"]
        n = ds.id.get_num_chunks()
        assert n >= 1
        info = ds.id.get_chunk_info(n // 2)
        offset, size = info.byte_offset, info.size
    raw = bytearray(damaged.read_bytes())
    start = offset + size // 3
    raw[start : start + 24] = bytes(b ^ 0x5A for b in raw[start : start + 24])
    damaged.write_bytes(bytes(raw))
    before = damaged.read_bytes()

    other = good_image(13)
    good = write_mrc(tmp_path / "ok.mrc", other)
    rc, out, err = run_cli(capsys, "--bits", "5", damaged, good)

    assert rc == 1
    named = [ln for ln in err.splitlines() if str(damaged) in ln]
    assert named, err
    assert named[0].startswith("ERROR: ")
    assert "unexpected error" not in err
    assert damaged.read_bytes() == before
    assert temporaries(tmp_path) == []
    assert {p.name for p in tmp_path.iterdir()} == {"d.hdf", "ok.mrc", "ok.hdf"}
    assert_good_output(tmp_path / "ok.hdf", other)
    assert "1 compressed, 1 failed, 0 skipped" in out
