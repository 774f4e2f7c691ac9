"""Round trips of every real file: compress_file -> read back -> compare with the original.

The originals are read independently with mrcfile / tifffile (TIFF rows flipped and MRC axes
put in (z, y, x) order from mapc/mapr/maps, as EMAN2 presents them).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import h5py
import mrcfile
import numpy as np
import pytest
import tifffile

import e2compress
from e2compress.quantize import RenderRange
from helpers import (
    EMAN2_WRITTEN,
    REAL,
    assert_within_half_step,
    real_file_params,
    true_images,
    write_mrc,
)

F32 = np.float32
BITS = [0, 5, 10, 16]
FILES = real_file_params()


_true_images = functools.lru_cache(maxsize=2)(true_images)


def _is_integer(a: np.ndarray) -> bool:
    return a.dtype.kind in "iu" or bool(np.array_equal(a, np.trunc(a)))


def _attrs(group: h5py.Group) -> tuple[float, float, int, int]:
    a = group.attrs
    return (
        float(a["EMAN.stored_rendermin"][0]),
        float(a["EMAN.stored_rendermax"][0]),
        int(a["EMAN.stored_renderbits"][0]),
        int(a["EMAN.stored_truncated"][0]),
    )


def _check_quantised(
    decoded: np.ndarray,
    orig: np.ndarray,
    codes: np.ndarray,
    group: h5py.Group,
    bits: int,
    *,
    auto_range: bool = True,
) -> None:
    rmin, rmax, stored_bits, truncated = _attrs(group)
    assert stored_bits == bits
    assert rmax > rmin
    top = (1 << bits) - 1
    assert codes.dtype == (np.uint8 if bits <= 8 else np.uint16)
    assert int(codes.max()) <= top
    o = orig.astype(np.float64)
    d = decoded.astype(np.float64)
    ulp = float(np.spacing(F32(max(abs(rmin), abs(rmax)))))

    below, above = o < F32(rmin), o > F32(rmax)
    assert truncated == int(below.sum() + above.sum())
    assert np.all(np.abs(d[below] - rmin) <= 2 * ulp)
    assert np.all(np.abs(d[above] - rmax) <= 2 * ulp)
    assert np.all(codes[below] == 0)
    assert np.all(codes[above] == top)
    assert_within_half_step(orig, decoded, (bits, rmin, rmax, truncated))

    if auto_range and _is_integer(orig):
        # integer rules of spec §2.2: reads return integers, exactly the originals if they fit
        assert np.array_equal(decoded, np.trunc(decoded))
        if int(orig.max()) - int(orig.min()) < (1 << bits):
            assert np.array_equal(decoded, o)
            assert truncated == 0

    # EMAN2's decode formula applied to the raw codes in float32 gives the same values
    eman2 = (codes.astype(F32) / F32(top)) * (F32(rmax) - F32(rmin)) + F32(rmin)
    assert float(np.abs(eman2.astype(np.float64) - d).max()) <= 1e-5 * (rmax - rmin)


@pytest.mark.parametrize("bits", BITS, ids=lambda b: f"bits{b}")
@pytest.mark.parametrize("path", FILES)
def test_round_trip(path: Path, bits: int, tmp_path: Path) -> None:
    out = tmp_path / "out.hdf"
    report = e2compress.compress_file(path, out, bits=bits, threads=2)
    truth = _true_images(path)
    assert len(report.images) == len(truth)
    all_images = e2compress.read_images(out)
    with (
        e2compress.open(out) as f,
        h5py.File(out, "r") as raw,
        e2compress.open_source(path) as src,
    ):
        assert len(f) == len(truth) == len(all_images) == len(src)
        for i, orig in enumerate(truth):
            decoded = f[i]
            assert decoded.dtype == np.float32
            assert decoded.shape == orig.shape
            assert np.array_equal(all_images[i].view(np.uint32), decoded.view(np.uint32))
            group = raw[f"MDF/images/{i}"]
            codes = group["image"][...]
            assert codes.shape == orig.shape
            if bits == 0:
                assert codes.dtype == np.float32
                assert "EMAN.stored_renderbits" not in group.attrs
                seen = np.asarray(src.image(i)).astype(F32)
                assert np.array_equal(decoded.view(np.uint32), seen.view(np.uint32))
                assert np.array_equal(decoded.view(np.uint32), orig.astype(F32).view(np.uint32))
                assert np.array_equal(codes.view(np.uint32), decoded.view(np.uint32))
            else:
                _check_quantised(decoded, orig, codes, group, bits)
                rep = report.images[i]
                assert (rep.rmin, rep.rmax, rep.truncated) == (
                    _attrs(group)[0],
                    _attrs(group)[1],
                    _attrs(group)[3],
                )


@pytest.mark.parametrize("path", FILES)
def test_open_source_matches_independent_read(path: Path) -> None:
    truth = _true_images(path)
    with e2compress.open_source(path) as src:
        assert len(src) == len(truth)
        for i, orig in enumerate(truth):
            img = np.asarray(src.image(i))
            nz = 1 if orig.ndim == 2 else orig.shape[0]
            assert src.shape(i) == (nz, *orig.shape[-2:])
            assert img.shape == orig.shape
            assert np.array_equal(img, orig)


_RANGES = EMAN2_WRITTEN / "ranges.json"
_INPUTS: dict[str, Any] = json.loads(_RANGES.read_text())["inputs"] if _RANGES.is_file() else {}
CLAMP_FILES = [
    "KLH.tif",
    "grad.mrc",
    "07jan05b_12gr_02en_00.dwn.mrc",
    "empiar_10076_7.mrc",
    "relion31.mrcs",
    "smallStack.mrcs",
]


@pytest.mark.shared
@pytest.mark.parametrize("name", CLAMP_FILES)
def test_round_trip_with_range_clamps(name: str, tmp_path: Path) -> None:
    """--range at the 10th/90th percentiles: clamped pixels are counted and hold end codes."""
    lo, hi = _INPUTS[name]["range_lo"], _INPUTS[name]["range_hi"]
    out = tmp_path / "out.hdf"
    e2compress.compress_file(REAL / name, out, bits=8, value_range=(lo, hi), threads=2)
    truth = _true_images(REAL / name)
    total = 0
    with e2compress.open(out) as f, h5py.File(out, "r") as raw:
        for i, orig in enumerate(truth):
            group = raw[f"MDF/images/{i}"]
            codes = group["image"][...]
            _check_quantised(f[i], orig, codes, group, 8, auto_range=False)
            total += _attrs(group)[3]
    n = sum(t.size for t in truth)
    assert total > 0.05 * n  # about 20 % of the pixels lie outside the percentiles


@pytest.mark.shared
@pytest.mark.parametrize("bits", [0, 8, 10, 16], ids=lambda b: f"bits{b}")
def test_tiff_rows_are_flipped(bits: int, tmp_path: Path) -> None:
    """EMAN2's TIFF reader flips rows; KLH.tif (uint8) fits losslessly at 8+ bits."""
    out = tmp_path / "KLH.hdf"
    e2compress.compress_file(REAL / "KLH.tif", out, bits=bits)
    (decoded,) = e2compress.read_images(out)
    tif = tifffile.imread(REAL / "KLH.tif")
    assert tif.dtype == np.uint8
    assert tif.shape == (844, 760)
    assert np.array_equal(decoded, tif[::-1])
    assert not np.array_equal(decoded, tif)


