"""Stacks (files of many images): the stack layout, read by plain h5py with the
documented formula, by e2compress (direct HDF5 calls and the h5py fallback) and, when
``E2C_EMAN2`` points at an EMAN2 install, by real EMAN2."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import h5py
import mrcfile
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import e2compress
from e2compress import InputError, h5direct
from helpers import (
    REAL,
    assert_within_half_step,
    eman2_home,
    eman2_read,
    eman_decode,
    true_images,
    write_mrc,
)

F32 = np.float32
APIX = 1.37
ORIGIN = (12.5, -3.0, 0.0)


def _stack(n: int = 40, box: int = 32, seed: int = 5) -> np.ndarray:
    """Particles: a blob + N(0, 1) noise, with exact zeros and an all-integer image."""
    rng = np.random.default_rng(seed)
    axis = np.arange(box, dtype=F32) - (box - 1) / 2
    blob = np.exp(-0.5 * (axis / (box / 6)) ** 2)
    data = rng.standard_normal((n, box, box), dtype=F32) + 2 * blob[:, None] * blob[None, :]
    data[1, :4, :4] = 0.0
    data[-1] = np.round(data[-1] * 3)  # integers: stored exactly
    return data.astype(F32)


@pytest.mark.parametrize("bits", [0, 5, 12], ids=lambda b: f"bits{b}")
def test_plain_h5py_reads_a_stack(bits: int, tmp_path: Path) -> None:
    """Plain h5py + the formula in docs/api.md give the pixels (within half a step), the pixel
    size per image, and the keys shared by all images once on /MDF/images."""
    data = _stack()
    src = write_mrc(tmp_path / "p.mrcs", data, voxel_size=APIX)
    out = tmp_path / "p.hdf"
    e2compress.compress_file(src, out, bits=bits)
    decoded = eman_decode(out)  # helpers: h5py + EMAN2's formula, independent of us
    assert len(decoded) == len(data)
    ours = e2compress.read_images(out)
    for i, (values, mapping) in enumerate(decoded):
        # and our reader: the source by the same rule (exact 0 and integers, where
        # EMAN2's float32 formula is a few ulp off)
        if bits == 0:
            assert mapping is None
            assert np.array_equal(values, data[i])
            assert np.array_equal(ours[i], data[i])
        else:
            assert mapping is not None
            assert_within_half_step(data[i], values, mapping)
            assert_within_half_step(data[i], ours[i], mapping)
    assert np.array_equal(ours[-1], data[-1])  # the integer image, exactly
    assert (ours[1][:4, :4] == 0).all()
    with h5py.File(out, "r") as f:
        images = f["MDF/images"]
        assert images.attrs["source_path"] == b"p.mrcs"
        assert int(images.attrs["MRC.nz"][0]) == len(data)
        for i in (0, len(data) - 1):
            for axis in "xyz":
                apix = images[str(i)].attrs[f"EMAN.apix_{axis}"]
                assert apix.dtype == F32
                assert apix[0] == F32(APIX)


def test_stack_metadata_is_small(tmp_path: Path) -> None:
    """HDF5 metadata per image (file minus chunk bytes, per image) stays under 2 KB and
    the file is well under the float32 input: the per-image header and HDF5 structures
    (an old-style group, a 64-entry chunk index node, ~58 attributes) once cost 9 KB
    per image, more than the compressed pixels of a 32x32 particle."""
    if h5direct.library() is None:  # test_h5py_fallback_... checks where it must exist
        pytest.skip("small chunk-index nodes need the direct HDF5 calls (POSIX dlsym)")
    n = 300
    src = write_mrc(tmp_path / "s.mrcs", _stack(n), voxel_size=APIX)
    out = tmp_path / "s.hdf"
    e2compress.compress_file(src, out, bits=5)
    with h5py.File(out, "r") as f:
        for i in range(n):
            ds = f[f"MDF/images/{i}/image"]
            assert ds.chunks == ds.shape  # one chunk per small image
    size = out.stat().st_size
    assert (size - _chunk_bytes(out)) / n <= 2048
    assert n * 32 * 32 * 4 / size >= 1.5


def _chunk_bytes(path: Path) -> int:
    """Stored bytes of every chunk of every image (the compressed pixels), read with h5py."""
    total = 0
    with h5py.File(path, "r") as f:
        images = f["MDF/images"]
        for i in range(int(images.attrs["imageid_max"][0]) + 1):
            ds = images[f"{i}/image"]
            total += sum(ds.id.get_chunk_info(k).size for k in range(ds.id.get_num_chunks()))
    return total


KEPT_RECORD_BYTES = 2048  # the source's kept header bytes, hashes and pixel layout


def _fixed_rule(n: int) -> int:
    """The most a stack of ``n`` images may add to its compressed pixels: 4 KB + 1 KB
    an image (a 4-image stack once carried 33 KB, a 37-image one 66 KB), plus the record
    that makes the source restorable (an MRC's 1024-byte header kept, its SHA-256 and
    pixel layout: under 2 KB, once per file)."""
    return 4096 + 1024 * n + KEPT_RECORD_BYTES


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(n=st.integers(2, 40), box=st.sampled_from([16, 32, 64]), bits=st.sampled_from([0, 5, 12]))
def test_small_stacks_carry_little_metadata(n: int, box: int, bits: int, tmp_path: Path) -> None:
    """Whatever the image count, size and bits, a stack's file is its compressed pixels
    plus at most 4 KB + 1 KB an image (with EMAN2's 7 per-image keys; each further
    per-image key, e.g. a non-zero origin, adds its own ~60 bytes)."""
    if h5direct.library() is None:
        pytest.skip("small chunk-index nodes need the direct HDF5 calls (POSIX dlsym)")
    src = write_mrc(tmp_path / f"s{n}.mrcs", _stack(n, box), voxel_size=APIX)
    out = tmp_path / f"s{n}.hdf"
    e2compress.compress_file(src, out, bits=bits)
    assert out.stat().st_size - _chunk_bytes(out) <= _fixed_rule(n)


@pytest.mark.shared
@pytest.mark.parametrize(
    ("name", "ratio"),
    [
        ("smallStack.mrcs", 4.0),
        pytest.param(
            "Unt_050_12.00A_000001.mrcs",
            3.0,
            marks=pytest.mark.xfail(
                strict=True,
                reason="2.6x: 3x needs <= 700 bytes an image (now ~920); the 4 KB + 1 KB "
                "rule itself allows at most 2.4x for 37 images of 21 KB of pixels",
            ),
        ),
    ],
)
def test_real_small_stacks_compress_as_whole_files(name: str, ratio: float, tmp_path: Path) -> None:
    """The two small real stacks of issue 16 at bits 5: the fixed-overhead rule, and
    the ratio of the whole file against the float32 images."""
    src = REAL / name
    out = tmp_path / "out.hdf"
    report = e2compress.compress_file(src, out, bits=5)
    n = len(report.images)
    size = out.stat().st_size
    assert size - _chunk_bytes(out) <= _fixed_rule(n)
    float32_bytes = sum(4 * math.prod(im.shape) for im in true_images(src))
    assert float32_bytes / size >= ratio


def test_one_image_is_read_without_the_others(tmp_path: Path) -> None:
    """open()[i] touches only image i: a missing image elsewhere does not matter until
    it is asked for, and then it is one clear error."""
    src = write_mrc(tmp_path / "s.mrcs", _stack(12), voxel_size=APIX)
    out = tmp_path / "s.hdf"
    e2compress.compress_file(src, out, bits=5)
    want = e2compress.read_images(out)
    with h5py.File(out, "r+") as f:
        del f["MDF/images/7/image"]
    with e2compress.open(out) as f:
        assert len(f) == 12
        assert np.array_equal(f[3], want[3])
        assert np.array_equal(f[11], want[11])
        with pytest.raises(InputError, match="image 7 does not exist"):
            f[7]
    with pytest.raises(InputError, match="image 7"):
        e2compress.read_images(out)


STACK_IMAGE_ATTRS = {
    f"EMAN.{k}"
    for k in (
        "stored_renderbits",
        "stored_rendermin",
        "stored_rendermax",
        "stored_truncated",
        "apix_x",
        "apix_y",
        "apix_z",
        "origin_x",
        "origin_y",
        "origin_z",
    )
}


def test_h5py_fallback_writes_and_reads_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without direct HDF5 calls (h5py only, as where the library cannot be reached)
    the file has the same layout and both files read back to the same values by
    either path."""
    assert h5direct.library() is not None  # this platform has the direct path
    src = write_mrc(tmp_path / "s.mrcs", _stack(20), voxel_size=APIX, origin=ORIGIN)
    fast = tmp_path / "fast.hdf"
    e2compress.compress_file(src, fast, bits=5)
    fast_values = e2compress.read_images(fast)
    monkeypatch.setattr(h5direct, "library", lambda: None)
    slow = tmp_path / "slow.hdf"
    e2compress.compress_file(src, slow, bits=5)
    for path in (slow, fast):
        with h5py.File(path, "r") as f:
            assert set(f["MDF/images/3"].attrs) == STACK_IMAGE_ATTRS
    for path in (slow, fast):  # h5py reads
        for a, b in zip(fast_values, e2compress.read_images(path), strict=True):
            assert np.array_equal(a, b)
    monkeypatch.undo()
    for a, b in zip(fast_values, e2compress.read_images(slow), strict=True):
        assert np.array_equal(a, b)


