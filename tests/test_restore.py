"""Kept source bytes, the source's SHA-256 and ``e2compress restore`` (issue 14)."""

from __future__ import annotations

import bz2
import csv
import hashlib
import itertools
import json
import shutil
import threading
import zlib
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import e2compress
from e2compress.errors import InputError, OutputError
from e2compress.hashing import OrderedHasher, read_again_later
from e2compress.kept import kept_array
from e2compress.restore import restore_file, restored_sha256
from helpers import (
    CORE_FILES,
    DATA,
    REAL,
    assert_restore_refused,
    eman2_read,
    plain_name,
    real_file_params,
    run_cli,
    sha256,
    true_images,
    write_mrc,
)

MRC_FILES = [p for p in real_file_params() if not plain_name(p.values[0]).endswith(".tif")]


def restorable_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    return bz2.decompress(raw) if path.suffix == ".bz2" else raw


def compress(src: Path, out: Path, bits: int | str) -> Path:
    dst = out / (plain_name(src).rsplit(".", 1)[0] + ".hdf")
    e2compress.compress_file(src, dst, bits=bits, threads=2)
    return dst


@pytest.mark.parametrize("src", MRC_FILES)
def test_mrc_restores_byte_for_byte_at_bits_0(src: Path, tmp_path: Path) -> None:
    archive = compress(src, tmp_path, 0)
    with h5py.File(archive, "r") as f:
        assert f.attrs["e2compress.source_sha256"].decode() == sha256(src)
        assert int(f.attrs["e2compress.source_size"]) == src.stat().st_size
    want = hashlib.sha256(restorable_bytes(src)).hexdigest()
    assert restored_sha256(archive) == want
    out = tmp_path / "out"
    out.mkdir()
    result = restore_file(archive, out)
    assert result.path == out / plain_name(src)
    assert result.byte_identical
    assert result.sha256 == want
    assert result.path.read_bytes() == restorable_bytes(src)
    assert ("decompressed bzip2" in result.describe()) == (src.suffix == ".bz2")


@pytest.mark.parametrize("src", MRC_FILES)
def test_mrc_integer_data_restores_at_16_bits(src: Path, tmp_path: Path) -> None:
    """Integer data within the kept bits comes back byte for byte; other data does not,
    and ``restored_sha256`` says so (None)."""
    archive = compress(src, tmp_path, 16)
    data = np.concatenate([np.ravel(a) for a in true_images(src)])
    integer = data.dtype.kind in "iu"
    result = restore_file(archive, tmp_path / "restored")
    if integer and np.ptp(data) < 1 << 16:
        assert result.byte_identical
        assert restored_sha256(archive) == sha256(result.path)
        assert result.path.read_bytes() == restorable_bytes(src)
    else:
        assert not result.byte_identical
        assert result.quantised
        assert restored_sha256(archive) is None
        # the headers (everything before the pixels) are identical
        raw = restorable_bytes(src)
        got = result.path.read_bytes()
        assert len(got) == len(raw)
        assert got[:1024] == raw[:1024]


@pytest.mark.parametrize(
    ("dtype", "low"), [(np.uint8, 0), (np.int16, -3), (np.uint16, 40000), (np.int8, -128)]
)
@pytest.mark.parametrize("bits", [2, 5, 8])
def test_two_integer_values_restore_byte_for_byte(
    tmp_path: Path, dtype: type, low: int, bits: int
) -> None:
    """Integer images of two adjacent values get EMAN2's unit range (codes 0 and
    2**bits - 1), whose ends decode exactly: the archive says byte for byte, and is."""
    rng = np.random.default_rng(bits)
    data = (low + (rng.random((3, 9, 7)) < 0.3)).astype(dtype)
    src = write_mrc(tmp_path / "two.mrcs", data)
    archive = compress(src, tmp_path, bits)
    with h5py.File(archive, "r") as f:
        assert f.attrs["e2compress.restore_note"].decode() == "byte for byte"
    result = restore_file(archive, tmp_path / "restored")
    assert result.byte_identical
    assert result.path.read_bytes() == src.read_bytes()
    assert restored_sha256(archive) == sha256(src)


