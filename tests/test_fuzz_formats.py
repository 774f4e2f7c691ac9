"""Fuzzing the IMAGIC, SPIDER, DM and SER readers as test_fuzz.py fuzzes the others: byte flips
in the headers and tag trees, overwritten size words and truncations of real EMAN2-written
files (tests/data/eman2) and of test-writer DM files must either compress to a valid file
with the reader's image count or raise E2CompressError on one line naming the file,
without another exception, a hang (60 s guard) or anything left behind.

Runs are deterministic (``derandomize``); ``E2C_FUZZ_EXAMPLES`` scales the examples.
"""

from __future__ import annotations

import gc
import shutil
import struct
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import strategies as st

from e2compress import E2CompressError, compress_file, open_source
from helpers import EMAN2_DATA, eman_decode, fuzz_settings, hard_timeout, write_dm, write_ser

HANG_SECONDS = 60


def check(files: dict[str, bytes], name: str) -> str:
    """compress_file on ``name`` among ``files``: a valid output or one E2CompressError
    line naming the input, inputs unchanged, nothing left. Returns "ok" or "error"."""
    work = Path(tempfile.mkdtemp())
    try:
        for fname, blob in files.items():
            (work / fname).write_bytes(blob)
        src, out = work / name, work / "out.hdf"
        error: E2CompressError | None = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with hard_timeout(HANG_SECONDS):
                try:
                    compress_file(src, out, bits=5, threads=1)
                except E2CompressError as exc:
                    error = exc
            gc.collect()
        assert [str(w.message) for w in caught] == [], "warnings escaped to the user"
        assert {f: (work / f).read_bytes() for f in files} == files, "an input was modified"
        left = sorted(p.name for p in work.iterdir())
        if error is not None:
            assert "\n" not in str(error)
            assert str(src) in str(error), str(error)
            assert left == sorted(files), left
            return "error"
        assert left == sorted([*files, "out.hdf"]), left
        decoded = eman_decode(out)
        with open_source(src) as source:
            assert len(decoded) == len(source)
            for i, (img, mapping) in enumerate(decoded):
                assert img.size == int(np.prod(source.shape(i)))
                assert mapping is not None
                assert np.isfinite(img).all()
        return "ok"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def flip(blob: bytes, flips: list[tuple[int, int]]) -> bytes:
    data = bytearray(blob)
    for offset, mask in flips:
        if offset < len(data):
            data[offset] ^= mask
    return bytes(data)


FLIPS = st.lists(st.tuples(st.integers(0, 1023), st.integers(1, 255)), min_size=1, max_size=6)
INT32 = st.one_of(
    st.sampled_from([0, 1, -1, 2, 255, 1024, 65535, 2**20, 2**30, 2**31 - 1, -(2**31)]),
    st.integers(-(2**31), 2**31 - 1),
)


def _pair(name: str) -> dict[str, bytes]:
    stem = EMAN2_DATA / name
    return {
        "s.hed": stem.with_suffix(".hed").read_bytes(),
        "s.img": stem.with_suffix(".img").read_bytes(),
    }


# IMAGIC int32 words worth overwriting: count, headrec, ny, nx, type, izlp, i4lp, stamp
IMAGIC_WORDS = [1, 3, 12, 13, 14, 60, 61, 68]


@pytest.mark.parametrize("seed", ["stack.hed", "square_be.hed", "volume.hed"])
@fuzz_settings(25, HealthCheck.too_slow, HealthCheck.function_scoped_fixture)
@given(
    flips=FLIPS,
    words=st.lists(st.tuples(st.sampled_from(IMAGIC_WORDS), INT32), max_size=3),
    second=st.booleans(),
)
@example(flips=[(0, 0)], words=[(1, 2**31 - 1)], second=False)
@example(flips=[(0, 0)], words=[(12, 2**30), (13, 2**30)], second=False)
def test_mutated_imagic(
    seed: str, flips: list[tuple[int, int]], words: list[tuple[int, int]], second: bool
) -> None:
    files = _pair(seed)
    order = "<" if not seed.endswith("_be.hed") else ">"
    hed = bytearray(flip(files["s.hed"], flips))
    base = 1024 if second and len(hed) > 1024 else 0
    for word, value in words:
        struct.pack_into(order + "i", hed, base + 4 * word, value)
    files["s.hed"] = bytes(hed)
    check(files, "s.img" if second else "s.hed")


# SPIDER float words: nslice nrow iform nsam labrec labbyt lenbyt istack maxim
SPIDER_WORDS = [0, 1, 4, 11, 12, 21, 22, 23, 25]
FLOATS = st.one_of(
    st.sampled_from([0.0, 1.0, -1.0, 2.0, 3.0, 0.5, 1e9, -11.0, float("nan"), float("inf")]),
    st.floats(width=32, allow_nan=True),
)