def test_unusual_datasets_in_one_file(tmp_path: Path) -> None:
    """Datasets the fast path does not expect (contiguous float, shuffle + uint16,
    float64 limits, an unwritten chunk, int16 without a mapping) read like h5py reads
    them, each with its own type and layout."""
    rng = np.random.default_rng(1)
    floats = rng.standard_normal((16, 16)).astype(F32)
    codes16 = rng.integers(0, 4096, (16, 16)).astype(np.uint16)
    codes8 = rng.integers(0, 32, (16, 16)).astype(np.uint8)
    ints = rng.integers(-300, 300, (16, 16)).astype(np.int16)
    path = tmp_path / "mixed.hdf"
    with h5py.File(path, "w") as f:
        images = f.create_group("MDF/images")
        images.attrs["imageid_max"] = np.array([4], dtype=np.int32)
        images.create_dataset("0/image", data=floats)
        g1 = images.create_group("1")
        g1.create_dataset("image", data=codes16, chunks=(4, 16), compression="gzip", shuffle=True)
        g1.attrs["EMAN.stored_renderbits"] = np.array([12], dtype=np.int32)
        g1.attrs["EMAN.stored_rendermin"] = np.array([-2.0], dtype=F32)
        g1.attrs["EMAN.stored_rendermax"] = np.array([3.0], dtype=F32)
        g2 = images.create_group("2")
        g2.create_dataset("image", data=codes8, chunks=(16, 16), compression="gzip")
        g2.attrs["EMAN.stored_renderbits"] = np.array([5], dtype=np.int32)
        g2.attrs["EMAN.stored_rendermin"] = np.float64(-1.5)  # 8-byte limits
        g2.attrs["EMAN.stored_rendermax"] = np.float64(1.5)
        g3 = images.create_group("3")
        g3.create_dataset("image", shape=(16, 16), dtype=np.uint8, chunks=(8, 16), fillvalue=7)
        g3["image"][:8] = codes8[:8]  # the second chunk is never written
        g3.attrs["EMAN.stored_renderbits"] = np.array([5], dtype=np.int32)
        g3.attrs["EMAN.stored_rendermin"] = np.array([0.0], dtype=F32)
        g3.attrs["EMAN.stored_rendermax"] = np.array([31.0], dtype=F32)
        images.create_dataset("4/image", data=ints, chunks=(8, 8), compression="gzip")

    def eman2(codes: np.ndarray, bits: int, lo: float, hi: float) -> np.ndarray:
        return codes.astype(np.float64) / ((1 << bits) - 1) * (hi - lo) + lo

    filled = np.concatenate([codes8[:8], np.full((8, 16), 7, np.uint8)])
    with e2compress.open(path) as f:
        assert np.array_equal(f[0], floats)
        assert np.allclose(f[1], eman2(codes16, 12, -2.0, 3.0), rtol=0, atol=1e-6)
        assert np.allclose(f[2], eman2(codes8, 5, -1.5, 1.5), rtol=0, atol=1e-6)
        assert np.array_equal(f[3], filled.astype(F32))  # 0..31 over 31 codes: integers
        assert f[4].dtype == F32
        assert np.array_equal(f[4], ints.astype(F32))  # signed, no mapping: as stored
        assert np.array_equal(f.read_codes(3), filled)
        assert f.render_range(2) is not None
        assert f.render_range(4) is None


