"""The compiled kernels (numba) against their numpy twins and independent truth.

The quantiser must give the very codes and clamped counts of EMAN2's float32 renderer
(the numpy sequence in ``quantize.quantize``) for every float32 input; the Huffman
deflate coder must give streams that zlib, ISA-L and libdeflate decode to the input, no
longer than the order-0 entropy allows a Huffman code. Tests of the compiled versions
skip without numba.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import h5py
import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import e2compress
from e2compress import kernels
from e2compress.quantize import RenderRange, quantize
from helpers import assert_within_half_step, eman2_read, eman_decode, write_mrc

F32 = np.float32
SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


def _numba_kernels():  # type: ignore[no-untyped-def]
    """The numba module's kernels, made ready in this process (skips without numba)."""
    pytest.importorskip("numba")
    from e2compress import kernels_numba

    assert kernels.warm_up(), kernels._COMPILED.error
    return kernels_numba


@st.composite
def mappings(draw: st.DrawFn) -> tuple[np.ndarray, RenderRange]:
    """float32 pixels (including far-out and huge values) and a mapping rmin < rmax."""
    n = draw(st.integers(1, 3000))
    bits = draw(st.integers(1, 16))
    scale = draw(st.sampled_from([1e-30, 1e-6, 1.0, 7.0, 1e4, 1e20, 3e38]))
    centre = draw(st.sampled_from([0.0, 1.0, -3.5, 1e3, -1e6]))
    elements = st.floats(-1.0, 1.0, width=32)
    unit = draw(hnp.arrays(np.float32, n, elements=elements))
    with np.errstate(over="ignore"):
        x = (F32(centre) + unit.astype(np.float64) * scale).astype(F32)
    x[~np.isfinite(x)] = F32(0.0)
    lo, hi = sorted(draw(st.lists(st.floats(-1.5, 1.5), min_size=2, max_size=2, unique=True)))
    with np.errstate(over="ignore"):
        rmin, rmax = F32(centre + lo * scale), F32(centre + hi * scale)
    with np.errstate(over="ignore", invalid="ignore"):
        span = rmax - rmin
    if not (np.isfinite(span) and rmax > rmin):  # the pipeline refuses such ranges
        rmin, rmax = F32(-1.0), F32(1.0)
    if draw(st.booleans()):  # values exactly on the ends and just past them
        x[: min(4, n)] = [
            rmin,
            rmax,
            np.nextafter(rmin, F32(-np.inf)),
            np.nextafter(rmax, F32(np.inf)),
        ][: min(4, n)]
    return x, RenderRange(bits, float(rmin), float(rmax))


def _reference(x: np.ndarray, rng: RenderRange) -> tuple[np.ndarray, int]:
    """Today's quantiser (EMAN2's renderer in numpy float32) and its clamped count."""
    out = np.empty(x.shape, dtype=np.uint16)
    codes, clamped = quantize(x, rng, out=out)
    return codes, clamped


@SETTINGS
@given(mappings())
def test_numpy_twin_equals_renderer(case: tuple[np.ndarray, RenderRange]) -> None:
    x, rng = case
    want, clamped = _reference(x, rng)
    got = np.empty(x.shape, dtype=np.uint16)
    assert kernels.quantize_numpy(x, rng.rmin, rng.rmax, rng.bits, got) == clamped
    np.testing.assert_array_equal(got, want)


@SETTINGS
@given(mappings(), st.sampled_from([np.uint8, np.uint16]))
def test_compiled_quantiser_equals_renderer(
    case: tuple[np.ndarray, RenderRange], dtype: type
) -> None:
    knb = _numba_kernels()
    x, rng = case
    if dtype is np.uint8 and rng.bits > 8:
        rng = RenderRange(8, rng.rmin, rng.rmax)
    want, clamped = _reference(x, rng)
    got = np.full(x.shape, 7, dtype=dtype)
    lo, hi = F32(rng.rmin), F32(rng.rmax)
    n = knb.quantize(x, lo, hi, hi - lo, F32(2**rng.bits - 1), kernels.HALF_DOWN, got)
    assert n == clamped
    np.testing.assert_array_equal(got, want)
    # independent truth: every code within [0, 2**bits - 1], ends clamped
    assert int(got.max()) <= 2**rng.bits - 1
    assert np.all(got[x <= lo] == 0)
    assert np.all(got[x >= hi] == 2**rng.bits - 1)


def test_quantize_uses_the_twin_for_other_dtypes() -> None:
    x = np.arange(-5, 40, dtype=np.float64).reshape(5, 9)
    got = np.empty(x.shape, dtype=np.uint8)
    assert kernels.quantize(x, 0.0, 31.0, 5, got) == 5 + 8
    np.testing.assert_array_equal(got, np.clip(x, 0, 31).astype(np.uint8))


# --------------------------------------------------------------------------- deflate


