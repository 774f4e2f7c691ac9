"""Reading files written by real EMAN2 (``eman2_written``), and encoding like EMAN2 did.

Truth: ``*_eman2_read.npy`` / ``*_eman2_read.json`` are what EMAN2's own reader returned for
each file, ``*_original.npy`` are the arrays EMAN2 compressed.
"""

from __future__ import annotations

import json
from typing import Any

import h5py
import numpy as np
import pytest

import e2compress
from e2compress.quantize import quantize
from e2compress.ranges import block_stats, choose_range
from helpers import EMAN2_WRITTEN, write_mrc

pytestmark = pytest.mark.shared

F32 = np.float32

# (hdf stem, original stem, bits, number of images)
FILES = [
    ("single256_bits10", "single256", 10, 1),
    ("single256_bits0", "single256", 0, 1),
    ("stack5x256_bits4", "stack5x256", 4, 5),
]
FILE_IDS = [f[0] for f in FILES]

# Header keys that are file attributes but that EMAN2 overwrites when it reads an image
# (spec §5.3), so EMAN2's read header does not show the stored value:
#  - statistics recomputed from the decoded (quantised) pixels on first access;
#  - source_path (set to the file being read), ImageEndian ("big" for every HDF file),
#    HostEndian (the reading machine).
RECOMPUTED_ON_READ = {
    "minimum",
    "maximum",
    "mean",
    "sigma",
    "square_sum",
    "mean_nonzero",
    "sigma_nonzero",
    "all_int",
    "source_path",
    "ImageEndian",
    "HostEndian",
}


def _original(stem: str) -> np.ndarray:
    a = np.load(EMAN2_WRITTEN / f"{stem}_original.npy")
    return a[None] if a.ndim == 2 else a


def _eman2_read(hdf: str, stem: str) -> np.ndarray:
    path = EMAN2_WRITTEN / f"{hdf}_eman2_read.npy"
    if not path.exists():  # bits 0: EMAN2's read is bit-identical to the original
        return _original(stem)
    return np.load(path)


def _stored_limits(hdf: str, i: int) -> tuple[float, float, int] | None:
    with h5py.File(EMAN2_WRITTEN / f"{hdf}.hdf", "r") as f:
        a = f[f"MDF/images/{i}"].attrs
        if "EMAN.stored_renderbits" not in a:
            return None
        return (
            float(a["EMAN.stored_rendermin"][0]),
            float(a["EMAN.stored_rendermax"][0]),
            int(a["EMAN.stored_renderbits"][0]),
        )


def _assert_same_as_eman2(ours: np.ndarray, hdf: str, stem: str, i: int, bits: int) -> None:
    ref = _eman2_read(hdf, stem)[i]
    assert ours.dtype == np.float32
    assert ours.shape == ref.shape
    if bits == 0:
        assert np.array_equal(ours.view(np.uint32), ref.astype(F32).view(np.uint32))
        return
    limits = _stored_limits(hdf, i)
    assert limits is not None
    rmin, rmax, _ = limits
    assert float(np.abs(ours.astype(np.float64) - ref).max()) <= 1e-5 * (rmax - rmin)


@pytest.mark.parametrize(("hdf", "stem", "bits", "n"), FILES, ids=FILE_IDS)
def test_read_images_matches_eman2(hdf: str, stem: str, bits: int, n: int) -> None:
    images = e2compress.read_images(EMAN2_WRITTEN / f"{hdf}.hdf")
    assert len(images) == n
    for i, img in enumerate(images):
        _assert_same_as_eman2(img, hdf, stem, i, bits)


@pytest.mark.parametrize(("hdf", "stem", "bits", "n"), FILES, ids=FILE_IDS)
def test_open_matches_eman2(hdf: str, stem: str, bits: int, n: int) -> None:
    with e2compress.open(EMAN2_WRITTEN / f"{hdf}.hdf") as f:
        assert len(f) == n
        for i in range(n):
            _assert_same_as_eman2(f[i], hdf, stem, i, bits)
            rng = f.render_range(i)
            limits = _stored_limits(hdf, i)
            if bits == 0:
                assert rng is None
            else:
                assert limits is not None
                assert rng is not None
                assert (rng.rmin, rng.rmax, rng.bits) == limits


@pytest.mark.parametrize(("hdf", "stem", "bits", "n"), FILES, ids=FILE_IDS)
def test_header_matches_eman2(hdf: str, stem: str, bits: int, n: int) -> None:
    eman2 = json.loads((EMAN2_WRITTEN / f"{hdf}_eman2_read.json").read_text())
    assert len(eman2) == n
    with h5py.File(EMAN2_WRITTEN / f"{hdf}.hdf", "r") as raw:
        stored = [
            {k[5:] for k in raw[f"MDF/images/{i}"].attrs if k.startswith("EMAN.")} for i in range(n)
        ]
    with e2compress.open(EMAN2_WRITTEN / f"{hdf}.hdf") as f:
        for i in range(n):
            ours = f.header(i)
            keys = (stored[i] & set(eman2[i])) - RECOMPUTED_ON_READ
            # the attributes that matter must really be in the comparison
            assert {"apix_x", "nx", "ny", "nz", "datatype", "MRC.mode", "MRC.label0"} <= keys
            if bits:
                assert {"stored_rendermin", "stored_rendermax", "stored_renderbits"} <= keys
                assert "stored_truncated" in keys
            else:
                assert not any(k.startswith("stored_") for k in ours)
            for key in sorted(keys):
                want, got = eman2[i][key], ours[key]
                if isinstance(want, float):
                    # JSON holds the float32 values as doubles
                    assert F32(got) == F32(want), (i, key, got, want)
                else:
                    assert type(got) is type(want), (i, key, got, want)
                    assert got == want, (i, key, got, want)