def test_recompressing_a_stack_keeps_its_header(tmp_path: Path) -> None:
    """An e2compress stack compressed again keeps the shared header (the /MDF/images
    attributes) and each image's pixel size and origin."""
    src = write_mrc(tmp_path / "s.mrcs", _stack(6), voxel_size=APIX, origin=ORIGIN)
    first = tmp_path / "first.hdf"
    e2compress.compress_file(src, first, bits=10)
    again = tmp_path / "again.hdf"
    e2compress.compress_file(first, again, bits=5)
    with e2compress.open(first) as a, e2compress.open(again) as b:
        ha, hb = a.header(4), b.header(4)
    assert hb["Group.MRC.nz"] == ha["Group.MRC.nz"] == 6
    assert hb["Group.MRC.label0"] == ha["Group.MRC.label0"]
    assert hb["Group.source_path"] == "first.hdf"
    for axis, value in zip("xyz", ORIGIN, strict=True):
        assert hb[f"apix_{axis}"] == pytest.approx(APIX, abs=1e-6)
        assert hb[f"origin_{axis}"] == pytest.approx(value)
    assert hb["stored_renderbits"] == 5


def test_threads_do_not_change_the_file(tmp_path: Path) -> None:
    """Small images are encoded in batches (engine probed once per batch), inline or in
    worker threads: the stored codes and mappings are the same either way."""
    src = write_mrc(tmp_path / "s.mrcs", _stack(400, 16), voxel_size=APIX)
    one, two = tmp_path / "one.hdf", tmp_path / "two.hdf"
    e2compress.compress_file(src, one, bits=6, threads=1)
    e2compress.compress_file(src, two, bits=6, threads=2)
    with e2compress.open(one) as a, e2compress.open(two) as b:
        for i in range(400):
            assert np.array_equal(a.read_codes(i), b.read_codes(i))
            assert a.render_range(i) == b.render_range(i)