def test_hash_is_of_the_file_however_blocks_arrive() -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    cuts = sorted({0, len(data), *rng.integers(0, len(data), 40).tolist()})
    blocks = [(a, data[a:b]) for a, b in itertools.pairwise(cuts)]
    order = rng.permutation(len(blocks))
    h = OrderedHasher(len(data))
    for k in order:
        h.feed(*blocks[k])
        h.feed(*blocks[order[0]])  # repeats are ignored
    assert h.finish(lambda n, off: data[off : off + n]) == hashlib.sha256(data).hexdigest()
    assert h.reread == 0
    # blocks never fed are read at the end
    h = OrderedHasher(len(data))
    h.feed(5000, data[5000:6000])
    assert h.finish(lambda n, off: data[off : off + n]) == hashlib.sha256(data).hexdigest()
    assert h.reread == len(data) - 1000


def test_a_first_pass_read_again_later_feeds_the_hash_without_holding() -> None:
    """An image read twice: the first pass (``read_again_later``) gives the hash only
    what it can take at once, nothing out of order, and the second pass the rest."""
    rng = np.random.default_rng(2)
    data = rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    cuts = [*range(0, len(data), 10_000), len(data)]
    blocks = [(a, data[a:b]) for a, b in itertools.pairwise(cuts)]
    h = OrderedHasher(len(data))
    with read_again_later():
        for k in rng.permutation(len(blocks)):
            h.feed(*blocks[k])
    assert h.peak <= 10_000  # never held a block out of order
    for block in blocks:  # the second pass, in order
        h.feed(*block)
    assert h.finish(lambda n, off: data[off : off + n]) == hashlib.sha256(data).hexdigest()
    assert h.reread == 0


def _hostile(archive: Path, name: bytes) -> None:
    with h5py.File(archive, "r+") as f:
        f.attrs["e2compress.source_name"] = np.bytes_(name)
        f.attrs["e2compress.restorable_name"] = np.bytes_(name)


@pytest.mark.parametrize("name", [b"../../x.mrc", b"/tmp/abs.mrc", b"a/b.mrc", b"..", b""])
def test_hostile_names_are_refused(tmp_path: Path, name: bytes) -> None:
    src = write_mrc(tmp_path / "s.mrc", np.arange(64, dtype=np.int16).reshape(8, 8))
    archive = compress(src, tmp_path, 0)
    _hostile(archive, name)
    inner = tmp_path / "inner" / "deeper"
    inner.mkdir(parents=True)
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(InputError, match=r"not a plain file name|no source name"):
        restore_file(archive, inner)
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert not Path("/tmp/abs.mrc").exists() or name != b"/tmp/abs.mrc"
    # an explicit output file name needs no stored name
    result = restore_file(archive, inner / "given.mrc")
    assert result.byte_identical
    assert result.path.read_bytes() == src.read_bytes()


def test_existing_output_is_kept(tmp_path: Path) -> None:
    src = write_mrc(tmp_path / "s.mrc", np.arange(64, dtype=np.float32).reshape(8, 8))
    archive = compress(src, tmp_path, 0)
    out = tmp_path / "o"
    out.mkdir()
    (out / "s.mrc").write_bytes(b"precious")
    with pytest.raises(OutputError, match="exists"):
        restore_file(archive, out)
    assert (out / "s.mrc").read_bytes() == b"precious"
    assert restore_file(archive, out, overwrite=True).byte_identical
    assert [p.name for p in out.iterdir()] == ["s.mrc"]


def test_archive_without_kept_bytes(tmp_path: Path) -> None:
    src = write_mrc(tmp_path / "s.mrc", np.arange(64, dtype=np.float32).reshape(8, 8))
    archive = compress(src, tmp_path, 0)
    with h5py.File(archive, "r+") as f:
        del f["e2compress"]
    assert restored_sha256(archive) is None
    with pytest.raises(InputError, match="keeps no source bytes"):
        restore_file(archive, tmp_path / "x.mrc")
    assert not (tmp_path / "x.mrc").exists()


