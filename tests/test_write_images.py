"""write_images: in-memory arrays through the same pipeline as a file.

Every image is read back two ways, with e2compress's reader and with plain h5py and
EMAN2's float32 formula (``conftest.eman_decode``), and compared with the arrays in
their own dtype by the one tolerance rule (``quantize.within_half_step``); integers
on a unit step must come back exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import e2compress
from e2compress import InputError, write_images
from e2compress.quantize import integer_step
from e2compress.readers.array import ArraySource
from helpers import assert_within_half_step, eman_decode, write_mrc

DTYPES = ["uint8", "int16", "uint16", "int32", "float32", "float64"]
SHAPES = [(1, 37), (40, 33), (3, 20, 17)]


def _image(dtype: str, shape: tuple[int, ...], seed: int, span: int = 200) -> np.ndarray:
    """Random values of ``dtype``: integers over ``span`` values (offset from 0 where the
    type allows), floats normal with sigma 50."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return (rng.normal(size=shape) * 50 + 10).astype(dt)
    low = 0 if dt.kind == "u" else -span // 2
    offset = 1_000_000 if dt.itemsize >= 4 else 0
    return (rng.integers(low, low + span, size=shape) + offset).astype(dt)


def _as_stored(img: np.ndarray) -> np.ndarray:
    """``img`` as EMAN2 holds it: a volume of one section is a 2-D image."""
    return img[0] if img.ndim == 3 and img.shape[0] == 1 else img


def _check(path: Path, arrays: list[np.ndarray]) -> None:
    """Both read-backs of ``path`` hold ``arrays`` within the tolerance rule."""
    images = [_as_stored(a) for a in arrays]
    back = e2compress.read_images(path)
    plain = eman_decode(path)
    assert len(back) == len(plain) == len(images)
    with e2compress.open(path) as f:
        for i, img in enumerate(images):
            assert back[i].shape == img.shape
            rng = f.render_range(i)
            values, mapping = plain[i]
            if rng is None:  # float32 storage: bit for bit
                assert np.array_equal(back[i], img.astype(np.float32))
                assert np.array_equal(values.reshape(img.shape), img.astype(np.float32))
                continue
            assert_within_half_step(img, back[i], rng)
            assert mapping is not None
            assert_within_half_step(img, values, mapping)
            if img.dtype.kind in "iu" and integer_step(rng) == 1:
                assert np.array_equal(back[i], img)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES)
def test_one_image_round_trips(tmp_path: Path, dtype: str, shape: tuple[int, ...]) -> None:
    img = _image(dtype, shape, seed=len(shape) * 7 + shape[-1])
    out = tmp_path / "one.hdf"
    report = write_images(out, [img], bits=8, threads=1)
    assert report.output == str(out)
    assert report.bytes_in == img.nbytes
    assert [r.bits for r in report.images] == [8]
    _check(out, [img])


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "int32"])
def test_integers_on_a_unit_step_come_back_exactly(tmp_path: Path, dtype: str) -> None:
    """200 integer values fit 8 bits: an integer mapping of step 1, so exact."""
    img = _image(dtype, (30, 31), seed=3)
    write_images(tmp_path / "i.hdf", [img], bits=8, threads=1)
    (back,) = e2compress.read_images(tmp_path / "i.hdf")
    with e2compress.open(tmp_path / "i.hdf") as f:
        assert integer_step(f.render_range(0)) == 1
    assert np.array_equal(back, img)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_stack_round_trips_with_its_headers(tmp_path: Path, dtype: str) -> None:
    images = [_image(dtype, (24, 19), seed=k, span=5000) for k in range(4)]
    headers = [{"defocus": np.float32(1.5 + k), "tag": "same"} for k in range(4)]
    out = tmp_path / "stack.hdf"
    report = write_images(out, images, headers=headers, bits=6, apix=1.25, threads=2)
    assert len(report.images) == 4
    _check(out, images)
    with e2compress.open(out) as f:
        for k in range(4):
            header = f.header(k)
            assert header["defocus"] == pytest.approx(1.5 + k)
            assert header["apix_x"] == pytest.approx(1.25)


def test_lossless_float32_is_bit_for_bit_and_verified(tmp_path: Path) -> None:
    img = _image("float32", (3, 16, 16), seed=5)
    img[0, 0, 0] = np.nan
    report = write_images(tmp_path / "f.hdf", [img], bits=0, verify=True, threads=1)
    assert report.verified
    (back,) = e2compress.read_images(tmp_path / "f.hdf")
    assert np.array_equal(back, img, equal_nan=True)


def test_the_same_pixels_as_from_a_file(tmp_path: Path) -> None:
    """An array and an MRC file of it compress to the same stored codes and range."""
    img = _image("int16", (50, 40), seed=9, span=3000)
    write_images(tmp_path / "a.hdf", [img], bits=5, threads=1)
    e2compress.compress_file(write_mrc(tmp_path / "m.mrc", img), bits=5, threads=1)
    with e2compress.open(tmp_path / "a.hdf") as a, e2compress.open(tmp_path / "m.hdf") as m:
        assert a.render_range(0) == m.render_range(0)
        assert np.array_equal(a.read_codes(0), m.read_codes(0))


