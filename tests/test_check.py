"""``e2compress check``: every chunk read again, damage named; originals compared."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

import e2compress
from e2compress.audit import check_archive
from helpers import DATA, flip_byte, run_cli, write_mrc


def _chunk_places(path: Path) -> list[tuple[int, int]]:
    """(byte offset, size) of every chunk of image 0."""
    with h5py.File(path, "r") as f:
        ds = f["MDF/images/0/image"]
        return [
            (ds.id.get_chunk_info(k).byte_offset, ds.id.get_chunk_info(k).size)
            for k in range(ds.id.get_num_chunks())
        ]


@pytest.fixture
def archives(tmp_path: Path) -> tuple[Path, Path]:
    """A map and a stack compressed with the defaults (checksums on)."""
    a, b = tmp_path / "EMD-3001.hdf", tmp_path / "13pf_MT.hdf"
    e2compress.compress_file(DATA / "EMD-3001.map", a, bits=8)
    e2compress.compress_file(DATA / "13pf_MT.tif", b, bits=6)
    return a, b


def test_sound_archives_pass(
    archives: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = archives
    rc, out, err = run_cli(capsys, "check", a, b)
    assert rc == 0, err
    assert out.splitlines() == [
        f"{a}: ok: 1 image, 1 chunk read back (all with checksums)",  # a small map: one
        f"{b}: ok: 36 images, 36 chunks read back (all with checksums)",
    ]


@pytest.mark.parametrize("checksum", [True, False], ids=["fletcher32", "deflate-only"])
def test_a_flipped_byte_is_named(
    checksum: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "a.hdf"
    opts = e2compress.Options(bits=8, checksum=checksum)
    # a volume of 90 KB sections at 8 bits: chunks of 11 whole sections, 3 in all
    vol = np.random.default_rng(0).normal(size=(30, 300, 300)).astype(np.float32)
    e2compress.compress_file(write_mrc(tmp_path / "v.mrc", vol), out, options=opts)
    places = _chunk_places(out)
    assert len(places) == 3
    good = tmp_path / "good.hdf"
    shutil.copy(out, good)
    offset, size = places[1]
    flip_byte(out, offset + size // 3, 0x40)
    rc, stdout, err = run_cli(capsys, "check", good, out)
    assert rc == 1
    assert stdout.startswith(f"{good}: ok")
    (line,) = err.splitlines()
    what = "Fletcher-32 checksum mismatch" if checksum else "damaged deflate stream"
    assert line.startswith(f"ERROR: {out}: image 0, chunk at (11, 0, 0): {what}")
    result = check_archive(out)
    assert not result.ok
    assert result.checksummed == (3 if checksum else 0)


def test_an_unwritten_chunk_is_a_problem(tmp_path: Path) -> None:
    """HDF5 reads a chunk that was never written as zeros, without an error."""
    path = tmp_path / "holes.hdf"
    with h5py.File(path, "w") as f:
        images = f.create_group("MDF/images")
        images.attrs["imageid_max"] = np.array([0], dtype=np.int32)
        ds = images.create_group("0").create_dataset(
            "image", shape=(16, 8), dtype=np.float32, chunks=(4, 8), compression="gzip"
        )
        ds[:8] = 1.0  # chunks 0 and 1 of 4
    result = check_archive(path)
    assert result.problems == ["image 0: 2 of 4 chunks never written"]


def test_originals_are_compared(archives: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = archives
    assert check_archive(a, DATA / "EMD-3001.map").ok
    result = check_archive(b, DATA / "13pf_MT.tif")
    assert result.ok
    assert result.original == str(DATA / "13pf_MT.tif")
    # a changed pixel (far more than half a step) in a copy of the original
    changed = tmp_path / "changed.mrc"
    with e2compress.open_source(DATA / "EMD-3001.map") as src:
        nz, ny, _ = src.shape(0)
        full = np.stack([src.read(0, z, 0, ny) for z in range(nz)])
    full[3, 4, 5] += 1.0
    write_mrc(changed, full)
    result = check_archive(a, changed)
    assert not result.ok
    assert "image 0" in result.problems[0]
    assert str(changed) in result.problems[0]


def test_originals_directory_and_json(
    archives: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = archives
    rc, out, err = run_cli(capsys, "check", "--json", "--originals", DATA, a, b)
    assert rc == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["ok"] for r in rows] == [True, True]
    assert [r["original"] for r in rows] == [str(DATA / "EMD-3001.map"), str(DATA / "13pf_MT.tif")]
    # a file as --originals with several archives is refused before any work
    rc, out, err = run_cli(capsys, "check", "--originals", DATA / "EMD-3001.map", a, b)
    assert rc == 2
    assert "directory" in err


def test_not_an_archive_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(capsys, "check", DATA / "EMD-3001.map", tmp_path / "missing.hdf")
    assert rc == 1
    assert len(err.splitlines()) == 2
    assert err.startswith(f"ERROR: {DATA / 'EMD-3001.map'}: ")


def test_an_exact_archive_is_rebuilt_and_hashed(tmp_path: Path) -> None:
    out = tmp_path / "lossless.hdf"
    e2compress.compress_file(DATA / "EMD-3001.map", out, bits=0)
    result = check_archive(out)
    assert result.ok, result.problems
    assert result.restores_exactly
    assert result.describe()[0].endswith("restores its source byte for byte (SHA-256 checked)")
    with h5py.File(out, "r+") as f:  # the record no longer matches what is rebuilt
        f.attrs["e2compress.restorable_sha256"] = np.bytes_(b"f" * 64)
    result = check_archive(out)
    assert result.problems == [
        "says it restores its source byte for byte, but the rebuilt bytes do not have "
        "the recorded SHA-256"
    ]


def test_damaged_kept_header_bytes_are_found(tmp_path: Path) -> None:
    """The source's header bytes kept beside /MDF are read through HDF5's filters."""
    out = tmp_path / "map.hdf"
    e2compress.compress_file(DATA / "EMD-3001.map", out, bits=8)
    with h5py.File(out, "r") as f:
        kept = f["e2compress/source/kept"]
        stream = kept[()].tobytes()  # small: deflated by us, in the object header
        assert kept.chunks is None
        assert "kept_deflated" in kept.parent.attrs
    header = zlib.decompress(stream)  # the 1024-byte header and the extended header
    assert len(header) >= 1024
    assert header == (DATA / "EMD-3001.map").read_bytes()[: len(header)]
    assert check_archive(out).ok
    where = (out.read_bytes()).index(stream)
    flip_byte(out, where + len(stream) // 2, 0x40)
    result = check_archive(out)
    assert len(result.problems) == 1
    # zlib's check finds it, or the 1.8 object header's own checksum before it
    assert result.problems[0].startswith("/e2compress/source/kept cannot be read (") or (
        "incorrect metadata checksum" in result.problems[0]
    )
