"""Fuzzing the readers with hypothesis: mutated real files (MRC headers, TIFF headers and
tag directories, EMAN2 HDF5 metadata, truncations) must either compress to a valid
EMAN2 file with the right number of images or raise E2CompressError, without any
other exception, without hanging (a 60 s guard, not a speed limit: speed is for the
benchmarks) and without leaving an output or a temporary file behind.

Runs are deterministic (``derandomize``); ``E2C_FUZZ_EXAMPLES`` scales the number of
examples (default 1.0x) for longer local runs.
"""

from __future__ import annotations

import gc
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import strategies as st

from e2compress import E2CompressError, compress_file, open_source
from helpers import (
    REAL,
    Mapping,
    assert_within_half_step,
    eman_decode,
    fuzz_settings,
    hard_timeout,
    write_eer,
    write_mrc,
    write_mrc_4bit,
)

pytestmark = pytest.mark.shared

F32 = np.float32
HANG_SECONDS = 60  # SIGALRM hang guard: a hang fails the example instead of the whole run
MODE101_SEED = "k2_4bit.mrcs"  # generated: SerialEM's packed 4-bit MRC, odd nx
MRC_SEEDS = ("EMD-3197.map", "smallStack.mrcs", MODE101_SEED)
EER_SEED = "falcon.eer"  # generated: an EER movie (3 frames of 24 x 40)
TIFF_SEEDS = ("KLH.tif", "test_loading_image_saved_with_DM.tif", EER_SEED)
HDF_SEED = "synthetic.hdf"


# --------------------------------------------------------------------------- seeds


def _synthetic_hdf(path: Path) -> None:
    """A small EMAN2 .hdf written by e2compress: a 3-image stack (MRC stack input)."""
    work = Path(tempfile.mkdtemp())
    try:
        data = (np.random.default_rng(5).random((3, 24, 32)) * 50 - 10).astype(F32)
        write_mrc(work / "s.mrcs", data)
        compress_file(work / "s.mrcs", path, bits=8, threads=1)
    finally:
        shutil.rmtree(work)


SEEDS: dict[str, bytes] = {}  # filled once per module (kept out of hypothesis' reports)
SCRATCH: list[Path] = []


@pytest.fixture(scope="module", autouse=True)
def _seeds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    if not REAL.is_dir():
        pytest.skip("../shared/data is not present beside the repo")
    real = [name for name in (*MRC_SEEDS, *TIFF_SEEDS) if name not in (MODE101_SEED, EER_SEED)]
    SEEDS.update({name: (REAL / name).read_bytes() for name in real})
    hdf = tmp_path_factory.mktemp("seed") / HDF_SEED
    counts = np.random.default_rng(6).integers(0, 16, (3, 20, 33)).astype(np.uint8)
    SEEDS[MODE101_SEED] = write_mrc_4bit(hdf.parent / MODE101_SEED, counts).read_bytes()
    events = (np.random.default_rng(7).random((3, 24, 40)) < 0.05).astype(np.uint8)
    SEEDS[EER_SEED] = write_eer(hdf.parent / EER_SEED, events, bigtiff=False).read_bytes()
    _synthetic_hdf(hdf)
    SEEDS[HDF_SEED] = hdf.read_bytes()
    SCRATCH.append(tmp_path_factory.mktemp("fuzz"))
    yield
    SEEDS.clear()
    SCRATCH.clear()


# --------------------------------------------------------------------------- the property


def assert_holds(decoded: np.ndarray, mapping: Mapping, orig: np.ndarray) -> None:
    """``decoded`` is ``orig`` to within half a step inside the stored range; pixels
    outside it (EMAN2's integer rule may clamp) hold the end values and are counted."""
    assert mapping[0] == 5
    assert_within_half_step(orig, decoded, mapping)


