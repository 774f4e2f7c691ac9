"""Gatan DM3/DM4 input through ncempy (optional extra ``dm``): values, stacks, the pixel
size from the calibration, EMAN2's header keys, damaged files refused on one line.

The files are made by the test writer (helpers.write_dm), in the layout
DigitalMicrograph writes (thumbnail first, top line first); test_eman2_formats checks
that real EMAN2 reads them as e2compress does. The small real DM files the ncempy and
rosettasciio projects publish are GPL-licensed and so not bundled (see docs/inputs.md).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import e2compress
from e2compress import InputError, compress_file, open_source, read_images
from helpers import assert_blocks_consistent, assert_keys_kept, one_line, write_dm

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ncempy") is None, reason="needs the optional extra dm (ncempy)"
)

TAGS: dict[str, Any] = {
    "Microscope Info": {
        "Voltage": 300000.0,
        "Actual Magnification": 50000.0,
        "Indicated Magnification": 45000.0,
        "Cs(mm)": 2.7,
    },
    "Acquisition": {
        "Device": {
            "Active Size (pixels)": (4096.0, 4096.0),
            "CCD": {"Pixel Size (um)": (5.0, 5.0)},
        },
        "Parameters": {"High Level": {"Binning": (2.0, 2.0), "Processing": "Gain Normalized"}},
    },
    "DataBar": {"Exposure Number": 17, "Acquisition Date": "12/5/2026"},
}


def read_all(path: Path) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    with open_source(path) as src:
        images = [src.image(i) for i in range(len(src))]
        headers = [src.header(i) for i in range(len(src))]
        for i in range(len(src)):
            assert src.shape(i) == (1, *images[i].shape[-2:])
    return images, headers


DTYPES = ["<f4", "<i2", "<u2", "<i4", "<u4", "<f8", "u1", "i1"]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 17), st.integers(1, 17)),
    dtype=st.sampled_from(DTYPES),
    version=st.sampled_from([3, 4]),
    thumbnail=st.booleans(),
    two_d=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_image_or_stack(
    tmp_path: Path,
    shape: tuple[int, int, int],
    dtype: str,
    version: int,
    thumbnail: bool,
    two_d: bool,
    seed: int,
) -> None:
    """Every section of a 2-D image or 3-D stack is one image, in its own dtype, with the
    values DigitalMicrograph holds (rows bottom-up as EMAN2 reads them)."""
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    rng = np.random.default_rng(seed)
    if info is not None:
        data = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    else:
        data = (rng.standard_normal(shape) * 1e3).astype(dtype)
    if two_d:
        data = data[0]
    path = tmp_path / f"x.dm{version}"
    write_dm(path, data, version, thumbnail=thumbnail)
    images, _ = read_all(path)
    stack = data[None] if two_d else data
    assert len(images) == len(stack)
    for img, want in zip(images, stack, strict=True):
        assert img.dtype == want.dtype.newbyteorder("=")
        np.testing.assert_array_equal(img, want)
    assert_blocks_consistent(path)


@pytest.mark.parametrize("version", [3, 4])
def test_eman2_header_keys(tmp_path: Path, version: int) -> None:
    """EMAN2's DM3./DM4. keys with its units (kV) and defaults for absent tags."""
    path = tmp_path / f"micrograph.dm{version}"
    write_dm(path, np.zeros((4, 6), np.float32), version, tags=TAGS)
    _, (header,) = read_all(path)
    p = f"DM{version}"
    assert header[f"{p}.voltage"] == 300.0
    assert header["microscope_voltage"] == np.float32(300.0)
    assert header[f"{p}.cs"] == 2.7
    assert header["microscope_cs"] == np.float32(2.7)
    assert header[f"{p}.actual_mag"] == 50000.0
    assert header[f"{p}.indicated_mag"] == 45000.0
    assert header[f"{p}.pixel_size"] == 5.0
    assert (header[f"{p}.camera_x"], header[f"{p}.camera_y"]) == (4096, 4096)
    assert (header[f"{p}.binning_x"], header[f"{p}.binning_y"]) == (2, 2)
    assert header[f"{p}.exposure_number"] == 17
    assert header[f"{p}.acq_date"] == "12/5/2026"
    assert header[f"{p}.frame_type"] == "Gain Normalized"
    assert header[f"{p}.name"] == "micrograph"
    assert header[f"{p}.exposure_time"] == 0.0  # absent: EMAN2's default
    assert header[f"{p}.source"] == ""


