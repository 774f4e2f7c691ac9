"""Fletcher-32 chunk checksums: the bytes HDF5's own filter would store, verified by
plain h5py, real EMAN2 and our reader; a flipped byte is caught.

Truth: HDF5 itself (h5py writing through its Fletcher-32 filter stores the checksum it
computes; h5py reading through the filter refuses a damaged chunk).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import e2compress
from e2compress import checksum
from e2compress.errors import InputError
from helpers import DATA, eman2_read, flip_byte

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
FLETCHER32 = h5py.h5z.FILTER_FLETCHER32


def _hdf5_stored(tmp: Path, data: bytes) -> bytes:
    """The chunk HDF5 stores for ``data`` through a pipeline of only its Fletcher-32 filter."""
    path = tmp / "f.h5"
    arr = np.frombuffer(data, dtype=np.uint8)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("d", data=arr, chunks=(arr.size,), fletcher32=True)
        _, raw = ds.id.read_direct_chunk((0,))
    return bytes(raw)


@SETTINGS
@given(
    data=st.binary(min_size=1, max_size=3000)
    | st.binary(min_size=1, max_size=8).map(lambda b: b * 997)
)
def test_checksum_is_what_hdf5_stores(
    data: bytes, tmp_path_factory: pytest.TempPathFactory
) -> None:
    stored = _hdf5_stored(tmp_path_factory.mktemp("f"), data)
    assert checksum.append(data) == stored
    assert checksum.fletcher32_numpy(data) == int.from_bytes(stored[-4:], "little")
    assert checksum.strip(stored) == data


def test_checksum_edge_values() -> None:
    # by hand: words 0x0102, 0x0300 (odd byte padded); sum1 = 0x0402, sum2 = 0x0102 + 0x0402
    assert checksum.fletcher32(b"\x01\x02\x03") == (0x0504 << 16) | 0x0402
    assert checksum.fletcher32(b"") == 0
    assert checksum.fletcher32(b"\0" * 10) == 0
    # a non-zero sum that is a multiple of 65535 stays 0xffff (ones' complement), not 0
    assert checksum.fletcher32_numpy(b"\xff\xff") == 0xFFFFFFFF == checksum.fletcher32(b"\xff\xff")
    big = np.random.default_rng(1).integers(0, 256, size=3 << 20, dtype=np.uint8).tobytes()
    assert checksum.fletcher32_numpy(big) == checksum.fletcher32(big)


def test_strip_refuses_damage() -> None:
    sealed = checksum.append(b"some deflated bytes")
    for k in range(len(sealed)):
        bad = bytearray(sealed)
        bad[k] ^= 0x04
        with pytest.raises(ValueError, match="Fletcher-32"):
            checksum.strip(bytes(bad))
    with pytest.raises(ValueError, match="cannot hold"):
        checksum.strip(b"abc")


def test_strip_accepts_what_hdf5_accepts(tmp_path: Path) -> None:
    """HDF5 also accepts the checksum with the bytes of each 16-bit half swapped
    (written by HDF5 before 1.6.3); so does our reader: h5py reads such a chunk."""
    data = bytes(range(7, 250))
    value = checksum.fletcher32(data)
    swapped = ((value & 0x00FF00FF) << 8) | ((value >> 8) & 0x00FF00FF)
    assert swapped != value
    chunk = data + swapped.to_bytes(4, "little")
    assert checksum.strip(chunk) == data
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset(
            "d", shape=(len(data),), dtype=np.uint8, chunks=(len(data),), fletcher32=True
        )
        ds.id.write_direct_chunk((0,), chunk)
    with h5py.File(path, "r") as f:
        assert bytes(f["d"][...]) == data


def _chunks(path: Path) -> list[tuple[str, int, int]]:
    """(dataset, byte offset, size) of every chunk of every image."""
    out = []
    with h5py.File(path, "r") as f:
        images = f["MDF/images"]
        for name in images:
            ds = images[name]["image"]
            for k in range(ds.id.get_num_chunks()):
                info = ds.id.get_chunk_info(k)
                out.append((ds.name, info.byte_offset, info.size))
    return out


@pytest.mark.parametrize("name", ["EMD-3001.map", "13pf_MT.tif"])
@pytest.mark.parametrize("bits", [0, 5, 12])
def test_output_carries_checksums_every_reader_verifies(
    name: str, bits: int, tmp_path: Path
) -> None:
    src = DATA / name
    out = tmp_path / "out.hdf"
    e2compress.compress_file(src, out, bits=bits)
    with h5py.File(out, "r") as f:
        images = f["MDF/images"]
        for key in images:
            ds = images[key]["image"]
            plist = ds.id.get_create_plist()
            filters = [plist.get_filter(k)[0] for k in range(plist.get_nfilters())]
            assert filters[-1] == FLETCHER32  # last: over the deflated bytes
    # the stored values through HDF5's filters (checksums verified) and through our
    # raw-chunk reader are the same
    with h5py.File(out, "r") as f, e2compress.open(out) as mine:
        images = f["MDF/images"]
        assert len(images) == len(mine)
        for i in range(len(mine)):
            plain = images[f"{i}/image"][...]
            assert np.array_equal(plain, mine.read_codes(i), equal_nan=True)
    # one flipped byte in the middle of a chunk: both readers refuse the image
    dataset, offset, size = _chunks(out)[-1]
    flip_byte(out, offset + size // 2)
    with h5py.File(out, "r") as f, pytest.raises(OSError, match="filter"):
        f[dataset][...]
    with pytest.raises(InputError, match="Fletcher-32"):
        e2compress.read_images(out)


def test_checksum_can_be_turned_off(tmp_path: Path) -> None:
    out = tmp_path / "out.hdf"
    e2compress.compress_file(DATA / "EMD-3001.map", out, bits=8, options=None)
    off = tmp_path / "off.hdf"
    opts = e2compress.Options(bits=8, checksum=False)
    e2compress.compress_file(DATA / "EMD-3001.map", off, options=opts)
    with h5py.File(off, "r") as f:
        assert not f["MDF/images/0/image"].fletcher32
    with h5py.File(out, "r") as f:
        assert f["MDF/images/0/image"].fletcher32
    assert np.array_equal(e2compress.read_images(out)[0], e2compress.read_images(off)[0])
    assert out.stat().st_size > off.stat().st_size  # 4 bytes per chunk


def test_options_refuse_a_non_boolean_checksum() -> None:
    with pytest.raises(e2compress.E2CompressError, match="checksum"):
        e2compress.Options(checksum=1).validate()  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["EMD-3001.map", "13pf_MT.tif"])
def test_real_eman2_reads_checksummed_output(name: str, tmp_path: Path) -> None:
    out = tmp_path / "out.hdf"
    e2compress.compress_file(DATA / name, out, bits=6)
    with h5py.File(out, "r") as f:
        assert f["MDF/images/0/image"].fletcher32
    theirs, _ = eman2_read(out, tmp_path)
    ours = e2compress.read_images(out)
    with e2compress.open(out) as f:
        for i, mine in enumerate(ours):
            rng = f.render_range(i)
            assert rng is not None
            eman = theirs.reshape(len(ours), *mine.shape)[i]
            scale = max(abs(rng.rmin), abs(rng.rmax), 1.0)  # EMAN2's float32 decode
            assert float(np.max(np.abs(mine.astype(np.float64) - eman))) <= 2e-6 * scale