def test_cli_restore(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = CORE_FILES[[p.name for p in CORE_FILES].index("EMD-3197.map")]
    copy = tmp_path / src.name
    shutil.copy(src, copy)
    archive = compress(copy, tmp_path, 0)
    out = tmp_path / "out"
    out.mkdir()
    rc, stdout, _ = run_cli(capsys, "restore", archive, out)
    assert rc == 0
    assert "byte for byte" in stdout
    assert (out / src.name).read_bytes() == src.read_bytes()
    rc, _, err = run_cli(capsys, "restore", archive, out)
    assert rc == 1
    assert err.count("\n") == 1
    assert "exists" in err


TIFF_FILES = [p for p in real_file_params() if plain_name(p.values[0]).endswith(".tif")]


def assert_same_tiff(a: Path, b: Path, *, strips_moved: bool) -> None:
    """Same pages, pixels and tags (strip offsets and byte counts aside if moved)."""
    with tifffile.TiffFile(a) as ta, tifffile.TiffFile(b) as tb:
        assert len(ta.pages) == len(tb.pages)
        for pa, pb in zip(ta.pages, tb.pages, strict=True):
            np.testing.assert_array_equal(pa.asarray(), pb.asarray())
            assert pa.asarray().dtype == pb.asarray().dtype
            moved = (273, 279) if strips_moved else ()
            tags_a = {t.code: t.value for t in pa.tags.values() if t.code not in moved}
            tags_b = {t.code: t.value for t in pb.tags.values() if t.code not in moved}
            assert tags_a.keys() == tags_b.keys()
            for code, value in tags_a.items():
                np.testing.assert_equal(tags_b[code], value)


@pytest.mark.parametrize("src", TIFF_FILES)
def test_tiff_hash_and_restore(src: Path, tmp_path: Path) -> None:
    """Every TIFF's SHA-256 is recorded; an uncompressed one comes back byte for byte
    at bits 0, a compressed one with the same pixels and tags (its strips encoded
    again: byte for byte too when they encode as they were)."""
    archive = compress(src, tmp_path, 0)
    with h5py.File(archive, "r") as f:
        assert f.attrs["e2compress.source_sha256"].decode() == sha256(src)
    out = tmp_path / "out"
    out.mkdir()
    with tifffile.TiffFile(src) as tif:
        compressed = any(p.compression != 1 for p in tif.pages)
    result = restore_file(archive, out)
    assert result.path == out / src.name
    identical = result.path.read_bytes() == src.read_bytes()
    assert result.byte_identical == identical
    assert restored_sha256(archive) == (sha256(src) if identical else None)
    if not compressed:
        assert identical
    assert_same_tiff(src, result.path, strips_moved=not identical)


def test_recompressing_in_place_carries_the_kept_bytes(tmp_path: Path) -> None:
    """16-bit integers at 16 bits, then in place as float32: still byte for byte."""
    data = np.arange(-300, 300, dtype=np.int16).reshape(20, 30)
    src = write_mrc(tmp_path / "s.mrc", data)
    archive = compress(src, tmp_path, 16)
    e2compress.compress_file(archive, bits=0, threads=1, force=True)
    with h5py.File(archive, "r") as f:
        assert f["MDF/images/0/image"].dtype == np.float32
        assert f.attrs["e2compress.restorable_sha256"].decode() == sha256(src)
    result = restore_file(archive, tmp_path / "again.mrc")
    assert result.byte_identical
    assert result.path.read_bytes() == src.read_bytes()


@pytest.mark.parametrize(
    "src",
    [
        pytest.param(DATA / "EMD-3001.map", id="EMD-3001.map"),
        pytest.param(DATA / "13pf_MT.tif", id="13pf_MT.tif"),
        pytest.param(REAL / "HAADFscan.mrc", id="HAADFscan.mrc", marks=pytest.mark.shared),
    ],
)
def test_eman2_reads_the_same_with_and_without_kept_bytes(src: Path, tmp_path: Path) -> None:
    """Real EMAN2's read of an archive is the same whether it keeps the source's bytes
    or not (the kept group and root attributes deleted from a copy)."""
    archive = compress(src, tmp_path, 8)
    (tmp_path / "bare").mkdir()
    bare = tmp_path / "bare" / archive.name  # the same name: EMAN2 reports its path
    shutil.copy(archive, bare)
    with h5py.File(bare, "r+") as f:
        del f["e2compress"]
        for name in list(f.attrs):
            del f.attrs[name]
    with h5py.File(archive, "r") as f:
        assert f["e2compress/source/kept"].size > 0
    kept_pixels, kept_headers = eman2_read(archive, tmp_path)
    bare_pixels, bare_headers = eman2_read(bare, bare.parent)
    for header in kept_headers + bare_headers:
        header.pop("source_path", None)
    np.testing.assert_array_equal(kept_pixels, bare_pixels)
    assert kept_headers == bare_headers


def test_fei2_header_costs_at_most_its_deflated_size(tmp_path: Path) -> None:
    """The kept 909 KB FEI2 header costs no more in the archive than zlib's level 9."""
    src = REAL / "HAADFscan.mrc"
    if not src.exists():
        pytest.skip("../shared/data is not present beside the repo")
    archive = compress(src, tmp_path, 0)
    header = src.read_bytes()[: 1024 + 909312]
    with h5py.File(archive, "r") as f:
        stored = f["e2compress/source/kept"].id.get_storage_size()
        assert kept_array(f["e2compress/source"]).tobytes() == header
    assert stored <= len(zlib.compress(header, 9)) + 64  # + fletcher32 per chunk


def test_info_and_batch_report_say_whether_restorable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exact = write_mrc(tmp_path / "exact.mrc", np.arange(600, dtype=np.int16).reshape(20, 30))
    noisy = write_mrc(
        tmp_path / "noisy.mrc",
        np.random.default_rng(2).normal(size=(20, 30)).astype(np.float32),
    )
    out = tmp_path / "out"
    out.mkdir()
    rc, _, err = run_cli(
        capsys, "--bits", "12", "--outpath", out, "--report", tmp_path / "r.csv", exact, noisy
    )
    assert rc == 0, err
    with open(tmp_path / "r.csv", newline="") as fh:
        rows = {Path(r["source"]).name: r for r in csv.DictReader(fh)}
    assert rows["exact.mrc"]["restorable"] == "yes"
    assert rows["noisy.mrc"]["restorable"] == "no"
    rc, text, _ = run_cli(capsys, "info", out / "exact.hdf", out / "noisy.hdf")
    first = [line for line in text.splitlines() if not line.startswith(" ")]
    assert first[0].endswith("; restore: byte for byte")
    assert "; restore: headers only" in first[1]
    rc, text, _ = run_cli(capsys, "info", "--json", out / "exact.hdf")
    info = json.loads(text)
    assert info["restorable"] is True
    assert info["source_sha256"] == sha256(exact)


def _small_archive(tmp_path: Path) -> tuple[Path, Path]:
    src = write_mrc(tmp_path / "s.mrc", np.arange(6000, dtype=np.int16).reshape(60, 100))
    return src, compress(src, tmp_path, 0)


def _replace(archive: Path, name: str, data: np.ndarray) -> None:
    with h5py.File(archive, "r+") as f:
        del f[f"e2compress/source/{name}"]
        f[f"e2compress/source/{name}"] = data


HOSTILE = {
    "overlapping runs": ("pieces", [[1024, 8000, 0, 0, 0, 0], [1100, 4000, 0, 0, 0, 0]]),
    "run past the end": ("pieces", [[1024, 1 << 40, 0, 0, 0, 0]]),
    "no such image": ("pieces", [[1024, 12000, 7, 0, 0, 0]]),
    "no such type": ("pieces", [[1024, 12000, 0, 0, 3, 0]]),
    "unknown flag": ("pieces", [[1024, 12000, 0, 0, 0, 64]]),
    "half a value": ("pieces", [[1024, 11999, 0, 0, 0, 0]]),
    "wrong kept length": ("kept", np.zeros(10, dtype=np.uint8)),
    "bad type": ("dtypes", [b"O"]),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_damaged_or_hostile_layout_is_refused(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, archive = _small_archive(tmp_path)
    name, value = HOSTILE[case]
    if name == "dtypes":
        with h5py.File(archive, "r+") as f:
            f["e2compress/source"].attrs["dtypes"] = np.array(value)
    else:
        _replace(archive, name, np.asarray(value, dtype=np.int64 if name == "pieces" else None))
    err = assert_restore_refused(capsys, archive, tmp_path)
    assert err.startswith(f"ERROR: {archive}: ")


@pytest.mark.parametrize(
    ("claimed", "stream"),
    [
        (1 << 40, zlib.compress(bytes(1024))),  # an impossible size
        (1024, zlib.compress(bytes(1 << 20))),  # inflates past the size it claims
        (1024, zlib.compress(bytes(1024))[:-3]),  # cut short
    ],
)
def test_hostile_deflated_kept_bytes_are_refused(
    claimed: int, stream: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Small kept bytes are stored deflated by us; a stream that claims too much,
    inflates to more than it claims (a zip bomb) or is cut short is refused on one line
    without inflating more than the claimed size."""
    _, archive = _small_archive(tmp_path)
    _replace(archive, "kept", np.frombuffer(stream, dtype=np.uint8))
    with h5py.File(archive, "r+") as f:
        f["e2compress/source"].attrs["kept_deflated"] = np.int64(claimed)
    err = assert_restore_refused(capsys, archive, tmp_path)
    assert "kept source bytes" in err


def test_run_beyond_the_images_leaves_nothing(tmp_path: Path) -> None:
    """A layout asking for more values than the images hold fails mid-way: the partial
    file is removed."""
    _, archive = _small_archive(tmp_path)
    _replace(archive, "pieces", np.array([[1024, 12000, 0, 10, 0, 0]], dtype=np.int64))
    with pytest.raises(InputError, match="longer than the stored images"):
        restore_file(archive, tmp_path / "x.mrc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.hdf", "s.mrc"]


# --------------------------------------------------------------------------- properties

FIXTURE = HealthCheck.function_scoped_fixture
MRC_MODES = {0: ("u1", "i1"), 1: ("i2",), 2: ("f4",), 6: ("u2",), 12: ("f2",)}


def _mrc_bytes(
    data: np.ndarray, mode: int, order: str, ext: bytes, axes: tuple[int, int, int], signed: bool
) -> bytes:
    """An MRC file written by hand (any byte order, extended header, axis order)."""
    from mrcfile.dtypes import HEADER_DTYPE

    header = np.zeros((), dtype=HEADER_DTYPE.newbyteorder(order))
    nz, ny, nx = data.shape
    for key, value in (("nx", nx), ("ny", ny), ("nz", nz), ("mode", mode)):
        header[key] = value
    header["mx"], header["my"], header["mz"] = nx, ny, nz
    header["mapc"], header["mapr"], header["maps"] = axes
    header["cella"] = (nx, ny, nz)
    header["cellb"] = (90, 90, 90)
    header["nsymbt"] = len(ext)
    header["exttyp"] = b"SERI"
    header["nversion"] = 20140 if signed else 0
    header["map"] = b"MAP "
    stamp = b"DA\x00\x00" if order == "<" else b"\x11\x11\x00\x00"
    header["machst"] = np.frombuffer(stamp, dtype=np.uint8)
    return header.tobytes() + ext + data.astype(data.dtype.newbyteorder(order)).tobytes()


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    mode=st.sampled_from(sorted(MRC_MODES)),
    order=st.sampled_from("<>"),
    shape=st.tuples(st.integers(1, 4), st.integers(1, 9), st.integers(1, 11)),
    ext=st.binary(max_size=300),
    axes=st.permutations([1, 2, 3]),
    stack=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_mrc_restores_byte_for_byte_at_bits_0(
    tmp_path_factory: pytest.TempPathFactory,
    mode: int,
    order: str,
    shape: tuple[int, int, int],
    ext: bytes,
    axes: list[int],
    stack: bool,
    seed: int,
) -> None:
    """Every MRC mode, byte order, extended header and axis order, stack or volume."""
    tmp = tmp_path_factory.mktemp("mrc")
    rng = np.random.default_rng(seed)
    kind = MRC_MODES[mode][seed % len(MRC_MODES[mode])]
    dtype = np.dtype(kind)
    if dtype.kind == "f":
        data = rng.normal(0, 100, size=shape).astype(dtype)
    else:
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    raw = _mrc_bytes(data, mode, order, ext, (axes[0], axes[1], axes[2]), dtype.kind == "i")
    src = tmp / ("s.mrcs" if stack else "s.mrc")
    src.write_bytes(raw)
    archive = compress(src, tmp, 0)
    assert restored_sha256(archive) == hashlib.sha256(raw).hexdigest()
    result = restore_file(archive, tmp / "back.mrc")
    assert result.byte_identical
    assert result.path.read_bytes() == raw


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kind=st.sampled_from(["u1", "i1", "u2", "i2", "f4", "f2"]),
    order=st.sampled_from("<>"),
    pages=st.integers(1, 4),
    ny=st.integers(1, 40),
    nx=st.integers(1, 30),
    rowsperstrip=st.integers(1, 40),
    miniswhite=st.booleans(),
    compression=st.sampled_from([None, None, "zlib", "packbits", "lzw"]),
    imagej=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_tiff_is_hashed_and_uncompressed_ones_restore(
    tmp_path_factory: pytest.TempPathFactory,
    kind: str,
    order: str,
    pages: int,
    ny: int,
    nx: int,
    rowsperstrip: int,
    miniswhite: bool,
    compression: str | None,
    imagej: bool,
    seed: int,
) -> None:
    """tifffile-written TIFFs of every pixel type, byte order, strip size and
    compression: the recorded SHA-256 is the file's, and they come back byte for byte
    at bits 0 (compressed strips are encoded again with the same codecs)."""
    tmp = tmp_path_factory.mktemp("tif")
    rng = np.random.default_rng(seed)
    dtype = np.dtype(kind)
    if imagej and (kind in ("i1", "f2") or order == ">" or miniswhite):
        imagej = False  # ImageJ files are little-endian u1/u2/i2/f4 and min-is-black
    if dtype.kind == "f":
        data = rng.normal(0, 100, size=(pages, ny, nx)).astype(dtype)
    else:
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, size=(pages, ny, nx), endpoint=True)
        data = data.astype(dtype)
    src = tmp / "s.tif"
    tifffile.imwrite(
        src,
        data,
        byteorder=order,
        imagej=imagej,
        rowsperstrip=rowsperstrip,
        photometric="miniswhite" if miniswhite else "minisblack",
        compression=compression,
        software="e2compress test",
        metadata={"spacing": 1.5, "unit": "nm"} if imagej else {},
    )
    raw = src.read_bytes()
    archive = compress(src, tmp, 0)
    with h5py.File(archive, "r") as f:
        assert f.attrs["e2compress.source_sha256"].decode() == hashlib.sha256(raw).hexdigest()
    result = restore_file(archive, tmp / "back.tif")  # tifffile's own codecs: the same
    assert result.byte_identical
    assert result.path.read_bytes() == raw


@pytest.mark.parametrize("src", [*MRC_FILES, *TIFF_FILES])
def test_hash_needs_no_extra_read(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compression's own reads cover every byte: the hasher never reads itself."""
    rereads: list[int] = []
    finish = OrderedHasher.finish

    def spy(self: OrderedHasher, pread: Any) -> str:
        digest = finish(self, pread)
        rereads.append(self.reread)
        return digest

    monkeypatch.setattr(OrderedHasher, "finish", spy)
    compress(src, tmp_path, 5)
    assert rereads == ([] if src.suffix == ".bz2" else [0])


def test_compressed_tiff_whose_strips_encode_differently(tmp_path: Path) -> None:
    """Strips deflated at level 9 and encoded again at tifffile's default level: the
    ones that grow move to the end of the file and the strip tables are written again;
    pixels and every other tag are the same, and restore says it is not identical."""
    rng = np.random.default_rng(5)
    data = (rng.normal(0, 3, size=(3, 64, 48)).cumsum(axis=2) + 1000).astype(np.uint16)
    src = tmp_path / "deflate9.tif"
    tifffile.imwrite(
        src,
        data,
        photometric="minisblack",
        compression="zlib",
        compressionargs={"level": 9},
        rowsperstrip=5,
    )
    archive = compress(src, tmp_path, 0)
    result = restore_file(archive, tmp_path / "back.tif")
    assert not result.byte_identical
    assert result.reencoded
    assert not result.quantised
    assert "tags and pixels identical" in result.describe()
    assert restored_sha256(archive) is None
    assert result.sha256 == sha256(result.path)
    assert result.size > src.stat().st_size  # strips that grew went to the end
    assert_same_tiff(src, result.path, strips_moved=True)
    with tifffile.TiffFile(result.path) as tif:
        ends = [
            o + c for p in tif.pages for o, c in zip(p.dataoffsets, p.databytecounts, strict=True)
        ]
    assert max(ends) <= result.size


def test_only_the_compression_keeps_and_hashes(tmp_path: Path) -> None:
    """Other readers (info, compare, export, watch) neither keep nor hash."""
    for src in CORE_FILES:
        with e2compress.open_source(src) as source:
            assert source.kept() is None
        with e2compress.open_source(src, keep=True) as source:
            for i in range(len(source)):
                source.image(i)
            kept = source.kept()
            assert kept is not None
            assert kept.source_sha256 == sha256(src)


@pytest.mark.parametrize("miniswhite", [False, True])
def test_quantised_restore_holds_the_decoded_values(tmp_path: Path, miniswhite: bool) -> None:
    """At 5 bits the rebuilt file has the source's headers and layout and the decoded
    values, in the source's type (integers rounded), rows and sign as the source stores
    them."""
    rng = np.random.default_rng(9)
    data = rng.integers(0, 4000, size=(2, 30, 20)).astype(np.uint16)
    src = tmp_path / "q.tif"
    tifffile.imwrite(src, data, photometric="miniswhite" if miniswhite else "minisblack")
    archive = compress(src, tmp_path, 5)
    result = restore_file(archive, tmp_path / "back.tif")
    assert not result.byte_identical
    assert result.quantised
    assert "quantised" in result.describe()
    decoded = e2compress.read_images(archive)  # as EMAN2 sees them: flipped, negated
    with tifffile.TiffFile(result.path) as tif:
        for page, values in zip(tif.pages, decoded, strict=True):
            stored = np.rint(-values if miniswhite else values)[::-1]
            np.testing.assert_array_equal(page.asarray(), stored.astype(np.uint16))
    raw, got = src.read_bytes(), result.path.read_bytes()
    assert len(raw) == len(got)
    with tifffile.TiffFile(src) as tif:
        first = int(min(tif.pages[0].dataoffsets))
    assert raw[:first] == got[:first]


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_tiled_tiff_is_hashed_and_refused(
    tmp_path: Path, compression: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tiles are not rebuilt: the hash is still the file's; restore refuses in one line."""
    data = np.arange(64 * 48, dtype=np.uint16).reshape(64, 48)
    src = tmp_path / "tiled.tif"
    tifffile.imwrite(src, data, tile=(16, 16), compression=compression)
    archive = compress(src, tmp_path, 0)
    with h5py.File(archive, "r") as f:
        assert f.attrs["e2compress.source_sha256"].decode() == sha256(src)
    assert restored_sha256(archive) is None
    out = tmp_path / "out"
    out.mkdir()
    rc, _, err = run_cli(capsys, "restore", archive, out)
    assert rc == 1
    assert err.count("\n") == 1
    assert "cannot be encoded again" in err
    assert list(out.iterdir()) == []


def test_no_hashing_thread_outlives_its_file(tmp_path: Path) -> None:
    """The hasher's thread ends with the file, whether it was compressed or refused."""
    good = write_mrc(tmp_path / "good.mrc", np.ones((40, 30), dtype=np.float32))
    bad = write_mrc(tmp_path / "bad.mrc", np.full((40, 30), np.nan, dtype=np.float32))
    compress(good, tmp_path, 5)
    with pytest.raises(InputError, match="NaN"):
        compress(bad, tmp_path, 5)
    assert not [t for t in threading.enumerate() if t.name == "e2compress-sha256"]


def test_recompressing_a_quantised_archive_as_float_keeps_it_quantised(tmp_path: Path) -> None:
    """Float data at 10 bits, then in place as float32: the values stay the rounded ones,
    so the archive must not claim byte for byte (and restore says why, without error)."""
    data = np.random.default_rng(4).normal(size=(20, 30)).astype(np.float32)
    src = write_mrc(tmp_path / "f.mrc", data)
    archive = compress(src, tmp_path, 10)
    e2compress.compress_file(archive, bits=0, threads=1, force=True)
    with h5py.File(archive, "r") as f:
        assert f["MDF/images/0/image"].dtype == np.float32
        assert int(f.attrs["e2compress.restorable"]) == 0
        assert "quantised when first compressed" in f.attrs["e2compress.restore_note"].decode()
    result = restore_file(archive, tmp_path / "back.mrc")
    assert not result.byte_identical
    assert "quantised when first compressed" in result.describe()
    assert result.path.read_bytes()[:1024] == src.read_bytes()[:1024]


def test_restored_sha256_of_off_grid_quantised_values_decodes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Levels that are not whole numbers apart cannot give the source back: None at once
    (a 4 GB movie is not decoded to learn it)."""
    data = np.random.default_rng(6).normal(size=(30, 40)).astype(np.float32)
    archive = compress(write_mrc(tmp_path / "n.mrc", data), tmp_path, 8)

    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded")

    monkeypatch.setattr("e2compress.rebuild._Values._section", no_decoding)
    assert restored_sha256(archive) is None


def test_restore_into_a_missing_directory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``restore x.hdf out/`` names a directory: when it does not exist, one line, and no
    file called ``out`` is written in its place."""
    _, archive = _small_archive(tmp_path)
    rc, stdout, err = run_cli(capsys, "restore", archive, f"{tmp_path / 'out'}/")
    assert rc == 1
    assert stdout == ""
    assert err.count("\n") == 1
    assert "no such directory" in err
    assert not (tmp_path / "out").exists()