@pytest.mark.shared
@pytest.mark.parametrize("bits", [0, 16], ids=lambda b: f"bits{b}")
def test_permuted_axis_map(bits: int, tmp_path: Path) -> None:
    """5i55_tiny.ccp4 has mapc, mapr, maps = 2, 1, 3: columns are y, rows are x."""
    path = REAL / "5i55_tiny.ccp4"
    with mrcfile.open(path, permissive=True) as mrc:
        assert (int(mrc.header.mapc), int(mrc.header.mapr), int(mrc.header.maps)) == (2, 1, 3)
        filedata = np.array(mrc.data)
    assert filedata.shape == (10, 6, 8)
    out = tmp_path / "5i55.hdf"
    e2compress.compress_file(path, out, bits=bits)
    (decoded,) = e2compress.read_images(out)
    assert decoded.shape == (10, 8, 6)
    expected = filedata.transpose(0, 2, 1)
    if bits == 0:
        assert np.array_equal(decoded, expected)
    else:
        with h5py.File(out, "r") as raw:
            rmin, rmax, _, _ = _attrs(raw["MDF/images/0"])
        assert_within_half_step(expected, decoded, RenderRange(16, rmin, rmax))
    with h5py.File(out, "r") as raw:
        a = raw["MDF/images/0"].attrs
        assert (int(a["EMAN.nx"][0]), int(a["EMAN.ny"][0]), int(a["EMAN.nz"][0])) == (6, 8, 10)