PEAK_CHILD = """
import sys, e2compress
e2compress.compress_file(sys.argv[1], sys.argv[2], bits=5)
print([ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0].split()[1])
"""


def _peak_kb(src: Path, dst: Path) -> int:
    """Peak RSS (kB) of a fresh process compressing ``src`` into ``dst``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [sys.executable, "-c", PEAK_CHILD, str(src), str(dst)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=True)
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs /proc")
def test_hdf_stack_input_takes_the_memory_of_mrcs(tmp_path: Path) -> None:
    """Recompressing an HDF stack needs about the peak memory of the same stack given
    as .mrcs (HDF5's metadata cache of the input once grew ~18 KB per image: 1.09 GB
    for 50,000 images; 1.8x the .mrcs peak at 5,000)."""
    n = 5_000
    data = np.random.default_rng(3).standard_normal((n, 16, 16), dtype=F32)
    src = write_mrc(tmp_path / "s.mrcs", data, voxel_size=APIX)
    hdf = tmp_path / "s.hdf"
    e2compress.compress_file(src, hdf, bits=8)
    mrcs_kb = _peak_kb(src, tmp_path / "from_mrcs.hdf")
    hdf_kb = _peak_kb(hdf, tmp_path / "from_hdf.hdf")
    assert hdf_kb <= 1.2 * mrcs_kb, (hdf_kb, mrcs_kb)


# --------------------------------------------------------------------------- real EMAN2


@pytest.mark.shared
@pytest.mark.parametrize("name", ["smallStack.mrcs", "Unt_050_12.00A_000001.mrcs"])
def test_eman2_reads_small_real_stacks(name: str, tmp_path: Path) -> None:
    """Real EMAN2 reads the small-stack layout (compact links and shared keys, attribute
    types stored once, small metadata blocks) to read_images' values, within half a
    step of the source, with its pixel size."""
    eman2_home()
    src = REAL / name
    out = tmp_path / "small.hdf"
    e2compress.compress_file(src, out, bits=5)
    ours = np.stack(e2compress.read_images(out))
    eman2, headers = eman2_read(out, tmp_path)
    assert eman2.shape == ours.shape
    scale = np.abs(ours).max(axis=(1, 2), keepdims=True)
    assert (np.abs(eman2 - ours) <= 4 * np.spacing(F32(1)) * scale).all()
    with mrcfile.open(src, permissive=True) as m:
        apix = F32(m.voxel_size.x)
    for i, (values, mapping) in enumerate(eman_decode(out)):
        assert mapping is not None
        assert_within_half_step(true_images(src)[i], values, mapping)
        assert F32(headers[i]["apix_x"]) == apix
        assert headers[i]["stored_renderbits"] == 5


@pytest.mark.parametrize("bits", [0, 5, 12], ids=lambda b: f"bits{b}")
def test_eman2_reads_our_stack(bits: int, tmp_path: Path) -> None:
    """Real EMAN2 reads every image of a stack to the values read_images gives, with the
    pixel size and origin of the source and the shared keys as Group.*.

    Command: ``$E2C_EMAN2/venv/bin/python $E2C_EMAN2/eman2_oracle.py read s.hdf s.npy
    --json s.json`` (run from a neutral directory; never with h5py in the process).
    """
    eman2_home()
    data = _stack(24, 32)
    src = write_mrc(tmp_path / "s.mrcs", data, voxel_size=APIX, origin=ORIGIN)
    out = tmp_path / "s.hdf"
    e2compress.compress_file(src, out, bits=bits)
    ours = np.stack(e2compress.read_images(out))
    eman2, headers = eman2_read(out, tmp_path)
    assert eman2.shape == ours.shape
    # EMAN2 decodes with float32 arithmetic: a few ulp of the range from our values
    # (which put 0 and integers exactly); lossless bits 0 is bit-identical
    scale = np.abs(ours).max(axis=(1, 2), keepdims=True)
    tol = 0 if bits == 0 else 4 * np.spacing(F32(1)) * scale
    assert (np.abs(eman2 - ours) <= tol).all()
    for h in headers:
        for axis, origin in zip("xyz", ORIGIN, strict=True):
            assert F32(h[f"apix_{axis}"]) == F32(APIX)
            assert F32(h[f"origin_{axis}"]) == F32(origin)
        assert h["Group.MRC.nz"] == len(data)
        assert h["Group.source_path"] == "s.mrcs"
        assert (h.get("stored_renderbits", 0)) == bits


def test_image_reports_are_compact_and_exact() -> None:
    """Per-image reports kept in columns give back exactly what was stored (float32
    limits, None for lossless images, shapes, rules), index like a list, and compare
    equal to the list of the same reports."""
    from e2compress.report import ImageReport, ImageReports

    items = [
        ImageReport(0, (32, 32), 5, float(F32(-1.25)), float(F32(3.1)), 7, "zero_straddle_grid"),
        ImageReport(1, (32, 32), 0, None, None, 0, ""),
        ImageReport(
            2**31 - 1, (4, 8, 8), 12, float(F32(1e-3)), float(F32(2e9)), 2**40, "data_range"
        ),
    ]
    reports = ImageReports(items)
    assert len(reports) == 3
    assert list(reports) == items
    assert reports == items
    assert reports[-1] == items[2]
    assert reports[1:] == items[1:]
    with pytest.raises(IndexError):
        reports[3]
    assert reports[1].rmin is None
    assert reports[1].rmax is None
