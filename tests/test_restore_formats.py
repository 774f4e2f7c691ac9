"""Kept bytes and ``restore`` for SPIDER, IMAGIC, DM3/DM4 and SER (issue 17): every
non-pixel byte kept, the SHA-256 recorded, the file (an IMAGIC pair: both files) rebuilt
byte for byte from values stored exactly. EER cannot be rebuilt: restore and deletion
say why.

Truth: the bytes the test writers in helpers.py wrote, hashed by hashlib.
"""

from __future__ import annotations

import hashlib
import importlib.util
import struct
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import e2compress
from e2compress.archive import render_range
from e2compress.deletion import Manifest, delete_source, read_manifest
from e2compress.hashing import RunKeeper
from e2compress.quantize import within_half_step
from e2compress.restore import restore_file, restored_sha256
from helpers import (
    assert_restore_refused,
    eman2_read,
    run_cli,
    sha256,
    write_dm,
    write_eer,
    write_imagic,
    write_ser,
    write_spider,
)


def compress(src: Path, bits: int | str) -> Path:
    dst = src.with_name(src.stem + "-out.hdf")
    e2compress.compress_file(src, dst, bits=bits, threads=2)
    return dst


def assert_restores_byte_for_byte(src: Path, archive: Path, out: Path) -> None:
    with h5py.File(archive, "r") as f:
        assert f.attrs["e2compress.source_sha256"].decode() == sha256(src)
        assert f.attrs["e2compress.restore_note"].decode() == "byte for byte"
    assert restored_sha256(archive) == sha256(src)
    result = restore_file(archive, out, overwrite=True)
    assert result.byte_identical
    assert result.sha256 == sha256(src) == result.recorded_sha256
    assert result.path.read_bytes() == src.read_bytes()


def _images(seed: int, n: int, nz: int, ny: int, nx: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, nz, ny, nx)) * 10 ** rng.uniform(-3, 3)).astype(np.float32)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**32 - 1),
    order=st.sampled_from("<>"),
    stack=st.booleans(),
    n=st.integers(1, 4),
    nz=st.integers(1, 3),
    ny=st.integers(1, 9),
    nx=st.integers(1, 300),  # past 256: headers longer than 1024 bytes
)
def test_any_spider_restores_byte_for_byte_at_bits_0(
    seed: int, order: str, stack: bool, n: int, nz: int, ny: int, nx: int, tmp_path: Path
) -> None:
    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))  # one per example
    src = tmp_path / f"s{seed}.spi"
    write_spider(src, _images(seed, n if stack else 1, nz, ny, nx), order, stack)
    archive = compress(src, 0)
    assert_restores_byte_for_byte(src, archive, tmp_path / "r.spi")