def check_compress(name: str, blob: bytes) -> str:
    """compress_file on ``blob`` saved as ``name``: succeeds with a valid output, or raises
    E2CompressError naming the file and leaves nothing behind. Returns "ok" or "error"."""
    work = Path(tempfile.mkdtemp(dir=SCRATCH[0]))
    try:
        src = work / name
        src.write_bytes(blob)
        out = work / "out.hdf"
        error: E2CompressError | None = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with hard_timeout(HANG_SECONDS):
                try:
                    compress_file(src, out, bits=5)
                except E2CompressError as exc:
                    error = exc
            gc.collect()  # unclosed-file warnings surface here, not in a later example
        escaped = [w for w in caught if not _tolerated(w)]
        assert [str(w.message) for w in escaped] == [], "warnings escaped to the user"
        assert src.read_bytes() == blob, "the input was modified"
        left = sorted(p.name for p in work.iterdir())
        if error is not None:
            message = str(error)
            assert "\n" not in message
            assert str(src) in message or str(out) in message, message
            assert left == [name], f"failure left files behind: {left}"
            return "error"
        assert left == sorted([name, "out.hdf"]), left
        decoded = eman_decode(out)
        with open_source(src) as source:
            assert len(decoded) == len(source)
            for i, (img, mapping) in enumerate(decoded):
                assert img.size == int(np.prod(source.shape(i)))
                assert np.isfinite(img).all()
                assert mapping is not None
                assert_holds(img, mapping, source.image(i))
        return "ok"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _tolerated(w: warnings.WarningMessage) -> bool:
    """Warnings the fuzz tests let pass (each has a deterministic test of its own)."""
    message = str(w.message)
    if issubclass(w.category, RuntimeWarning) and "mrcfile" in w.filename:
        return True  # the project's pytest configuration ignores these too
    if issubclass(w.category, ResourceWarning) and "unclosed file" in message:
        return True  # test_rejected_tiff_is_closed
    # tifffile, when a worker still decodes a page after the failed file was closed:
    # timing-dependent, see test_failed_file_not_read_after_close
    return "reading array from closed file" in message


def apply(blob: bytes, flips: list[tuple[int, int]], writes: list[tuple[int, bytes]]) -> bytes:
    """XOR ``flips`` (offset, mask), then overwrite ``writes`` (offset, bytes), in range."""
    data = bytearray(blob)
    for offset, mask in flips:
        if offset < len(data):
            data[offset] ^= mask
    for offset, raw in writes:
        end = min(len(data), offset + len(raw))
        if offset < end:
            data[offset:end] = raw[: end - offset]
    return bytes(data)


# --------------------------------------------------------------------------- MRC headers

# int32 words of the MRC header (MRC2014): nx ny nz mode nxstart.. mx my mz cella..
# mapc mapr maps dmin.. ispg nsymbt, and the extended-header type / version
MRC_WORDS = {
    "nx": 0,
    "ny": 4,
    "nz": 8,
    "mode": 12,
    "nxstart": 16,
    "mx": 28,
    "my": 32,
    "mz": 36,
    "cella_x": 40,
    "mapc": 64,
    "mapr": 68,
    "maps": 72,
    "dmin": 76,
    "ispg": 88,
    "nsymbt": 92,
    "nversion": 108,
    "origin_x": 196,
    "nlabl": 220,
}
INTERESTING_INT32 = [
    *range(-2, 8),
    12,
    16,
    101,
    255,
    1023,
    1024,
    4096,
    65535,
    65536,
    2**20,
    2**24,
    2**30,
    2**31 - 1,
    -(2**31),
    -1024,
]
INT32 = st.one_of(
    st.sampled_from(INTERESTING_INT32),
    st.integers(-(2**31), 2**31 - 1),
)
WORD_WRITES = st.lists(
    st.tuples(st.sampled_from(sorted(MRC_WORDS.values())), INT32).map(
        lambda t: (t[0], struct.pack("<i", t[1]))
    ),
    max_size=4,
)
TAG_WRITES = st.lists(
    st.one_of(
        st.tuples(
            st.just(104),
            st.sampled_from([b"FEI1", b"FEI2", b"MRCO", b"SERI", b"CCP4", b"\0\0\0\0"]),
        ),
        st.tuples(st.just(208), st.sampled_from([b"MAP ", b"PAM ", b"\0\0\0\0"])),
        st.tuples(st.just(212), st.sampled_from([b"\x11\x11\0\0", b"\x44\x44\0\0", b"\0\0\0\0"])),
    ),
    max_size=2,
)
HEADER_FLIPS = st.lists(st.tuples(st.integers(0, 1023), st.integers(1, 255)), max_size=6)


def _word(name: str, value: int) -> tuple[int, bytes]:
    return MRC_WORDS[name], struct.pack("<i", value)