@pytest.mark.parametrize(
    ("scale", "unit", "tags", "apix"),
    [
        (0.25, "nm", {}, 2.5),
        (1.5, "Å", {}, 1.5),
        (0.0004, "µm", {}, 4.0),
        (2.0, "A", TAGS, 2.0),  # the calibration wins over the magnification
        (1.0, "", TAGS, 10000 * 5.0 / 50000.0),  # uncalibrated: EMAN2's rule (1.0 A)
        (0.1, "1/nm", {}, None),  # a diffraction pattern: no pixel size
        (1.0, "", {}, None),
        (1e-9, "m", {}, 10.0),
    ],
)
def test_pixel_size(
    tmp_path: Path, scale: float, unit: str, tags: dict[str, Any], apix: float | None
) -> None:
    path = tmp_path / "x.dm4"
    write_dm(path, np.zeros((2, 4, 6), np.uint16), scale=scale, unit=unit, tags=tags)
    _, headers = read_all(path)
    for header in headers:
        if apix is None:
            assert "apix_x" not in header
        else:
            for axis in "xyz":
                assert header[f"apix_{axis}"] == pytest.approx(apix, rel=1e-6)


def test_compressed_stack(tmp_path: Path) -> None:
    """A DM4 stack compresses to one image per section, with its pixel size and tags."""
    data = np.arange(3 * 5 * 7, dtype=np.int16).reshape(3, 5, 7) - 50
    write_dm(tmp_path / "s.dm4", data, tags=TAGS)
    out = tmp_path / "s.hdf"
    compress_file(tmp_path / "s.dm4", out, bits=0, threads=1)
    got = read_images(out)
    assert len(got) == 3
    for img, want in zip(got, data, strict=True):
        np.testing.assert_array_equal(img, want)
    with e2compress.open(out) as f:
        header = f.header(2)
    assert header["apix_x"] == 2.5
    assert header["Group.DM4.voltage"] == 300.0  # the same for every image: stored once
    assert header["Group.DM4.name"] == "s"
    assert_keys_kept(tmp_path / "s.dm4", out)


# --------------------------------------------------------------------------- refused


@pytest.mark.parametrize("version", [3, 4])
@pytest.mark.parametrize("keep", [0.0, 0.01, 0.3, 0.6, 0.9, 0.999])
def test_truncated_refused(tmp_path: Path, version: int, keep: float) -> None:
    path = tmp_path / f"x.dm{version}"
    write_dm(path, np.ones((2, 40, 30), np.float32), version, tags=TAGS)
    blob = path.read_bytes()
    path.write_bytes(blob[: int(keep * len(blob))])
    with pytest.raises(InputError) as exc:
        open_source(path)
    one_line(exc, path)


def test_unsupported_type_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.dm4"
    write_dm(path, np.zeros((4, 4), np.float32))
    blob = bytearray(path.read_bytes())
    # DataType 2 (float32) of the image -> 3 (complex64): the only u4 tag with value 2
    marker = b"DataType"
    at = blob.rfind(marker)
    value_at = blob.index(np.array([2], "<u4").tobytes(), at)
    blob[value_at : value_at + 4] = np.array([3], "<u4").tobytes()
    path.write_bytes(bytes(blob))
    with pytest.raises(InputError) as exc:
        open_source(path)
    assert "unsupported data type 3" in one_line(exc, path)