def test_spider_quantised_keeps_headers_and_pixels_within_half_a_step(tmp_path: Path) -> None:
    src = tmp_path / "q.spi"
    images = _images(1, 3, 1, 20, 30)
    write_spider(src, images, ">")
    archive = compress(src, 6)
    assert restored_sha256(archive) is None
    result = restore_file(archive, tmp_path / "r.spi")
    assert not result.byte_identical
    assert result.quantised
    raw, back = src.read_bytes(), result.path.read_bytes()
    assert len(raw) == len(back)
    labbyt = 30 * 4 * -(-1024 // (30 * 4))
    image = 20 * 30 * 4
    for k in range(4):  # the overall header and each image's header: identical
        at = 0 if k == 0 else labbyt + (k - 1) * (labbyt + image)
        assert back[at : at + labbyt] == raw[at : at + labbyt]
    with h5py.File(archive, "r") as f:
        for k in range(3):
            at = labbyt + k * (labbyt + image) + labbyt
            got = np.frombuffer(back[at : at + image], ">f4").reshape(20, 30)
            rng = render_range(f[f"MDF/images/{k}"].attrs)
            assert rng is not None
            assert within_half_step(images[k, 0], got, rng).all()


def test_spider_damaged_layout_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "d.spi"
    write_spider(src, _images(2, 2, 1, 4, 4), "<")
    archive = compress(src, 0)
    with h5py.File(archive, "r+") as f:
        pieces = f["e2compress/source/pieces"][()]
        pieces[1, 0] = pieces[0, 0] + 4  # overlaps the first image's run
        del f["e2compress/source/pieces"]
        f["e2compress/source/pieces"] = pieces
    err = assert_restore_refused(capsys, archive, tmp_path)
    assert err.startswith(f"ERROR: {archive}: ")


def test_spider_source_is_deleted_only_when_restorable(tmp_path: Path) -> None:
    src = tmp_path / "del.spi"
    write_spider(src, _images(3, 2, 1, 8, 8), "<")
    raw = src.read_bytes()
    archive = compress(src, 0)
    with Manifest(tmp_path / "m.jsonl") as manifest:
        d = delete_source(src, archive, manifest, verified=True, bits=0)
    assert d.deleted, d.message
    assert not src.exists()
    assert restore_file(archive, tmp_path).path.read_bytes() == raw


def _pair(src: Path) -> tuple[bytes, bytes]:
    return src.read_bytes(), src.with_suffix(".img").read_bytes()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**32 - 1),
    order=st.sampled_from("<>"),
    dtype=st.sampled_from([np.float32, np.int16]),
    n=st.integers(1, 4),
    nz=st.integers(1, 3),
    ny=st.integers(1, 9),
    nx=st.integers(1, 40),
    bits=st.sampled_from([0, 16]),
)
def test_any_imagic_pair_restores_byte_for_byte(
    seed: int,
    order: str,
    dtype: type,
    n: int,
    nz: int,
    ny: int,
    nx: int,
    bits: int,
    tmp_path: Path,
) -> None:
    """Float32 at bits 0, int16 at bits 0 or 16 (integers within the bits): both files
    come back as written, each with its own SHA-256."""
    if bits and dtype is np.float32:
        bits = 0
    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))  # one per example
    src = tmp_path / f"p{seed}.hed"
    images = _images(seed, n, nz, ny, nx)
    if dtype is np.int16:
        images = np.random.default_rng(seed).integers(-32768, 32768, images.shape)
    write_imagic(src, images.astype(dtype), order)
    hed, img = _pair(src)
    archive = compress(src, bits)
    with h5py.File(archive, "r") as f:
        g = f["e2compress/source"]
        assert [bytes(v).decode() for v in g.attrs["part_sha256"]] == [
            hashlib.sha256(hed).hexdigest(),
            hashlib.sha256(img).hexdigest(),
        ]
        assert list(g.attrs["part_sizes"]) == [len(hed), len(img)]
        assert f.attrs["e2compress.restore_note"].decode() == "byte for byte"
    assert restored_sha256(archive) is not None
    out = tmp_path / "out"
    out.mkdir()
    result = restore_file(archive, out)
    assert result.byte_identical
    assert (result.path, result.others) == (out / src.name, (out / src.with_suffix(".img").name,))
    assert _pair(result.path) == (hed, img)


def test_imagic_quantised_keeps_the_header_file_whole(tmp_path: Path) -> None:
    src = tmp_path / "q.hed"
    images = _images(4, 3, 1, 12, 10)
    write_imagic(src, images, ">")
    hed, _ = _pair(src)
    archive = compress(src, 5)
    assert restored_sha256(archive) is None
    result = restore_file(archive, tmp_path / "r.hed")
    assert not result.byte_identical
    assert result.quantised
    assert result.path.read_bytes() == hed
    back = np.frombuffer((tmp_path / "r.img").read_bytes(), ">f4").reshape(3, 12, 10)
    with h5py.File(archive, "r") as f:
        for k in range(3):
            rng = render_range(f[f"MDF/images/{k}"].attrs)
            assert rng is not None
            assert within_half_step(images[k, 0], back[k, ::-1], rng).all()  # top line first


IMAGIC_HOSTILE = {
    "a path for a name": ("parts", np.array([b"../x.hed", b"x.img"])),
    "one name twice": ("parts", np.array([b"x.hed", b"x.hed"])),
    "sizes that do not add up": ("part_sizes", np.array([1024, 5], dtype=np.int64)),
    "one file only": ("parts", np.array([b"x.hed"])),
}


@pytest.mark.parametrize("case", list(IMAGIC_HOSTILE))
def test_imagic_hostile_parts_are_one_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "h.hed"
    write_imagic(src, _images(5, 2, 1, 4, 4), "<")
    archive = compress(src, 0)
    name, value = IMAGIC_HOSTILE[case]
    with h5py.File(archive, "r+") as f:
        f["e2compress/source"].attrs[name] = value
    err = assert_restore_refused(capsys, archive, tmp_path)
    assert err.startswith(f"ERROR: {archive}: ")


def test_imagic_pair_is_deleted_whole_when_both_files_are_proven(tmp_path: Path) -> None:
    src = tmp_path / "k.hed"
    write_imagic(src, _images(6, 2, 1, 6, 6), "<")
    hed, img = _pair(src)
    archive = compress(src, 0)
    with Manifest(tmp_path / "m.jsonl") as manifest:
        d = delete_source(src.with_suffix(".img"), archive, manifest, verified=True, bits=0)
    assert d.deleted, d.message
    assert not src.exists()
    assert not src.with_suffix(".img").exists()
    lines = read_manifest(tmp_path / "m.jsonl")
    assert [(Path(x["source"]).name, x["source_sha256"]) for x in lines] == [
        ("k.hed", hashlib.sha256(hed).hexdigest()),
        ("k.img", hashlib.sha256(img).hexdigest()),
    ]
    result = restore_file(archive, tmp_path)
    assert result.byte_identical
    assert _pair(result.path) == (hed, img)