@st.composite
def byte_streams(draw: st.DrawFn) -> np.ndarray:
    """Bytes of shot-noise-like, skewed (long codes), constant and uniform kinds."""
    n = draw(st.one_of(st.integers(0, 300), st.integers(60_000, 200_000)))
    kind = draw(st.sampled_from(["poisson", "fibonacci", "constant", "uniform", "two"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if kind == "poisson":
        return np.minimum(rng.poisson(draw(st.floats(0.1, 30.0)), n), 255).astype(np.uint8)
    if kind == "fibonacci":  # frequencies 1, 1, 2, 3, 5, ...: Huffman depth > 15 unlimited
        fib = [1, 1]
        while len(fib) < 30:
            fib.append(fib[-1] + fib[-2])
        p = np.array(fib, dtype=np.float64)[::-1]
        return rng.choice(30, size=n, p=p / p.sum()).astype(np.uint8) * 8
    if kind == "constant":
        return np.full(n, draw(st.integers(0, 255)), dtype=np.uint8)
    if kind == "two":
        return rng.choice(np.array([0, 255], dtype=np.uint8), size=n)
    return rng.integers(0, 256, n, dtype=np.uint8)


def _entropy_bits(data: np.ndarray) -> float:
    counts = np.bincount(data, minlength=256)
    p = counts[counts > 0] / max(1, data.size)
    return float(-(p * np.log2(p)).sum()) * data.size


def _decoders() -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = [("zlib", zlib.decompress)]
    try:
        from isal import isal_zlib

        out.append(("isal", isal_zlib.decompress))
    except ImportError:
        pass
    try:
        import deflate

        out.append(("libdeflate", lambda b, n: deflate.zlib_decompress(b, n)))
    except ImportError:
        pass
    return out


@SETTINGS
@given(byte_streams())
def test_compiled_deflate_decodes_to_its_input(data: np.ndarray) -> None:
    _numba_kernels()
    stream = kernels.huffman_deflate(data)
    for name, decode in _decoders():
        got = decode(stream, data.size) if name == "libdeflate" else decode(stream)  # type: ignore[operator]
        assert bytes(got) == data.tobytes(), name
    # a Huffman code is within one bit a symbol of the order-0 entropy; each 64 KB
    # block adds its header (< 300 bytes), the stream 6 bytes
    blocks = max(1, math.ceil(data.size / kernels.SEGMENT))
    assert len(stream) * 8 <= _entropy_bits(data) + data.size + blocks * 2400 + 48


def test_deflate_fallback_is_zlib_huffman_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "compiled", lambda name: None)
    data = np.minimum(np.random.default_rng(3).poisson(1.0, 50_000), 31).astype(np.uint8)
    c = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    assert kernels.huffman_deflate(data) == c.compress(data.tobytes()) + c.flush()


def test_compiled_deflate_is_as_small_as_zlib_huffman_only_on_shot_noise() -> None:
    _numba_kernels()
    data = np.minimum(np.random.default_rng(5).poisson(1.0, 1 << 18) * 3, 31).astype(np.uint8)
    stream = kernels.huffman_deflate(data)
    assert zlib.decompress(stream) == data.tobytes()
    c = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    assert len(stream) <= len(c.compress(data.tobytes()) + c.flush()) * 1.002


# --------------------------------------------------------------------------- in the pipeline


@settings(max_examples=40, deadline=None, derandomize=True)
@given(mappings(), st.integers(5, 40))
def test_quantize_dispatch_gives_the_renderers_codes(
    case: tuple[np.ndarray, RenderRange], repeat: int
) -> None:
    """``quantize.quantize`` runs the compiled kernel once it is ready."""
    _numba_kernels()
    x, rng = case
    big = np.tile(x, repeat)
    want = np.empty(big.shape, dtype=np.uint16)
    clamped = kernels.quantize_numpy(big, rng.rmin, rng.rmax, rng.bits, want)
    got = np.empty(big.shape, dtype=np.uint16)
    codes, n = quantize(big, rng, out=got)
    assert n == clamped
    np.testing.assert_array_equal(codes, want)


def _stored(path: Path) -> list[tuple[np.ndarray, dict[str, object]]]:
    """Every image's stored codes (raw dataset values) and attributes."""
    out = []
    with h5py.File(path, "r") as f:
        images = f["MDF/images"]
        for key in sorted(images, key=int):
            ds = images[key]["image"]
            attrs = {k: np.asarray(v).tolist() for k, v in images[key].attrs.items()}
            out.append((ds[...], attrs))
    return out


@pytest.mark.parametrize("bits", [5, 10])
@pytest.mark.parametrize("suffix", [".mrc", ".mrcs"])
def test_files_are_the_same_with_and_without_numba(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bits: int, suffix: str
) -> None:
    """Stored codes and every header value, decoded through plain h5py, are identical
    whether the compiled kernels run or the numpy versions (numba or not installed)."""
    _numba_kernels()
    rng = np.random.default_rng(bits)
    movie = (rng.poisson(1.0, (3, 300, 280)) * rng.normal(1, 0.05, (300, 280))).astype(F32)
    movie[1, 5, 7] = -2.5  # clamped by a value range below
    src = write_mrc(tmp_path / f"m{suffix}", movie)
    a, b = tmp_path / "numba.hdf", tmp_path / "numpy.hdf"
    e2compress.compress_file(src, a, bits=bits, value_range=(0.0, 9.0), threads=2)
    monkeypatch.setattr(kernels, "compiled", lambda name: None)
    e2compress.compress_file(src, b, bits=bits, value_range=(0.0, 9.0), threads=2)
    got, want = _stored(a), _stored(b)
    assert len(got) == len(want) == (3 if suffix == ".mrcs" else 1)
    for (codes_a, attrs_a), (codes_b, attrs_b) in zip(got, want, strict=True):
        np.testing.assert_array_equal(codes_a, codes_b)
        assert attrs_a == attrs_b


@pytest.mark.parametrize("frames", [1, 3])
def test_a_large_image_that_fits_is_read_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, frames: int
) -> None:
    """Frames over SMALL_IMAGE_BYTES and up to HELD_IMAGE_BYTES: every row is read from
    the source exactly once, the source's SHA-256 needs no read of its own, and the
    stored values are within half a step of the source."""
    from e2compress import encode, pipeline
    from e2compress.hashing import OrderedHasher
    from e2compress.readers.mrc import MrcSource

    ny, nx = 1900, 1500  # 11.4 MB of float32 a frame
    assert pipeline.SMALL_IMAGE_BYTES < ny * nx * 4 <= encode.HELD_IMAGE_BYTES
    rng = np.random.default_rng(frames)
    movie = (rng.poisson(2.0, (frames, ny, nx)) * 1.01).astype(F32)
    src = write_mrc(tmp_path / "m.mrcs", movie)
    reads: list[tuple[int, int, int]] = []
    read = MrcSource.read

    def spy(self: MrcSource, index: int, z: int, y0: int, y1: int) -> np.ndarray:
        reads.extend((index, z, y) for y in range(y0, y1))
        return read(self, index, z, y0, y1)

    rereads: list[int] = []
    finish = OrderedHasher.finish

    def finish_spy(self: OrderedHasher, pread: object) -> str:
        digest = finish(self, pread)  # type: ignore[arg-type]
        rereads.append(self.reread)
        return digest

    monkeypatch.setattr(MrcSource, "read", spy)
    monkeypatch.setattr(OrderedHasher, "finish", finish_spy)
    out = tmp_path / "m.hdf"
    e2compress.compress_file(src, out, bits=5, threads=2)
    assert sorted(reads) == [(i, 0, y) for i in range(frames) for y in range(ny)]
    assert rereads == [0]
    for k, (decoded, mapping) in enumerate(eman_decode(out)):
        assert mapping is not None
        assert_within_half_step(movie[k], decoded, mapping)


def test_real_eman2_reads_the_compiled_coders_streams(tmp_path: Path) -> None:
    """Chunks deflated by the compiled Huffman coder decode in real EMAN2's HDF5."""
    _numba_kernels()
    rng = np.random.default_rng(11)
    image = (rng.poisson(1.0, (700, 600)) * rng.normal(1, 0.05, (700, 600))).astype(F32)
    src = write_mrc(tmp_path / "h.mrc", image)
    out = tmp_path / "h.hdf"
    report = e2compress.compress_file(src, out, bits=5)
    assert report.engine.startswith("huffman")
    with h5py.File(out, "r") as f:  # the first chunk is the compiled coder's stream
        ds = f["MDF/images/0/image"]
        _, raw = ds.id.read_direct_chunk((0, 0))
        rows = ds.chunks[0]
        assert raw[:-4] == kernels.huffman_deflate(np.ascontiguousarray(ds[:rows]))
    theirs, _ = eman2_read(out, tmp_path)
    (ours, mapping), *_ = eman_decode(out)
    assert mapping is not None
    np.testing.assert_allclose(theirs.reshape(ours.shape), ours, rtol=0, atol=1e-5)
    assert_within_half_step(image, theirs.reshape(image.shape), mapping)


def test_a_faulty_compiled_stream_is_never_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A compiled stream that does not decode to its input (a coder fault, simulated by
    flipping one bit of a block's Huffman data) is replaced by zlib's, which does."""
    _numba_kernels()
    real = kernels.compiled("deflate")
    assert real is not None

    def faulty(flat: np.ndarray, out: np.ndarray, segment: int) -> int:
        size = int(real(flat, out, segment))
        out.view(np.uint8)[size // 2] ^= 0x10
        return size

    monkeypatch.setattr(kernels, "compiled", lambda name: faulty)
    data = np.minimum(np.random.default_rng(7).poisson(2.0, 200_000), 31).astype(np.uint8)
    stream = kernels.huffman_deflate(data)
    assert zlib.decompress(stream) == data.tobytes()
    c = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    assert stream == c.compress(data.tobytes()) + c.flush()