@pytest.mark.parametrize("seed", ["stack.spi", "single.spi", "volume_be.spi"])
@fuzz_settings(25, HealthCheck.too_slow, HealthCheck.function_scoped_fixture)
@given(flips=FLIPS, words=st.lists(st.tuples(st.sampled_from(SPIDER_WORDS), FLOATS), max_size=3))
@example(flips=[(0, 0)], words=[(25, 1e9)])
@example(flips=[(0, 0)], words=[(0, 1e9), (1, 1e9)])
def test_mutated_spider(
    seed: str, flips: list[tuple[int, int]], words: list[tuple[int, float]]
) -> None:
    blob = bytearray(flip((EMAN2_DATA / seed).read_bytes(), flips))
    order = ">" if seed.endswith("_be.spi") else "<"
    for word, value in words:
        struct.pack_into(order + "f", blob, 4 * word, value)
    check({"s.spi": bytes(blob)}, "s.spi")


DM_TAGS = {
    "Microscope Info": {"Voltage": 300000.0, "Actual Magnification": 50000.0},
    "CCD": {"Pixel Size (um)": (5.0, 5.0)},
    "DataBar": {"Exposure Number": 3, "Acquisition Date": "12/5/2026"},
}


@pytest.fixture(scope="module")
def dm_seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    pytest.importorskip("ncempy")
    work = tmp_path_factory.mktemp("dm")
    data = (np.random.default_rng(6).random((3, 12, 10)) * 500).astype(np.uint16)
    out = {}
    for version in (3, 4):
        write_dm(work / f"s.dm{version}", data, version, tags=DM_TAGS)
        out[f"s.dm{version}"] = (work / f"s.dm{version}").read_bytes()
    write_ser(work / "s.ser", data)
    out["s.ser"] = (work / "s.ser").read_bytes()
    return out


@pytest.mark.parametrize("name", ["s.dm3", "s.dm4", "s.ser"])
@fuzz_settings(40, HealthCheck.too_slow, HealthCheck.function_scoped_fixture)
@given(data=st.data())
def test_mutated_dm(dm_seeds: dict[str, bytes], name: str, data: st.DataObject) -> None:
    """Byte flips anywhere in a DM tag tree or a SER header and element headers."""
    blob = dm_seeds[name]
    end = len(blob) - 1 if name != "s.ser" else 400
    anywhere = st.tuples(st.integers(0, end), st.integers(1, 255))
    flips = data.draw(st.lists(anywhere, min_size=1, max_size=6), label="flips")
    check({name: flip(blob, flips)}, name)


@pytest.mark.parametrize(
    ("seed", "cut"),
    [
        ("stack.hed", "s.hed"),
        ("stack.hed", "s.img"),
        ("stack.spi", "s.spi"),
        ("volume_be.spi", "s.spi"),
    ],
)
@fuzz_settings(15, HealthCheck.too_slow, HealthCheck.function_scoped_fixture)
@given(fraction=st.floats(0, 1, exclude_max=True))
@example(fraction=0.0)
@example(fraction=0.5)
def test_truncated(seed: str, cut: str, fraction: float) -> None:
    """IMAGIC and SPIDER hold no padding: any cut is an error."""
    files = _pair(seed) if seed.endswith(".hed") else {"s.spi": (EMAN2_DATA / seed).read_bytes()}
    files[cut] = files[cut][: int(fraction * len(files[cut]))]
    assert check(files, "s.hed" if seed.endswith(".hed") else "s.spi") == "error"


@pytest.mark.parametrize("name", ["s.dm3", "s.dm4", "s.ser"])
@fuzz_settings(15, HealthCheck.too_slow, HealthCheck.function_scoped_fixture)
@given(fraction=st.floats(0, 1, exclude_max=True))
@example(fraction=0.0)
@example(fraction=0.5)
def test_truncated_dm(dm_seeds: dict[str, bytes], name: str, fraction: float) -> None:
    """A cut DM or SER file is an error, unless only what follows the pixels is gone (a
    DM file's closing 8 zero bytes, a SER file's time tags: 6 bytes per element)."""
    blob = dm_seeds[name]
    keep = int(fraction * len(blob))
    result = check({name: blob[:keep]}, name)
    assert result == "error" or len(blob) - keep <= (18 if name == "s.ser" else 8)


def test_seeds_compress(dm_seeds: dict[str, bytes]) -> None:
    """The unmutated seeds compress (the fuzzing starts from valid files)."""
    assert check(_pair("stack.hed"), "s.hed") == "ok"
    assert check({"s.spi": (EMAN2_DATA / "stack.spi").read_bytes()}, "s.spi") == "ok"
    for name, blob in dm_seeds.items():
        assert check({name: blob}, name) == "ok"