@pytest.mark.parametrize("damage", ["hed changed", "img changed", "img a link", "img gone"])
def test_imagic_pair_is_kept_whole_unless_both_are_proven(damage: str, tmp_path: Path) -> None:
    src = tmp_path / "k.hed"
    write_imagic(src, _images(6, 2, 1, 6, 6), "<")
    archive = compress(src, 0)
    img = src.with_suffix(".img")
    if damage == "hed changed":
        src.write_bytes(src.read_bytes()[:-1] + b"x")
    elif damage == "img changed":
        img.write_bytes(b"x" + img.read_bytes()[1:])
    elif damage == "img a link":
        img.rename(tmp_path / "elsewhere.img")
        img.symlink_to(tmp_path / "elsewhere.img")
    else:
        img.unlink()
    with Manifest(tmp_path / "m.jsonl") as manifest:
        d = delete_source(src, archive, manifest, verified=True, bits=0)
    assert not d.deleted
    assert d.message.count("\n") == 0
    assert ("k.img" if damage.startswith("img") else "k.hed") in d.message
    assert src.exists()
    assert img.exists() or damage == "img gone"
    assert read_manifest(tmp_path / "m.jsonl") == []


needs_ncempy = pytest.mark.skipif(
    importlib.util.find_spec("ncempy") is None, reason="needs the optional extras dm/ser (ncempy)"
)
# float32 holds these exactly: stored at bits 0, they come back byte for byte
EXACT_TYPES = [np.float32, np.int16, np.uint16, np.uint8, np.int8]


def _values(seed: int, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return (rng.normal(size=shape) * 10 ** rng.uniform(-3, 3)).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)


@needs_ncempy
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**32 - 1),
    version=st.sampled_from([3, 4]),
    dtype=st.sampled_from(EXACT_TYPES),
    shape=st.sampled_from([(1, 9), (6, 5), (2, 4, 3), (3, 7, 8)]),
    thumbnail=st.booleans(),
)
def test_any_dm_restores_byte_for_byte_at_bits_0(
    seed: int,
    version: int,
    dtype: type,
    shape: tuple[int, ...],
    thumbnail: bool,
    tmp_path: Path,
) -> None:
    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))  # one per example
    src = tmp_path / f"d.dm{version}"
    write_dm(src, _values(seed, shape, dtype), version=version, thumbnail=thumbnail)
    assert_restores_byte_for_byte(src, compress(src, 0), tmp_path / "r.dm")


@needs_ncempy
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from(EXACT_TYPES[:4]),
    n=st.integers(1, 4),
    spectra=st.booleans(),
    ny=st.integers(1, 6),
    nx=st.integers(1, 9),
    invalid=st.integers(0, 2),
)
def test_any_ser_restores_byte_for_byte_at_bits_0(
    seed: int,
    dtype: type,
    n: int,
    spectra: bool,
    ny: int,
    nx: int,
    invalid: int,
    tmp_path: Path,
) -> None:
    """Images or spectra; elements past the valid count are kept as bytes."""
    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))  # one per example
    src = tmp_path / "s.ser"
    shape = (n + invalid, nx) if spectra else (n + invalid, ny, nx)
    write_ser(src, _values(seed, shape, dtype), valid=n)
    assert_restores_byte_for_byte(src, compress(src, 0), tmp_path / "r.ser")


@needs_ncempy
def test_dm_quantised_keeps_every_tag_byte(tmp_path: Path) -> None:
    src = tmp_path / "q.dm4"
    data = _values(7, (2, 16, 12), np.float32)
    write_dm(src, data, tags={"Microscope Info": {"Voltage": 300000.0}})
    archive = compress(src, 4)
    assert restored_sha256(archive) is None
    result = restore_file(archive, tmp_path / "r.dm4")
    assert not result.byte_identical
    raw, back = src.read_bytes(), result.path.read_bytes()
    at = raw.find(np.flip(data, axis=1).astype("<f4").tobytes())  # stored top line first
    assert at > 0
    end = at + data.nbytes
    assert (back[:at], back[end:]) == (raw[:at], raw[end:])  # every byte but the pixels
    got = np.flip(np.frombuffer(back[at:end], "<f4").reshape(data.shape), axis=1)
    with h5py.File(archive, "r") as f:
        for k in range(2):
            rng = render_range(f[f"MDF/images/{k}"].attrs)
            assert rng is not None
            assert within_half_step(data[k], got[k], rng).all()