@pytest.mark.parametrize("seed", MRC_SEEDS)
@fuzz_settings(70, HealthCheck.too_slow, HealthCheck.data_too_large, print_blob=True)
@given(flips=HEADER_FLIPS, words=WORD_WRITES, tags=TAG_WRITES, cut=st.none() | st.floats(0, 1))
@example(flips=[], words=[_word("nx", 2**30)], tags=[], cut=None)
@example(
    flips=[], words=[_word("nx", 2**16), _word("ny", 2**16), _word("nz", 2**15)], tags=[], cut=None
)
@example(flips=[], words=[_word("nsymbt", 2**31 - 1)], tags=[], cut=None)
@example(flips=[], words=[_word("nsymbt", -1024)], tags=[], cut=None)
@example(flips=[], words=[_word("mode", 101)], tags=[], cut=None)
@example(flips=[], words=[_word("mode", 0)], tags=[], cut=None)
@example(flips=[], words=[_word("mode", 12)], tags=[], cut=None)
@example(flips=[], words=[_word("mapc", 3), _word("maps", 1)], tags=[], cut=None)
@example(flips=[], words=[_word("mapc", 2), _word("mapr", 2)], tags=[], cut=None)
@example(flips=[], words=[_word("nsymbt", 128)], tags=[(104, b"FEI1")], cut=None)
@example(flips=[], words=[], tags=[(212, b"\x11\x11\0\0")], cut=None)
def test_mutated_mrc_header(
    seed: str,
    flips: list[tuple[int, int]],
    words: list[tuple[int, bytes]],
    tags: list[tuple[int, bytes]],
    cut: float | None,
) -> None:
    blob = apply(SEEDS[seed], flips, [*words, *tags])
    if cut is not None:
        blob = blob[: int(cut * len(blob))]
    check_compress(seed, blob)


# --------------------------------------------------------------------------- TIFF


def _first_ifd(blob: bytes) -> int:
    order = "<" if blob[:2] == b"II" else ">"
    return int(struct.unpack(order + "I", blob[4:8])[0])


@st.composite
def tiff_mutation(draw: Any, size: int, ifd: int) -> list[tuple[int, int]]:
    """Byte flips in the first 4 KB (header, first strips) and in the tag directory."""
    head = st.tuples(st.integers(0, min(size, 4096) - 1), st.integers(1, 255))
    tags = st.tuples(st.integers(ifd, size - 1), st.integers(1, 255))
    return draw(st.lists(st.one_of(head, tags), min_size=1, max_size=8))


@pytest.mark.parametrize("seed", TIFF_SEEDS)
@fuzz_settings(50, HealthCheck.too_slow, HealthCheck.data_too_large, print_blob=True)
@given(data=st.data())
def test_mutated_tiff(seed: str, data: Any) -> None:
    blob = SEEDS[seed]
    flips = data.draw(tiff_mutation(len(blob), _first_ifd(blob)), label="flips")
    check_compress(seed, apply(blob, flips, []))


# --------------------------------------------------------------------------- EMAN2 HDF5


@fuzz_settings(80, HealthCheck.too_slow, HealthCheck.data_too_large, print_blob=True)
@given(data=st.data())
def test_mutated_eman_hdf(data: Any) -> None:
    """Byte flips in the HDF5 metadata (superblock, object headers, attributes, B-trees)
    and anywhere in the file."""
    blob = SEEDS[HDF_SEED]
    head = st.tuples(st.integers(0, min(len(blob), 4096) - 1), st.integers(1, 255))
    anywhere = st.tuples(st.integers(0, len(blob) - 1), st.integers(1, 255))
    flips = data.draw(st.lists(st.one_of(head, anywhere), min_size=1, max_size=6), label="flips")
    check_compress(HDF_SEED, apply(blob, flips, []))


# --------------------------------------------------------------------------- truncation


@pytest.mark.parametrize("seed", [*MRC_SEEDS, *TIFF_SEEDS, HDF_SEED])
@fuzz_settings(15, HealthCheck.too_slow, HealthCheck.data_too_large, print_blob=True)
@given(fraction=st.floats(0, 1, exclude_max=True))
@example(fraction=0.0)
@example(fraction=0.5)
def test_truncated(seed: str, fraction: float) -> None:
    blob = SEEDS[seed]
    check_compress(seed, blob[: int(fraction * len(blob))])


def test_seeds_compress() -> None:
    """The unmutated seeds all compress (the fuzzing starts from valid files)."""
    assert set(SEEDS) == {*MRC_SEEDS, *TIFF_SEEDS, HDF_SEED}
    for name, blob in SEEDS.items():
        assert check_compress(name, blob) == "ok", name