@pytest.mark.parametrize(
    ("hdf", "stem", "bits", "n"), [f for f in FILES if f[2]], ids=[f[0] for f in FILES if f[2]]
)
def test_encoding_reproduces_eman2_codes(hdf: str, stem: str, bits: int, n: int) -> None:
    """choose_range + quantize on the original arrays give exactly EMAN2's stored codes."""
    originals = _original(stem)
    with e2compress.open(EMAN2_WRITTEN / f"{hdf}.hdf") as f:
        for i in range(n):
            eman2_codes = f.read_codes(i)
            assert eman2_codes.dtype == (np.uint8 if bits <= 8 else np.uint16)
            with h5py.File(EMAN2_WRITTEN / f"{hdf}.hdf", "r") as raw:
                group = raw[f"MDF/images/{i}"]
                assert np.array_equal(eman2_codes, group["image"][...])
                eman2_truncated = int(group.attrs["EMAN.stored_truncated"][0])
            rng = choose_range(block_stats(originals[i]), bits)
            limits = _stored_limits(hdf, i)
            assert (float(F32(rng.rmin)), float(F32(rng.rmax)), rng.bits) == limits
            codes, truncated = quantize(originals[i], rng)
            assert codes.dtype == eman2_codes.dtype
            assert truncated == eman2_truncated
            assert np.array_equal(codes, eman2_codes), int((codes != eman2_codes).sum())


def _eman2_decode(code: int, rmin: float, rmax: float, bits: int) -> np.float32:
    """EMAN2's reader as built (-ffast-math): code * ((1/RMAX) * (rmax - rmin)) + rmin."""
    scale = (F32(1) / F32((1 << bits) - 1)) * (F32(rmax) - F32(rmin))
    return F32(code) * scale + F32(rmin)


@pytest.mark.parametrize("i", [0, 3, 4], ids=["image0", "image3", "image4"])
def test_code_for_zero_decodes_to_exact_zero(i: int) -> None:
    """In these images 0 lies on a code; EMAN2 decodes it to ~5e-7, we decode exactly 0.0."""
    path = EMAN2_WRITTEN / "stack5x256_bits4.hdf"
    limits = _stored_limits("stack5x256_bits4", i)
    assert limits is not None
    rmin, rmax, bits = limits
    step = (rmax - rmin) / ((1 << bits) - 1)
    k = round(-rmin / step)
    assert abs(rmin + k * step) < 1e-6 * step  # 0 is on code k (in exact arithmetic)
    eman2 = np.load(EMAN2_WRITTEN / "stack5x256_bits4_eman2_read.npy")[i]
    with e2compress.open(path) as f:
        codes = f.read_codes(i)
        ours = f[i]
    on_zero = codes == k
    assert on_zero.sum() > 100
    eman2_values = np.unique(eman2[on_zero])
    assert eman2_values.size == 1
    assert eman2_values[0] != 0.0
    assert abs(float(eman2_values[0])) < 1e-6
    assert eman2_values[0] == _eman2_decode(k, rmin, rmax, bits)
    assert np.all(ours[on_zero] == 0.0)
    assert not np.signbit(ours[on_zero]).any()


def test_zero_input_round_trips_to_exact_zero(tmp_path: Any) -> None:
    """A 0.0 pixel compressed with EMAN2's range for stack image 0 reads back as exactly 0.0
    (EMAN2's reader gives 4.8e-7 for that code)."""
    frames = _original("stack5x256").copy()
    lo, hi = frames[0].min(), frames[0].max()
    frames[0, 100, 100] = 0.0
    frames[0, 17, 200] = 0.0
    assert (frames[0].min(), frames[0].max()) == (lo, hi)  # range unchanged
    src = tmp_path / "stack.mrcs"
    write_mrc(src, frames, voxel_size=1.5)
    dst = tmp_path / "stack.hdf"
    e2compress.compress_file(src, dst, bits=4)
    limits = _stored_limits("stack5x256_bits4", 0)
    assert limits is not None
    rmin, rmax, bits = limits
    with h5py.File(dst, "r") as raw:
        a = raw["MDF/images/0"].attrs
        assert float(a["EMAN.stored_rendermin"][0]) == rmin  # same range as EMAN2 chose
        assert float(a["EMAN.stored_rendermax"][0]) == rmax
        codes = raw["MDF/images/0/image"][...]
    k = round(-rmin / ((rmax - rmin) / ((1 << bits) - 1)))
    assert codes[100, 100] == codes[17, 200] == k
    assert _eman2_decode(k, rmin, rmax, bits) != 0.0
    decoded = e2compress.read_images(dst)[0]
    assert decoded[100, 100] == 0.0
    assert decoded[17, 200] == 0.0