@needs_ncempy
def test_ser_with_overlapping_elements_is_not_restored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two offsets naming one element: compressed, but neither restored nor deleted."""
    src = tmp_path / "o.ser"
    write_ser(src, _values(8, (2, 4, 4), np.float32))
    raw = bytearray(src.read_bytes())
    table = struct.unpack_from("<i", raw, 22)[0]  # OffsetArrayOffset
    first = struct.unpack_from("<i", raw, table)[0]
    struct.pack_into("<i", raw, table + 4, first)
    src.write_bytes(bytes(raw))
    archive = compress(src, 0)
    out = tmp_path / "out"
    out.mkdir()
    rc, stdout, err = run_cli(capsys, "restore", archive, out)
    assert (rc, stdout, err.count("\n")) == (1, "", 1)
    assert "pixel runs overlap" in err
    with Manifest(tmp_path / "m.jsonl") as manifest:
        d = delete_source(src, archive, manifest, verified=True, bits=0)
    assert not d.deleted
    assert "pixel runs overlap" in d.message
    assert src.exists()


def test_eer_says_why_it_cannot_be_restored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("imagecodecs")
    src = write_eer(tmp_path / "m.eer", np.eye(16, dtype=np.uint8)[None].repeat(2, axis=0))
    archive = compress(src, 0)
    with h5py.File(archive, "r") as f:
        assert "sub-pixel" in f.attrs["e2compress.restore_note"].decode()
        assert int(f.attrs["e2compress.restorable"]) == 0
        assert "e2compress.restorable_sha256" not in f.attrs
    out = tmp_path / "out"
    out.mkdir()
    rc, stdout, err = run_cli(capsys, "restore", archive, out)
    assert (rc, stdout, err.count("\n")) == (1, "", 1)
    assert "sub-pixel" in err
    assert list(out.iterdir()) == []
    with Manifest(tmp_path / "m.jsonl") as manifest:
        d = delete_source(src, archive, manifest, verified=True, bits=0)
    assert not d.deleted
    assert "sub-pixel" in d.message
    assert src.exists()
    again = tmp_path / "again.hdf"  # an archive of an EER archive carries the reason
    e2compress.compress_file(archive, again, bits=0, threads=2)
    with h5py.File(again, "r") as f:
        assert "sub-pixel" in f["e2compress/source"].attrs["problem"].decode()


def test_recompressed_imagic_archive_still_restores_the_pair(tmp_path: Path) -> None:
    src = tmp_path / "c.hed"
    write_imagic(src, _images(9, 2, 1, 5, 5), ">")
    archive = compress(src, 0)
    again = tmp_path / "again.hdf"
    e2compress.compress_file(archive, again, bits=0, threads=2)
    out = tmp_path / "out"
    out.mkdir()
    result = restore_file(again, out / "renamed")
    assert result.byte_identical
    assert (result.path.name, result.others[0].name) == ("renamed.hed", "renamed.img")
    assert _pair(result.path) == _pair(src)


def test_spider_headers_past_the_kept_limit_say_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # 3 headers of 1024: past the limit where RunKeeper is defined (kept.py or a split of it)
    monkeypatch.setitem(RunKeeper.__init__.__globals__, "KEPT_LIMIT", 2048)
    src = tmp_path / "big.spi"
    write_spider(src, _images(10, 2, 1, 4, 4), "<")
    archive = compress(src, 0)
    out = tmp_path / "out"
    out.mkdir()
    rc, stdout, err = run_cli(capsys, "restore", archive, out)
    assert (rc, stdout, err.count("\n")) == (1, "", 1)
    assert "holds more than 2048 bytes besides its pixels" in err
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("kind", ["spider", "imagic", "dm4", "ser"])
def test_eman2_reads_archives_that_keep_their_source(kind: str, tmp_path: Path) -> None:
    """Real EMAN2 reads the images of an archive keeping its source's bytes (outside
    /MDF) as written: the original float32 values at bits 0."""
    data = _images(11, 3, 1, 6, 8)
    if kind == "spider":
        src = tmp_path / "e.spi"
        write_spider(src, data, ">")
    elif kind == "imagic":
        src = tmp_path / "e.hed"
        write_imagic(src, data, "<")
    else:
        if importlib.util.find_spec("ncempy") is None:
            pytest.skip("needs the optional extras dm/ser (ncempy)")
        src = tmp_path / f"e.{kind}"
        (write_ser if kind == "ser" else write_dm)(src, data[:, 0])
    archive = compress(src, 0)
    theirs, _ = eman2_read(archive, tmp_path)
    np.testing.assert_array_equal(theirs.reshape(data.shape), data)
