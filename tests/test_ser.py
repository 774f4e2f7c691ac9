"""FEI/TIA ``.ser`` input through ncempy (optional extra ``ser``): every element one image
in file row order (as EMAN2 reads it), the pixel size from the calibration, damaged
files refused on one line. Files come from the test writer (helpers.write_ser), checked
against real EMAN2 in test_eman2_formats; the real SER files ncempy and rosettasciio
publish are GPL-3.0 and not bundled."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e2compress import InputError, compress_file, open_source, read_images
from helpers import assert_blocks_consistent, assert_keys_kept, one_line, write_ser

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ncempy") is None, reason="needs the optional extra ser (ncempy)"
)

DTYPES = ["u1", "<u2", "<u4", "i1", "<i2", "<i4", "<f4", "<f8"]


def read_all(path: Path) -> list[np.ndarray]:
    with open_source(path) as src:
        return [src.image(i).reshape(src.shape(i)[1:]) for i in range(len(src))]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    shape=st.tuples(st.integers(1, 5), st.integers(1, 17), st.integers(1, 17)),
    dtype=st.sampled_from(DTYPES),
    spectra=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_series(
    tmp_path: Path, shape: tuple[int, int, int], dtype: str, spectra: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    else:
        data = (rng.standard_normal(shape) * 1e3).astype(dtype)
    if spectra:
        data = data[:, 0]
    write_ser(tmp_path / "s.ser", data)
    got = read_all(tmp_path / "s.ser")
    assert len(got) == len(data)
    for img, want in zip(got, data, strict=True):
        assert img.dtype == want.dtype.newbyteorder("=")
        np.testing.assert_array_equal(img, want.reshape(img.shape))
    assert_blocks_consistent(tmp_path / "s.ser")


def test_only_valid_elements(tmp_path: Path) -> None:
    """A series stopped early holds ValidNumberElements images, as EMAN2 reads it."""
    write_ser(tmp_path / "s.ser", np.zeros((4, 3, 3), np.uint16), valid=2)
    assert len(read_all(tmp_path / "s.ser")) == 2


@pytest.mark.parametrize(("delta", "apix"), [(2e-10, 2.0), (1.5e-9, 15.0), (1e-3, None)])
def test_pixel_size_and_keys(tmp_path: Path, delta: float, apix: float | None) -> None:
    write_ser(tmp_path / "s.ser", np.zeros((2, 4, 4), np.float32), delta=delta)
    with open_source(tmp_path / "s.ser") as src:
        header = src.header(1)
    assert header["SER.CalibrationDeltaX"] == delta
    assert header["SER.ValidNumberElements"] == 2
    assert header["SER.DataTypeID"] == 0x4122
    if apix is None:
        assert "apix_x" not in header
    else:
        assert header["apix_x"] == pytest.approx(apix)
        assert header["apix_y"] == pytest.approx(apix)


def test_compressed(tmp_path: Path) -> None:
    data = (np.arange(3 * 6 * 5) % 251).astype(np.uint16).reshape(3, 6, 5)
    write_ser(tmp_path / "s.ser", data)
    compress_file(tmp_path / "s.ser", tmp_path / "s.hdf", bits=0, threads=1)
    got = read_images(tmp_path / "s.hdf")
    assert len(got) == 3
    for img, want in zip(got, data, strict=True):
        np.testing.assert_array_equal(img, want)
    assert_keys_kept(tmp_path / "s.ser", tmp_path / "s.hdf")


@pytest.mark.parametrize("keep", [0.0, 0.01, 0.05, 0.3, 0.7, 0.97])
def test_truncated_refused(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "s.ser"
    write_ser(path, np.ones((3, 20, 20), np.float32))
    blob = path.read_bytes()
    path.write_bytes(blob[: int(keep * len(blob))])
    with pytest.raises(InputError) as exc:
        open_source(path)
    one_line(exc, path)


def test_complex_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.ser"
    write_ser(path, np.ones((1, 4, 4), np.float32))
    blob = bytearray(path.read_bytes())
    first = struct.unpack_from("<i", blob, struct.unpack_from("<i", blob, 22)[0])[0]
    struct.pack_into("<h", blob, first + 40, 11)  # DataType 11: complex
    path.write_bytes(bytes(blob))
    with pytest.raises(InputError) as exc:
        open_source(path)
    assert "unsupported data type 11" in one_line(exc, path)
