"""SerialEM's packed 4-bit MRC (mode 101): nibble order, odd-nx row padding, exact storage,
pixel size, size checks, and what real EMAN2 reads from the same files.

The files are packed by ``helpers.write_mrc_4bit`` from SerialEM's documentation, pixel by
pixel, independently of the reader's vectorised unpacking.
"""

from __future__ import annotations

import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from e2compress import InputError, compress_file, open_source
from helpers import eman2_read, eman_decode, run_cli, write_mrc_4bit

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None)


def _counts(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 16, shape).astype(np.uint8)


def test_bytes_by_hand(tmp_path: Path) -> None:
    """Bytes written by hand: 0x21 is pixels 1, 2; a 3-pixel row is 2 bytes, the high
    nibble of the second (here 0xF) is padding."""
    path = write_mrc_4bit(tmp_path / "h.mrc", np.zeros((2, 3), np.uint8))
    with open(path, "r+b") as fh:
        fh.seek(1024)
        fh.write(bytes([0x21, 0xF3, 0x54, 0x06]))
    with open_source(path) as src:
        assert src.dtype(0) == np.uint8
        assert src.shape(0) == (1, 2, 3)
        np.testing.assert_array_equal(src.image(0), [[1, 2, 3], [4, 5, 6]])
        assert src.header(0)["MRC.mode"] == 101


@SETTINGS
@given(
    data=hnp.arrays(
        np.uint8,
        st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)),
        elements=st.integers(0, 15),
    ),
    stack=st.booleans(),
)
def test_any_shape_reads_back(
    tmp_path_factory: pytest.TempPathFactory, data: np.ndarray, stack: bool
) -> None:
    """Every shape, odd and even nx: the reader returns the packed values, rows in order,
    a block of rows at a time too."""
    name = "m.mrcs" if stack else "m.mrc"
    path = write_mrc_4bit(tmp_path_factory.mktemp("m101") / name, data)
    with open_source(path) as src:
        got = np.stack([src.image(i) for i in range(len(src))])
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got.reshape(data.shape), data)
        _, ny, _ = src.shape(0)
        if ny > 1:
            rows = np.concatenate([src.read(0, 0, 0, 1), src.read(0, 0, 1, ny)])
            np.testing.assert_array_equal(rows, data[0])


@pytest.mark.parametrize("bits", [4, 5, "auto"])
@pytest.mark.parametrize("nx", [64, 63])
def test_stored_exactly(tmp_path: Path, bits: int | str, nx: int) -> None:
    """4-bit counts are integers 0..15: stored exactly at 4 bits or more, and the pixel
    size from the header is kept."""
    data = _counts((3, 48, nx))
    src = write_mrc_4bit(tmp_path / "frames.mrcs", data, voxel_size=0.83)
    compress_file(src, tmp_path / "out.hdf", bits=bits)
    decoded = eman_decode(tmp_path / "out.hdf")
    assert len(decoded) == 3
    for k, (img, _mapping) in enumerate(decoded):
        np.testing.assert_array_equal(img.reshape(data[k].shape), data[k].astype(np.float32))
    with h5py.File(tmp_path / "out.hdf", "r") as f:
        attrs = f["MDF/images/0"].attrs
        apix = np.ravel(attrs["EMAN.apix_x"])[0] if "EMAN.apix_x" in attrs else None
        if apix is None:
            apix = np.ravel(f["MDF/images"].attrs["EMAN.apix_x"])[0]
        assert apix == pytest.approx(0.83, rel=1e-6)


@pytest.mark.parametrize("nx", [8, 7])
@pytest.mark.parametrize("delta", [-1, 1, (8 * 6) // 2])
def test_size_uses_packed_rows(tmp_path: Path, nx: int, delta: int) -> None:
    """The file must hold exactly (nx + 1) // 2 bytes a row: one byte less or more, or the
    unpacked size (a byte a pixel), is refused on one line naming the file."""
    path = write_mrc_4bit(tmp_path / "f.mrc", _counts((6, nx)))
    blob = path.read_bytes()
    assert len(blob) == 1024 + 6 * ((nx + 1) // 2)
    path.write_bytes(blob[:delta] if delta < 0 else blob + b"\0" * delta)
    expected = "truncated" if delta < 0 else "more than its header says"
    with pytest.raises(InputError, match=expected) as err:
        open_source(path)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_cli_truncated_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_mrc_4bit(tmp_path / "cut.mrc", _counts((16, 16)))
    path.write_bytes(path.read_bytes()[:-5])
    rc, _out, err = run_cli(capsys, "--bits", "5", path)
    assert rc == 1
    lines = err.strip().splitlines()
    assert lines
    assert all("cut.mrc" in line for line in lines), err
    assert "file is truncated" in err
    assert not (tmp_path / "cut.hdf").exists()


def test_complex_still_refused(tmp_path: Path) -> None:
    path = write_mrc_4bit(tmp_path / "c.mrc", _counts((4, 4)))
    blob = bytearray(path.read_bytes())
    blob[12:16] = struct.pack("<i", 4)
    path.write_bytes(bytes(blob))
    with pytest.raises(InputError, match="complex"):
        open_source(path)


# ------------------------------------------------------------------ real EMAN2


def test_eman2_reads_the_same_even_nx(tmp_path: Path) -> None:
    """EMAN2's MrcIO (MRC_UHEX) reads the same values as we do when nx is even, and
    reads our 4-bit output back exactly."""
    data = _counts((2, 40, 64), seed=3)
    path = write_mrc_4bit(tmp_path / "even.mrcs", data, voxel_size=1.25)
    theirs, headers = eman2_read(path, tmp_path)
    with open_source(path) as src:
        ours = np.stack([src.image(i) for i in range(len(src))])
    np.testing.assert_array_equal(theirs.reshape(ours.shape), ours.astype(np.float32))
    np.testing.assert_array_equal(ours, data)
    assert headers[0]["apix_x"] == pytest.approx(1.25, rel=1e-6)
    out = tmp_path / "even.hdf"
    compress_file(path, out, bits=4)
    back, _ = eman2_read(out, tmp_path)
    np.testing.assert_array_equal(back.reshape(data.shape), data.astype(np.float32))


def test_eman2_odd_nx_differs_as_documented(tmp_path: Path) -> None:
    """For odd nx EMAN2 reads ny * (nx // 2) bytes from the start of the data, as if rows
    were not padded, and unpacks them as one stream: its pixel k is nibble k of those
    bytes. The first row's first nx - 1 pixels agree; every later pixel is shifted. We
    follow SerialEM (docs/counting_inputs.md)."""
    ny, nx = 6, 9
    data = _counts((ny, nx), seed=4)
    path = write_mrc_4bit(tmp_path / "odd.mrc", data)
    theirs, _ = eman2_read(path, tmp_path)
    theirs = theirs.reshape(-1)
    raw = path.read_bytes()[1024:]
    stream = raw[: ny * (nx // 2)]
    nibbles = np.array([[b & 15, b >> 4] for b in stream], np.float32).reshape(-1)
    np.testing.assert_array_equal(theirs[: len(nibbles)], nibbles)
    np.testing.assert_array_equal(theirs[: nx - 1], data[0, : nx - 1])
    with open_source(path) as src:
        assert not np.array_equal(src.image(0).reshape(-1).astype(np.float32), theirs)
