"""Input readers (read_mrc, read_tiff, read_hdf): every frame the file holds, read as the
file says, and a clear one-line InputError whenever the file disagrees with itself.

Truth: arrays written here with mrcfile/tifffile, bytes patched at documented offsets,
values computed by hand, and (with ``E2C_EMAN2``) real EMAN2's read-back.
"""

from __future__ import annotations

import bz2
import gzip
import os
import shutil
import struct
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import h5py
import mrcfile
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import e2compress
from e2compress import E2CompressError, InputError, compress_file, read_images
from e2compress.readers import (
    HdfSource,
    ImageSource,
    MrcSource,
    TiffSource,
    is_hdf5,
    open_source,
    strip_compression,
)
from helpers import REAL, eman2_read, write_mrc

F32 = np.float32
SRC = Path(e2compress.__file__).resolve().parents[1]  # the e2compress under test
IMOD_STAMP = 1146047817


def patch(path: Path, offset: int, fmt: str, *values: object) -> Path:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(struct.pack(fmt, *values))
    return path


def run_limited(
    script: str, *args: object, tmpdir: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh interpreter that imports the e2compress under test."""
    env = dict(os.environ, PYTHONPATH=str(SRC), OPENBLAS_NUM_THREADS="1")
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def assert_no_output(directory: Path, *keep: str) -> None:
    assert sorted(p.name for p in directory.iterdir()) == sorted(keep)


def test_readers_reexported_from_sources() -> None:
    from e2compress.readers import hdf as read_hdf
    from e2compress.readers import mrc as read_mrc
    from e2compress.readers import tiff as read_tiff

    assert MrcSource is read_mrc.MrcSource
    assert TiffSource is read_tiff.TiffSource
    assert HdfSource is read_hdf.HdfSource
    assert issubclass(MrcSource, ImageSource)
    assert callable(open_source)
    assert callable(is_hdf5)
    assert strip_compression("a.mrc.gz") == "a.mrc"


# ------------------------------------------------------------------ MRC header sizes

NSYMBT_SCRIPT = """
import resource, sys
from e2compress.errors import InputError
from e2compress.readers import open_source
with open("/proc/self/statm") as fh:
    vm = int(fh.read().split()[0]) * resource.getpagesize()
limit = vm + (512 << 20)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    open_source(sys.argv[1]).close()
    print("OPENED")
except InputError as exc:
    print("InputError:", exc)
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_huge_nsymbt_refused_before_allocating(tmp_path: Path) -> None:
    """A 33 kB MRC whose nsymbt (int32 at byte 92) claims 2 GiB: a clean error naming
    nsymbt, within 512 MB of address space (mrcfile alone would allocate 2.1 GB)."""
    path = write_mrc(tmp_path / "x.mrc", np.ones((20, 20, 20), F32))
    patch(path, 92, "<i", 2147483647)
    proc = run_limited(NSYMBT_SCRIPT, path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("InputError:"), proc.stdout + proc.stderr
    assert "nsymbt=2147483647" in proc.stdout
    assert f"({path.stat().st_size} bytes)" in proc.stdout


def test_mrc_longer_than_header_is_an_error(tmp_path: Path) -> None:
    """Bytes beyond what the header says (nz not yet updated by a writer, or a wrong
    header) must not be silently dropped."""
    data = np.arange(3 * 8 * 10, dtype=F32).reshape(3, 8, 10)
    path = write_mrc(tmp_path / "s.mrcs", data)
    with open(path, "ab") as fh:
        fh.write(np.ones((8, 10), F32).tobytes())  # a fourth section, nz still 3
    with pytest.raises(InputError, match="320 bytes more than its header says"):
        open_source(path)
    with pytest.raises(E2CompressError, match="more than its header"):
        compress_file(path, tmp_path / "s.hdf", bits=8)
    assert_no_output(tmp_path, "s.mrcs")


MODES = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16, 12: np.float16}


@settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    mode=st.sampled_from(sorted(MODES)),
    nx=st.integers(1, 9),
    ny=st.integers(1, 9),
    nz=st.integers(1, 4),
    nsymbt=st.sampled_from([0, 80, 2**20, 2**31 - 1]),
    delta=st.integers(-3, 3),
)
def test_mrc_opens_exactly_when_sizes_agree(
    tmp_path: Path, mode: int, nx: int, ny: int, nz: int, nsymbt: int, delta: int
) -> None:
    """General rule: a plain MRC opens iff its length is 1024 + nsymbt + nx*ny*nz*itemsize
    (the length is the true one plus ``delta`` bytes, clipped to what was written)."""
    itemsize = np.dtype(MODES[mode]).itemsize
    body = nx * ny * nz * itemsize
    real_ext = min(nsymbt, 160)  # never write megabytes: large nsymbt means a lying header
    path = tmp_path / "h.mrc"
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.zeros((nz, ny, nx), MODES[mode]))
    raw = bytearray(path.read_bytes()[:1024])
    struct.pack_into("<i", raw, 92, nsymbt)
    length = max(0, 1024 + real_ext + body + delta)
    blob = (bytes(raw) + bytes(real_ext) + bytes(range(256)) * (body // 256 + 4))[:length]
    path.write_bytes(blob)
    agrees = length == 1024 + nsymbt + body
    if agrees:
        with open_source(path) as src:
            assert src.shape(0) == (nz, ny, nx)
            assert src.read(0, nz - 1, 0, ny).shape == (ny, nx)
    else:
        with pytest.raises(InputError) as err:
            open_source(path).close()
        assert str(err.value).count("\n") == 0


# ------------------------------------------------------------------ MRC mode 0


def _mode0(path: Path, nversion: int, imod_flags: int | None) -> Path:
    raw = np.array([[0, 1, 127, 128], [200, 255, 3, 4]], np.uint8)
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(raw.view(np.int8))
        m.header.nversion = nversion
    if imod_flags is not None:
        patch(path, 152, "<ii", IMOD_STAMP, imod_flags)
    return path


UNSIGNED = [[0, 1, 127, 128], [200, 255, 3, 4]]
SIGNED = [[0, 1, 127, -128], [-56, -1, 3, 4]]
MODE0_CASES = {
    # (nversion, IMOD flags or None for no stamp) -> values
    "imod-unsigned": (20140, 0, UNSIGNED),
    "imod-signed-flag": (20140, 1, SIGNED),
    "imod-other-flags": (20140, 2, UNSIGNED),
    "pre-2014-no-stamp": (0, None, UNSIGNED),
    "mrc2014-20140": (20140, None, SIGNED),
    "mrc2014-20141": (20141, None, SIGNED),
}


@pytest.mark.parametrize("case", list(MODE0_CASES))
def test_mode0_signedness(case: str, tmp_path: Path) -> None:
    """Mode 0 is signed only when the file says so (IMOD flag bit 0, or an MRC2014
    writer without an IMOD stamp); values checked through compression too."""
    nversion, flags, want = MODE0_CASES[case]
    path = _mode0(tmp_path / "b.mrc", nversion, flags)
    with open_source(path) as src:
        assert src.image(0).tolist() == want
        assert src.dtype(0) == (np.int8 if want is SIGNED else np.uint8)
    compress_file(path, tmp_path / "b.hdf", bits=8)
    (got,) = read_images(tmp_path / "b.hdf")
    assert np.array_equal(got, np.array(want, F32))  # 256 levels: integers exact


@pytest.mark.parametrize("case", ["imod-unsigned", "pre-2014-no-stamp"])
def test_mode0_unsigned_matches_eman2(case: str, tmp_path: Path) -> None:
    """EMAN2 reads every mode 0 file as unsigned bytes; where the file says unsigned, we
    agree with it (for signed files we deliberately differ, see read_mrc)."""
    nversion, flags, _ = MODE0_CASES[case]
    path = _mode0(tmp_path / "b.mrc", nversion, flags)
    theirs, _ = eman2_read(path, tmp_path)
    with open_source(path) as src:
        assert np.array_equal(theirs[0], src.image(0).astype(F32))


# ------------------------------------------------------------------ compressed MRC


def _pack(path: Path, suffix: str, extra: bytes = b"", cut: int = 0) -> Path:
    raw = path.read_bytes() + extra
    raw = raw[: len(raw) - cut]
    out = path.with_name(path.name + suffix)
    out.write_bytes(gzip.compress(raw, 1) if suffix == ".gz" else bz2.compress(raw, 1))
    path.unlink()
    return out


@pytest.mark.parametrize("suffix", [".gz", ".bz2"])
def test_compressed_mrc_longer_than_header(suffix: str, tmp_path: Path) -> None:
    data = np.ones((2, 8, 8), F32)
    packed = _pack(write_mrc(tmp_path / "s.mrcs", data), suffix, extra=b"\0" * 256)
    with pytest.raises(InputError, match="longer than its header says"):
        open_source(packed)
    assert_no_output(tmp_path, packed.name)


@pytest.mark.parametrize("suffix", [".gz", ".bz2"])
def test_compressed_mrc_shorter_than_header(suffix: str, tmp_path: Path) -> None:
    data = np.ones((2, 8, 8), F32)
    packed = _pack(write_mrc(tmp_path / "s.mrcs", data), suffix, cut=4)
    with pytest.raises(InputError, match="truncated: header says 1536 bytes"):
        open_source(packed)


BOMB_SCRIPT = """
import resource, sys
from e2compress.errors import E2CompressError
from e2compress.readers import open_source
limit = 16 << 20
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    open_source(sys.argv[1]).close()  # scratch: the default, $TMPDIR
    print("OPENED")
except E2CompressError as exc:
    print(type(exc).__name__ + ":", exc)
"""


def test_gzip_bomb_stops_at_header_size(tmp_path: Path) -> None:
    """A 2.6 kB MRC followed by 256 MiB of zeros in one gzip stream: refused as longer
    than its header, after writing no more than that (files capped at 16 MiB here)."""
    plain = write_mrc(tmp_path / "b.mrc", np.ones((20, 20), F32)).read_bytes()
    bomb = tmp_path / "b.mrc.gz"
    zeros = bytes(1 << 20)
    with gzip.open(bomb, "wb", compresslevel=1) as fh:
        fh.write(plain)
        for _ in range(256):
            fh.write(zeros)
    (tmp_path / "b.mrc").unlink()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = run_limited(BOMB_SCRIPT, bomb, tmpdir=scratch)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("InputError:"), proc.stdout + proc.stderr
    assert "longer than its header says (2624 bytes)" in proc.stdout
    assert list(scratch.iterdir()) == []


def test_gz_mrc_streamed_in_bounded_memory(tmp_path: Path) -> None:
    """96 MiB of int16 sections in a .gz: every section reads back right while Python's
    peak allocation stays far below the data size (it was decompressed whole)."""
    nz, ny, nx = 48, 1024, 1024
    data = ((np.arange(nz * ny * nx, dtype=np.int64) * 7) % 1999 - 999).astype(np.int16)
    data = data.reshape(nz, ny, nx)
    plain = write_mrc(tmp_path / "movie.mrcs", data)
    packed = tmp_path / "movie.mrcs.gz"
    with open(plain, "rb") as src, gzip.open(packed, "wb", compresslevel=1) as dst:
        shutil.copyfileobj(src, dst, 8 << 20)
    plain.unlink()
    tracemalloc.start()
    try:
        with open_source(packed) as source:
            assert len(source) == nz
            for z in range(nz):
                assert np.array_equal(source.read(z, 0, 0, ny), data[z])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 24 << 20, f"peak {peak / 2**20:.0f} MiB for {data.nbytes / 2**20:.0f} MiB"


def _open_files() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:  # the descriptor listdir used
            pass
    return out


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")
def test_decompressed_into_scratch_dir_and_unnamed(tmp_path: Path) -> None:
    """The scratch file lives in ``scratch_dir`` and has no name there (nothing to leave
    behind if the run is killed)."""
    data = np.ones((2, 8, 8), F32)
    packed = _pack(write_mrc(tmp_path / "s.mrcs", data), ".gz")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with open_source(packed, scratch_dir=scratch):
        targets = _open_files()
        assert any(t.startswith(str(scratch)) and t.endswith("(deleted)") for t in targets)
        assert list(scratch.iterdir()) == []
    assert list(scratch.iterdir()) == []


# ------------------------------------------------------------------ FEI extended header

FEI_RAW = {  # field: (offset in the first 768-byte record, struct format), FEI MRC2014 spec
    "Bitmask 1": (8, "<I"),
    "Bitmask 2": (297, "<I"),
    "Bitmask 3": (490, "<I"),
    "Bitmask 4": (748, "<I"),
    "HT": (84, "<d"),
    "Spot index": (309, "<i"),
    "Binning Width": (427, "<i"),
    "Readout area right": (459, "<i"),
}
FEI_TEXT = {  # field: (offset, length)
    "Microscope type": (20, 16),
    "D-Number": (36, 16),
    "Application": (52, 16),
    "Application version": (68, 16),
    "Illumination mode": (337, 16),
    "Camera name": (435, 16),
}


@pytest.mark.shared
def test_fei_extended_header_types() -> None:
    """FEIMRC bitmasks are uint32 (not floats), numbers and text equal the raw bytes."""
    path = REAL / "fei-extended.mrc"
    record = path.read_bytes()[1024 : 1024 + 768]
    with open_source(path) as src:
        keys = src.header(0)
    for name, (offset, fmt) in FEI_RAW.items():
        (want,) = struct.unpack_from(fmt, record, offset)
        got = keys[f"FEIMRC.{name}"]
        assert got == want, name
        if name.startswith("Bitmask"):
            assert isinstance(got, np.uint32), (name, type(got))
    assert keys["FEIMRC.Bitmask 1"] == 4294955007  # > 2**31: a float32 would round it
    for name, (offset, length) in FEI_TEXT.items():
        want_text = record[offset : offset + length].split(b"\0")[0].decode("ascii")
        assert keys[f"FEIMRC.{name}"] == want_text, name
    assert keys["FEIMRC.Microscope type"] == "TITAN52336320"
    assert "FEIMRC.Unused range" not in keys
    for key, value in keys.items():
        if key.startswith("FEIMRC.") and isinstance(value, str):
            assert value.isprintable(), (key, value)
            assert value.isascii(), (key, value)


@pytest.mark.shared
def test_fei_bitmask_written_as_uint32(tmp_path: Path) -> None:
    out = tmp_path / "fei.hdf"
    compress_file(REAL / "fei-extended.mrc", out, bits=4)
    with h5py.File(out, "r") as f:
        attr = f["MDF/images/0"].attrs["EMAN.FEIMRC.Bitmask 1"]
    assert np.asarray(attr).dtype == np.uint32
    assert int(np.ravel(attr)[0]) == 4294955007


# ------------------------------------------------------------------ TIFF frames


def _stack(n: int = 6, ny: int = 24, nx: int = 32) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 60000, (n, ny, nx)).astype(np.uint16)


def test_imagej_frames_behind_one_ifd(tmp_path: Path) -> None:
    """ImageJ > 4 GB layout (every frame after a single IFD): all frames, not one."""
    data = _stack()
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TYX"}, truncate=True)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 1  # the layout under test
    with open_source(path) as src:
        assert len(src) == len(data)
        for i, frame in enumerate(data):
            assert np.array_equal(src.image(i), frame[::-1])  # rows flipped, as EMAN2
            assert np.array_equal(src.read(i, 0, 3, 17), frame[::-1][3:17])
    out = tmp_path / "hyper.hdf"
    compress_file(path, out, bits=0)
    got = read_images(out)
    assert len(got) == len(data)
    for image, frame in zip(got, data, strict=True):
        assert np.array_equal(image, frame[::-1].astype(F32))


def _replace(path: Path, old: bytes, new: bytes) -> Path:
    blob = path.read_bytes()
    assert blob.count(old) == 1
    assert len(old) == len(new)
    path.write_bytes(blob.replace(old, new))
    return path


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (b"images=6", b"images=7", "TIFF has 6 images, but its ImageJ description says images=7"),
        (b"frames=6", b"frames=5", "TIFF has 6 images, but its ImageJ description says frames=5"),
    ],
)
def test_imagej_count_disagrees(old: bytes, new: bytes, message: str, tmp_path: Path) -> None:
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, _stack(), imagej=True, metadata={"axes": "TYX"})
    _replace(path, old, new)
    with pytest.raises(InputError, match=message):
        open_source(path)