# --------------------------------------------------------------------------- found by fuzzing


def _cli(tmp_path: Path, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "e2compress", "--bits", "5", name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _assert_one_error_line(proc: subprocess.CompletedProcess[str], name: str) -> None:
    """Exit 1; stderr holds only the CLI's own lines for ``name``, no traceback."""
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert lines
    stray = [ln for ln in lines if not ln.startswith((f"ERROR: {name}: ", f"failed: {name}: "))]
    assert stray == [], proc.stderr
    assert "unexpected error" not in proc.stderr


def test_fei_type_without_fei_header_reports_one_line(tmp_path: Path) -> None:
    """exttyp FEI1 with an extended header that is not FEI: stderr holds the error line
    only, not also mrcfile's RuntimeWarning."""
    blob = apply(SEEDS["EMD-3197.map"], [], [_word("nsymbt", 128), (104, b"FEI1")])
    (tmp_path / "fei.map").write_bytes(blob)
    proc = _cli(tmp_path, "fei.map")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fei.map"]
    _assert_one_error_line(proc, "fei.map")


def _retag(blob: bytes, tag: int, *, dtype: int | None = None, value: int | None = None) -> bytes:
    """Change the type or the (inline) value of ``tag`` in the first IFD of a little-endian
    TIFF."""
    data = bytearray(blob)
    ifd = _first_ifd(blob)
    (count,) = struct.unpack("<H", data[ifd : ifd + 2])
    for k in range(count):
        entry = ifd + 2 + 12 * k
        if struct.unpack("<H", data[entry : entry + 2])[0] == tag:
            if dtype is not None:
                data[entry + 2 : entry + 4] = struct.pack("<H", dtype)
            if value is not None:
                data[entry + 8 : entry + 12] = struct.pack("<I", value)
            return bytes(data)
    raise AssertionError(f"tag {tag} not found")


@pytest.mark.parametrize(
    "case",
    ["image_length_bad_type", "image_width_zero", "image_width_many_values"],
)
def test_corrupt_tiff_tag_reported_on_one_line(tmp_path: Path, case: str) -> None:
    """Damaged TIFF size tags (cases the fuzzer found): the CLI fails with one line naming
    the file, nothing else on stderr (no tifffile log lines) and no 'unexpected error'."""
    blob = SEEDS["KLH.tif"]
    if case == "image_length_bad_type":
        blob = _retag(blob, 257, dtype=0)  # tifffile drops the tag: a 0-row page
    elif case == "image_width_zero":
        blob = _retag(blob, 256, value=0)
    else:
        # ImageWidth with 92 values (SHORT, count 92, pointing into pixel data)
        data = bytearray(_retag(blob, 256, dtype=3, value=1024))
        ifd = _first_ifd(blob)
        for k in range(struct.unpack("<H", data[ifd : ifd + 2])[0]):
            entry = ifd + 2 + 12 * k
            if struct.unpack("<H", data[entry : entry + 2])[0] == 256:
                data[entry + 4 : entry + 8] = struct.pack("<I", 92)
        blob = bytes(data)
    (tmp_path / "bad.tif").write_bytes(blob)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        with pytest.raises(E2CompressError):
            compress_file(tmp_path / "bad.tif", tmp_path / "lib.hdf", bits=5)
        gc.collect()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tif"]
    proc = _cli(tmp_path, "bad.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tif"]
    _assert_one_error_line(proc, "bad.tif")


def test_attribute_name_not_utf8(tmp_path: Path) -> None:
    """An EMAN2 .hdf whose attribute name has a byte that is not UTF-8 (h5py then gives
    the name as bytes): compressed or refused cleanly, one stderr line from the CLI."""
    blob = bytearray(SEEDS[HDF_SEED])
    at = blob.find(b"EMAN.apix_y")  # an image attribute (the MRC keys are on the stack)
    assert at > 0
    blob[at + len("EMAN.apix_")] ^= 0x80  # 'y' -> 0xf9
    assert check_compress("bad.hdf", bytes(blob)) in ("ok", "error")
    (tmp_path / "bad.hdf").write_bytes(bytes(blob))
    (tmp_path / "out").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "e2compress", "--bits", "5", "--outpath", "out", "bad.hdf"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (tmp_path / "bad.hdf").read_bytes() == bytes(blob)
    if proc.returncode == 0:
        assert proc.stderr == ""
    else:
        _assert_one_error_line(proc, "bad.hdf")


# Byte flips (offset, xor mask) in the synthetic EMAN2 .hdf that the fuzzer found to break
# the HDF reader (offsets from h5py 3 / HDF5 1.14 with libver="earliest"; on another
# layout they are still valid mutations, only perhaps less interesting ones).
KNOWN_HDF_DAMAGE = {
    "root_group_entry": [(113, 0xC6)],  # h5py raises KeyError opening /MDF/images
    "image_count": [(2963, 0xCB)],  # imageid_max < -1: len() raises ValueError
    "group_heap": [(2438, 0xF9), (2950, 0xF7)],  # RuntimeError iterating /MDF/images
}


@pytest.mark.parametrize("case", list(KNOWN_HDF_DAMAGE))
def test_known_damaged_hdf(case: str) -> None:
    check_compress(HDF_SEED, apply(SEEDS[HDF_SEED], KNOWN_HDF_DAMAGE[case], []))


def test_negative_image_count(tmp_path: Path) -> None:
    """``imageid_max`` damaged to -5: refused cleanly (one line), not a ValueError from
    ``len()``."""
    bad = tmp_path / "neg.hdf"
    bad.write_bytes(SEEDS[HDF_SEED])
    with h5py.File(bad, "r+") as f:
        images = f["MDF/images"]
        del images.attrs["imageid_max"]
        images.attrs.create("imageid_max", np.array([-5], dtype=np.int32))
    blob = bad.read_bytes()
    assert check_compress("neg.hdf", blob) in ("ok", "error")
    proc = _cli(tmp_path, "neg.hdf")
    assert bad.read_bytes() == blob
    if proc.returncode == 0:
        assert proc.stderr == ""
    else:
        _assert_one_error_line(proc, "neg.hdf")


def test_huge_values_no_overflow_warnings(tmp_path: Path) -> None:
    """Finite float32 pixels near 1e20 (their squares overflow float32): compressed
    without RuntimeWarnings on stderr, and the header's sigma is finite."""
    img = (np.random.default_rng(3).random((32, 32)) * 3e20).astype(F32)
    write_mrc(tmp_path / "big.mrc", img)  # mrcfile's own header statistics overflow
    proc = _cli(tmp_path, "big.mrc")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    with h5py.File(tmp_path / "big.hdf", "r") as f:
        attrs = f["MDF/images/0"].attrs
        assert np.isfinite(np.ravel(attrs["EMAN.sigma"])[0])
        assert np.isfinite(np.ravel(attrs["EMAN.mean"])[0])


def test_failed_file_not_read_after_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When one image of a file fails, worker tasks still running for its other images
    must finish before the file is closed (no reads from a closed - or reused - fd)."""
    from e2compress import InputError
    from e2compress.readers import MrcSource

    write_mrc(
        tmp_path / "stack.mrcs", (np.random.default_rng(4).random((4, 32, 32)) * 10).astype(F32)
    )
    reads: list[tuple[int, bool]] = []
    real_read = MrcSource.read

    def read(self: MrcSource, index: int, z: int, y0: int, y1: int) -> np.ndarray:
        if index == 0:
            raise InputError("injected failure", self.path)
        if index == 1:
            time.sleep(0.3)  # still running when image 0's failure propagates
        reads.append((index, self._fd is None))
        return real_read(self, index, z, y0, y1)

    monkeypatch.setattr(MrcSource, "read", read)
    with pytest.raises(E2CompressError, match="injected failure"):
        compress_file(tmp_path / "stack.mrcs", tmp_path / "out.hdf", bits=5, threads=2)
    after_close = [index for index, closed in reads if closed]
    assert after_close == [], f"images {after_close} were read after the file was closed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stack.mrcs"]


def test_rejected_tiff_is_closed(tmp_path: Path) -> None:
    """A TIFF that tifffile opens but e2compress rejects (RGB: not single-channel) is
    closed again, not left for the garbage collector (a batch of them would run out of
    file descriptors)."""
    import tifffile

    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((16, 16, 3), dtype=np.uint8), photometric="rgb")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(E2CompressError, match="single-channel"):
            compress_file(rgb, tmp_path / "rgb.hdf", bits=5)
        gc.collect()
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert unclosed == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rgb.tif"]