def test_values_that_cannot_be_stored_are_refused_and_nothing_written(tmp_path: Path) -> None:
    wide = np.array([[0.1, 1 / 3], [2.0, 3.0]], dtype=np.float64)  # not exact in float32
    with pytest.raises(InputError, match=r"arrays: image 0: .*not exact in float32"):
        write_images(tmp_path / "w.hdf", [wide], bits=0, threads=1)
    nan = np.ones((4, 4), dtype=np.float32)
    nan[1, 1] = np.inf
    with pytest.raises(InputError, match=r"image 0: 1 pixels are NaN or infinite"):
        write_images(tmp_path / "w.hdf", [nan], bits=8, threads=1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("images", "problem"),
    [
        ([], "no images"),
        ([np.zeros(5)], r"shape \(5,\); an image must be 2-D"),
        ([np.zeros((2, 2, 2, 2))], "must be 2-D"),
        ([np.zeros((0, 3))], "holds no pixels"),
        ([np.zeros((2, 2), dtype=complex)], "complex128 data cannot be stored"),
        ([np.zeros((2, 2), dtype=bool)], "bool data cannot be stored"),
    ],
)
def test_arrays_that_are_not_images_are_refused(
    tmp_path: Path, images: list[np.ndarray], problem: str
) -> None:
    with pytest.raises(InputError, match=problem):
        write_images(tmp_path / "x.hdf", images, threads=1)
    assert list(tmp_path.iterdir()) == []


def test_one_array_is_not_taken_for_a_list(tmp_path: Path) -> None:
    """A 3-D array could be a volume or a stack: the caller says which."""
    with pytest.raises(InputError, match=r"\[volume\] for one volume, list\(stack\)"):
        write_images(tmp_path / "v.hdf", np.zeros((2, 3, 4)), threads=1)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_headers_must_match_the_images() -> None:
    with pytest.raises(InputError, match="1 headers for 2 images"):
        ArraySource([np.zeros((2, 2)), np.zeros((2, 2))], headers=[{}])


@pytest.mark.parametrize("key", ["nx", "datatype", "stored_renderbits", "render_min"])
def test_headers_cannot_describe_other_data(tmp_path: Path, key: str) -> None:
    """A stored mapping (or size) given with float32 pixels would decode them wrongly."""
    with pytest.raises(InputError, match=f"image 0: header key '{key}' is set by the writer"):
        write_images(tmp_path / "h.hdf", [np.ones((2, 2))], headers=[{key: 8}], bits=0)
    assert list(tmp_path.iterdir()) == []


def test_array_source_reads_rows_in_native_order() -> None:
    big = np.arange(12, dtype=">i2").reshape(3, 4)
    src = ArraySource([big, big.T], headers=[{"a": 1}, {"a": 1, "b": 2}])
    assert len(src) == 2
    assert src.shape(0) == (1, 3, 4)
    assert src.shape(1) == (1, 4, 3)
    assert src.dtype(0) == np.dtype("int16")
    assert np.array_equal(src.read(0, 0, 1, 3), big[1:3])
    assert np.array_equal(src.read(1, 0, 0, 4), big.T)
    assert src.shared_keys() == frozenset({"a"})


def test_a_stack_of_images_of_several_sizes_round_trips(tmp_path: Path) -> None:
    images = [_image("uint8", (3, 3), seed=1), _image("uint8", (3, 5), seed=2)]
    write_images(tmp_path / "sizes.hdf", images, bits=8, threads=1)
    _check(tmp_path / "sizes.hdf", images)


@st.composite
def _stacks(draw: st.DrawFn) -> list[np.ndarray]:
    """1..3 images of one dtype, each of its own shape (2-D or 3-D: a file may hold
    images of several sizes, which are then chunked differently), values anywhere in
    the type (floats within +-1e6)."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shapes = st.one_of(
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=24),
        hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=8),
    )
    if dtype.kind == "f":
        elements = st.floats(-1e6, 1e6, allow_nan=False, width=8 * dtype.itemsize)
    else:
        info = np.iinfo(dtype)
        elements = st.integers(int(info.min), int(info.max))
    count = draw(st.integers(1, 3))
    return [draw(hnp.arrays(dtype, draw(shapes), elements=elements)) for _ in range(count)]


@settings(max_examples=40, deadline=None)
@given(images=_stacks(), bits=st.integers(2, 16))
def test_any_images_round_trip_within_half_a_step(
    tmp_path_factory: pytest.TempPathFactory, images: list[np.ndarray], bits: int
) -> None:
    """Any integer or float arrays, any bits: the tolerance rule holds for every pixel
    through both read-backs (and the verifier), and integers on a unit step are exact."""
    out = tmp_path_factory.mktemp("h") / "any.hdf"
    report = write_images(out, images, bits=bits, threads=1, verify=True)
    assert report.verified
    _check(out, images)