@pytest.mark.parametrize("planes", [5, 7])
def test_ome_count_disagrees(planes: int, tmp_path: Path) -> None:
    path = tmp_path / "o.ome.tif"
    tifffile.imwrite(path, _stack(), ome=True, metadata={"axes": "TYX"})
    _replace(path, b'SizeT="6"', f'SizeT="{planes}"'.encode())
    with pytest.raises(InputError, match=f"6 images, but its OME metadata says {planes} planes"):
        open_source(path)


TIFF_LAYOUTS: dict[str, dict[str, object]] = {
    "plain": {},
    "imagej": {"imagej": True, "metadata": {"axes": "TYX"}},
    "imagej-one-ifd": {"imagej": True, "metadata": {"axes": "TYX"}, "truncate": True},
    "zlib": {"compression": "zlib"},
    "ome": {"ome": True, "metadata": {"axes": "TYX"}},
    "bigtiff-lzw": {"bigtiff": True, "compression": "lzw"},
}


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9, 0.98])
@pytest.mark.parametrize("layout", list(TIFF_LAYOUTS))
def test_tiff_being_written_is_an_error(layout: str, keep: float, tmp_path: Path) -> None:
    """A multi-page TIFF cut short (still being written) fails, never compresses to fewer
    images; the good file of the same layout compresses fully."""
    data = _stack()
    full = tmp_path / "full.tif"
    tifffile.imwrite(full, data, **TIFF_LAYOUTS[layout])  # type: ignore[arg-type]
    compress_file(full, tmp_path / "full.hdf", bits=0)
    assert len(read_images(tmp_path / "full.hdf")) == len(data)
    blob = full.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(blob[: int(len(blob) * keep)])
    with pytest.raises(E2CompressError) as err:
        compress_file(cut, tmp_path / "cut.hdf", bits=0)
    assert "\n" not in str(err.value)
    assert str(cut) in str(err.value)
    assert not (tmp_path / "cut.hdf").exists()


