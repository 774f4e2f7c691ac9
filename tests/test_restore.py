"""Kept source bytes, the source's SHA-256 and ``e2compress restore`` (issue 14)."""

from __future__ import annotations

import bz2
import hashlib
import itertools
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import e2compress
from conftest import CORE_FILES, plain_name, real_file_params, run_cli, true_images, write_mrc
from e2compress.errors import InputError, OutputError
from e2compress.kept import OrderedHasher
from e2compress.restore import restore_file, restored_sha256

MRC_FILES = [p for p in real_file_params() if not plain_name(p.values[0]).endswith(".tif")]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