@pytest.mark.shared
@pytest.mark.parametrize(
    ("name", "apix"),
    [("EMD-3197.map", 11.4), ("EMD-3197.map.bz2", 11.4), ("empiar_10076_7.mrc", 1.0)],
    ids=["EMD-3197", "EMD-3197-bz2", "empiar-voxel0"],
)
def test_pixel_size(name: str, apix: float, tmp_path: Path) -> None:
    path = REAL / name
    with mrcfile.open(path, permissive=True) as mrc:
        voxel = float(mrc.voxel_size.x)
    # EMD-3197 declares 11.4 A; empiar_10076_7 declares 0 (unset), which EMAN2 stores as 1.0
    assert voxel == pytest.approx(11.4, abs=1e-4) if apix != 1.0 else voxel == 0.0
    out = tmp_path / "out.hdf"
    e2compress.compress_file(path, out, bits=8)
    with h5py.File(out, "r") as raw:
        a = raw["MDF/images/0"].attrs
        for axis in "xyz":
            value = a[f"EMAN.apix_{axis}"]
            assert value.dtype == np.float32
            assert value.shape == (1,)
            if apix == 1.0:
                assert float(value[0]) == 1.0
            else:
                assert abs(float(value[0]) - apix) <= 1e-4
    with e2compress.open(out) as f:
        assert abs(f.header(0)["apix_x"] - apix) <= 1e-4


@pytest.mark.parametrize("compression", ["lzw", "zlib", "packbits", None])
@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32"])
def test_compressed_multipage_tiff(compression: str | None, dtype: str, tmp_path: Path) -> None:
    # SerialEM and RELION write LZW/deflate TIFF movies: every page is one image.
    rng = np.random.default_rng(7)
    frames = (rng.poisson(2.0, (3, 40, 24)) - (1 if dtype != "uint8" else 0)).astype(dtype)
    src = tmp_path / "movie.tif"
    tifffile.imwrite(src, frames, compression=compression, photometric="minisblack")
    out = tmp_path / "movie.hdf"
    e2compress.compress_file(src, out, bits=8 if dtype != "float32" else 0)
    got = e2compress.read_images(out)
    assert len(got) == 3
    for page, image in zip(frames, got, strict=True):
        assert np.array_equal(image, page[::-1].astype(np.float32))  # rows flipped, exact


@pytest.mark.parametrize(
    ("dtype", "suffix", "bits"),
    [
        (">f4", ".mrc", 0),
        (">f4", ".mrc", 12),
        (">i2", ".mrcs", 16),
        ("i1", ".mrcs", 8),
        ("u1", ".mrcs", 8),
        ("<f2", ".mrcs", 0),
    ],
    ids=[
        "big-endian-float-lossless",
        "big-endian-float-12",
        "big-endian-int16",
        "mode0-int8",
        "mode0-uint8",
        "mode12-float16",
    ],
)
def test_mrc_modes_and_byte_orders(dtype: str, suffix: str, bits: int, tmp_path: Path) -> None:
    # The corpus has no big-endian or mode 0 file: write them with mrcfile.
    rng = np.random.default_rng(11)
    values = rng.integers(-100 if np.dtype(dtype).kind != "u" else 0, 120, (3, 9, 14))
    data = values.astype(dtype)
    src = tmp_path / f"m{suffix}"
    write_mrc(src, data)
    out = tmp_path / "m.hdf"
    e2compress.compress_file(src, out, bits=bits)
    got = e2compress.read_images(out)
    want = list(data.astype(np.float32)) if suffix == ".mrcs" else [data.astype(np.float32)]
    assert len(got) == len(want)
    for image, truth in zip(got, want, strict=True):
        # integer data that fits in 2**bits levels (and bits 0) reads back exactly
        assert np.array_equal(image, truth)