MINISWHITE_U8 = np.array([[0, 1, 2, 200], [10, 20, 30, 255], [5, 6, 7, 8]], np.uint8)
# By hand: EMAN2 negates MINISWHITE values (TiffIO::read_data) and flips rows.
MINISWHITE_U8_READ = [[-5, -6, -7, -8], [-10, -20, -30, -255], [0, -1, -2, -200]]
MINISWHITE_U16 = np.array([[0, 1, 2, 60000], [10, 20, 30, 65535], [5, 6, 7, 8]], np.uint16)
MINISWHITE_U16_READ = [[-5, -6, -7, -8], [-10, -20, -30, -65535], [0, -1, -2, -60000]]
MINISWHITE = {
    "uint8": (MINISWHITE_U8, {}, MINISWHITE_U8_READ),
    "uint16": (MINISWHITE_U16, {}, MINISWHITE_U16_READ),
    "uint16-zlib": (MINISWHITE_U16, {"compression": "zlib"}, MINISWHITE_U16_READ),
}


@pytest.mark.parametrize("case", list(MINISWHITE))
def test_miniswhite_negated_like_eman2(case: str, tmp_path: Path) -> None:
    raw, options, want = MINISWHITE[case]
    path = tmp_path / "w.tif"
    tifffile.imwrite(path, raw, photometric="miniswhite", **options)  # type: ignore[arg-type]
    with open_source(path) as src:
        assert src.image(0).tolist() == want
    compress_file(path, tmp_path / "w.hdf", bits=0)
    (got,) = read_images(tmp_path / "w.hdf")
    assert np.array_equal(got, np.array(want, F32))


@pytest.mark.parametrize("case", ["uint8", "uint16"])
def test_miniswhite_matches_eman2(case: str, tmp_path: Path) -> None:
    raw, _, want = MINISWHITE[case]
    path = tmp_path / "w.tif"
    tifffile.imwrite(path, raw, photometric="miniswhite")
    theirs, _ = eman2_read(path, tmp_path)
    assert np.array_equal(theirs[0], np.array(want, F32))


# ------------------------------------------------------------------ EMAN2 HDF input


def _empty_eman_hdf(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        images = f.create_group("MDF/images")
        images.attrs.create("imageid_max", np.array([-1], dtype=np.int32))
    return path


@pytest.mark.parametrize("build", [_empty_eman_hdf], ids=["imageid_max=-1"])
def test_eman_hdf_without_images(build: Callable[[Path], Path], tmp_path: Path) -> None:
    path = build(tmp_path / "none.hdf")
    with pytest.raises(InputError, match="holds no images"):
        open_source(path)
    with pytest.raises(E2CompressError, match="no images"):
        compress_file(path, tmp_path / "out.hdf", bits=5)
    assert_no_output(tmp_path, "none.hdf")
