"""IMAGIC (.hed/.img pairs) and SPIDER (.spi) input: files written by real EMAN2
(tests/data/eman2, values known by formula), files of any type, size and byte order
from the test writers, damaged files refused on one line, and an IMAGIC pair named
once."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e2compress import InputError, compress_file, open_source, read_images
from e2compress.readers import ImagicSource, SpiderSource
from helpers import (
    EMAN2_DATA,
    assert_blocks_consistent,
    assert_keys_kept,
    formula_image,
    one_line,
    run_cli,
    write_imagic,
    write_spider,
)

# file -> (images, shape (nz, ny, nx), apix)
EMAN2_FILES = {
    "stack.hed": (3, (1, 12, 16), 1.5),
    "stack.img": (3, (1, 12, 16), 1.5),
    "square_be.hed": (2, (1, 8, 8), 1.5),
    "volume.hed": (1, (4, 6, 10), 1.5),
    "stack.spi": (3, (1, 12, 16), None),
    "single.spi": (1, (1, 6, 10), None),
    "volume_be.spi": (1, (4, 6, 10), None),
}


def read_all(path: Path) -> list[np.ndarray]:
    with open_source(path) as src:
        return [src.image(i).reshape(src.shape(i)) for i in range(len(src))]


@pytest.mark.parametrize("name", list(EMAN2_FILES))
def test_eman2_written_files(name: str) -> None:
    """The reader and the pixel size of each file EMAN2 wrote, by either name of a pair
    (their values, shapes and blocks: test_reader_contract.TestWrittenByEman2)."""
    count, shape, apix = EMAN2_FILES[name]
    with open_source(EMAN2_DATA / name) as src:
        assert isinstance(src, ImagicSource if name.endswith((".hed", ".img")) else SpiderSource)
        assert len(src) == count
        for k in range(count):
            assert src.shape(k) == shape
            assert src.header(k).get("apix_x") == apix


def test_imagic_header_keys() -> None:
    """EMAN2's IMAGIC.* keys, per image, from that image's header."""
    with open_source(EMAN2_DATA / "stack.hed") as src:
        first, last = src.header(0), src.header(2)
    assert first["IMAGIC.count"] == 2  # images - 1, in the first header only
    assert last["IMAGIC.imgnum"] == 3
    assert first["IMAGIC.type"] == "REAL"
    assert first["IMAGIC.realtype"] == 33686018
    assert first["orientation_convention"] == "IMAGIC"
    assert all(isinstance(first[k], np.float32) for k in ("IMAGIC.alpha", "euler_beta"))


def test_spider_header_keys() -> None:
    with open_source(EMAN2_DATA / "stack.spi") as src:
        first, last = src.header(0), src.header(2)
    assert "SPIDER.maxim" not in first  # only in the overall header, as EMAN2 reads it
    assert len(src) == 3
    assert last["SPIDER.imgnum"] == 3
    assert first["SPIDER.istack"] == last["SPIDER.istack"]
    assert first["SPIDER.headlen"] == 1024


images_4d = st.tuples(
    st.integers(1, 4), st.integers(1, 3), st.integers(1, 20), st.integers(1, 20)
).flatmap(
    lambda shape: st.builds(
        lambda seed, scale: np.random.default_rng(seed).standard_normal(shape) * scale,
        st.integers(0, 2**32 - 1),
        st.sampled_from([1e-3, 1.0, 3e4]),
    )
)
SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(images=images_4d, order=st.sampled_from("<>"), intg=st.booleans())
def test_imagic_any_stack(tmp_path: Path, images: np.ndarray, order: str, intg: bool) -> None:
    """Any stack of float32 or int16 images, either byte order, reads back exactly, in its
    own dtype, from either file of the pair."""
    data = np.clip(images, -32768, 32767).astype(np.int16 if intg else np.float32)
    hed = tmp_path / "s.hed"
    write_imagic(hed, data, order)
    for name in ("s.hed", "s.img"):
        got = read_all(tmp_path / name)
        assert len(got) == len(data)
        for k, img in enumerate(got):
            assert img.dtype == data.dtype
            np.testing.assert_array_equal(img, data[k])
    assert_blocks_consistent(hed)


@SETTINGS
@given(images=images_4d, order=st.sampled_from("<>"), stack=st.booleans())
def test_spider_any_stack(tmp_path: Path, images: np.ndarray, order: str, stack: bool) -> None:
    data = images.astype(np.float32)
    if not stack:
        data = data[:1]
    path = tmp_path / "s.spi"
    write_spider(path, data, order, stack=stack)
    got = read_all(path)
    assert len(got) == len(data)
    for k, img in enumerate(got):
        np.testing.assert_array_equal(img, data[k])
    assert_blocks_consistent(path)


# --------------------------------------------------------------------------- refused


def _stack(tmp_path: Path, kind: str) -> Path:
    data = np.arange(3 * 2 * 5 * 4, dtype=np.float32).reshape(3, 2, 5, 4)
    if kind == "imagic":
        write_imagic(tmp_path / "s.hed", data)
        return tmp_path / "s.hed"
    write_spider(tmp_path / "s.spi", data)
    return tmp_path / "s.spi"


@pytest.mark.parametrize(
    ("which", "cut"), [("hed", 1), ("hed", 1024), ("img", 4), ("img", 200), ("spi", 4)]
)
def test_truncated_refused(tmp_path: Path, which: str, cut: int) -> None:
    """A file cut short (by ``cut`` bytes) is refused before any image is read."""
    path = _stack(tmp_path, "spider" if which == "spi" else "imagic")
    victim = path.with_suffix("." + which)
    victim.write_bytes(victim.read_bytes()[:-cut])
    with pytest.raises(InputError) as exc:
        open_source(path)
    assert "truncated" in one_line(exc, path)


@pytest.mark.parametrize("which", ["hed", "img", "spi"])
def test_longer_than_header_refused(tmp_path: Path, which: str) -> None:
    path = _stack(tmp_path, "spider" if which == "spi" else "imagic")
    victim = path.with_suffix("." + which)
    victim.write_bytes(victim.read_bytes() + b"\0" * 1024)
    with pytest.raises(InputError) as exc:
        open_source(path)
    assert "longer" in one_line(exc, path)


def test_imagic_half_missing(tmp_path: Path) -> None:
    for gone, named in (("s.img", "s.hed"), ("s.hed", "s.img")):
        path = _stack(tmp_path, "imagic")
        (tmp_path / gone).unlink()
        with pytest.raises(InputError) as exc:
            open_source(tmp_path / named)
        assert f"{gone} is missing" in one_line(exc, tmp_path / named)
        assert path.parent == tmp_path


def _patch(path: Path, offset: int, fmt: str, value: object) -> None:
    blob = bytearray(path.read_bytes())
    struct.pack_into(fmt, blob, offset, value)
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "message"),
    [
        (56, "4s", b"PACK", "unsupported IMAGIC type 'PACK'"),
        (56, "4s", b"COMP", "unsupported IMAGIC type 'COMP'"),
        (12, "<i", 2, "not an IMAGIC-5 header"),  # headrec
        (272, "<i", 0, "not an IMAGIC-5 header"),  # machine stamp
        (4, "<i", -1, "invalid IMAGIC header"),  # count = 0 images
        (1024 + 52, "<i", 7, "IMAGIC image 1 is 7x5x2"),  # image 1's nx
    ],
)
def test_imagic_bad_header(
    tmp_path: Path, offset: int, fmt: str, value: object, message: str
) -> None:
    path = _stack(tmp_path, "imagic")
    _patch(path, offset, fmt, value)
    with pytest.raises(InputError) as exc:
        open_source(path)
    assert message in one_line(exc, path)


@pytest.mark.parametrize(
    ("word", "value", "message"),
    [
        (4, -11.0, "unsupported Fourier-space SPIDER image"),
        (4, 8.0, "unsupported SPIDER image (iform 8)"),
        (23, -1.0, "indexed SPIDER stacks"),
        (21, 1000.0, "not a SPIDER file"),  # labbyt != labrec * lenbyt
        (11, 4.5, "not a SPIDER file"),  # nsam not a whole number
        (25, 0.0, "holds no images"),
    ],
)
def test_spider_bad_header(tmp_path: Path, word: int, value: float, message: str) -> None:
    path = _stack(tmp_path, "spider")
    _patch(path, 4 * word, "<f", value)
    with pytest.raises(InputError) as exc:
        open_source(path)
    assert message in one_line(exc, path)


def test_spider_image_header_disagrees(tmp_path: Path) -> None:
    path = _stack(tmp_path, "spider")
    labbyt = 1024
    second = labbyt + (labbyt + 2 * 5 * 4 * 4)  # image 1's header
    _patch(path, second + 4, "<f", 6.0)  # its nrow
    with pytest.raises(InputError) as exc:
        open_source(path)
    assert "SPIDER image 1 is 4x6x2" in one_line(exc, path)


# --------------------------------------------------------------------------- compressed


def test_imagic_pair_compressed_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``x.hed x.img`` (as ``x.*`` expands) write one ``x.hdf``, compressed once: the
    second name of the pair is skipped as a repeat, not a collision."""
    data = np.stack([formula_image(k, (1, 12, 16)) for k in range(3)])
    write_imagic(tmp_path / "x.hed", data)
    out = tmp_path / "out"
    out.mkdir()
    rc, _, err = run_cli(
        capsys, "--bits", "0", "--outpath", out, tmp_path / "x.hed", tmp_path / "x.img"
    )
    assert rc == 0, err
    assert f"{tmp_path / 'x.img'}: this IMAGIC pair is given more than once" in err
    assert sorted(p.name for p in out.iterdir()) == ["x.hdf"]
    got = read_images(out / "x.hdf")
    assert len(got) == 3
    for k, img in enumerate(got):
        np.testing.assert_array_equal(img.reshape(1, 12, 16), data[k])


@pytest.mark.parametrize("name", ["stack.hed", "stack.spi", "volume_be.spi", "volume.hed"])
def test_compressed_keeps_images_and_apix(tmp_path: Path, name: str) -> None:
    out = tmp_path / "out.hdf"
    compress_file(EMAN2_DATA / name, out, bits=0, threads=1)
    count, shape, apix = EMAN2_FILES[name]
    with h5py.File(out, "r") as f:
        images = f["MDF/images"]
        assert int(np.ravel(images.attrs["imageid_max"])[0]) + 1 == count
        attrs = images["0"].attrs
        if apix is not None:
            assert float(np.ravel(attrs["EMAN.apix_x"])[0]) == apix
    got = read_images(out)
    for k, img in enumerate(got):
        np.testing.assert_array_equal(img.reshape(shape), formula_image(k, shape))


@pytest.mark.parametrize("given_name", ["x.hed", "x.img"])
def test_pair_half_changed_while_encoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given_name: str
) -> None:
    """The half of the pair not named on the command line changes after the first block
    was read: error naming it, nothing written."""
    write_imagic(tmp_path / "x.hed", np.ones((3, 1, 20, 16), np.float32))
    other = tmp_path / ("x.img" if given_name == "x.hed" else "x.hed")
    real_read = ImagicSource.read
    done: list[bool] = []

    def read_then_change(self: ImagicSource, *args: Any) -> np.ndarray:
        data = real_read(self, *args)
        if not done:
            done.append(True)
            fresh = tmp_path / "fresh.tmp"
            fresh.write_bytes(other.read_bytes())
            os.replace(fresh, other)  # as rsync and most writers replace a file
        return data

    monkeypatch.setattr(ImagicSource, "read", read_then_change)
    with pytest.raises(InputError, match="changed while it was being compressed") as err:
        compress_file(tmp_path / given_name, tmp_path / "x.hdf", bits=5, threads=1)
    assert err.value.path == str(other)
    assert done
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.hed", "x.img"]


def test_particle_keys_per_image_or_once(tmp_path: Path) -> None:
    """Keys that differ between particles (here an Euler angle and a shift) stay per image;
    the others are stored once for the stack, and every image's header reads back whole."""
    data = np.stack([formula_image(k, (1, 8, 8)) for k in range(4)])
    hed = tmp_path / "p.hed"
    write_imagic(hed, data)
    raw = bytearray(hed.read_bytes())
    for k in range(4):
        struct.pack_into("<f", raw, 1024 * k + 4 * 64, 10.0 * k)  # alpha
        struct.pack_into("<f", raw, 1024 * k + 4 * 111, 0.5)  # xshift, the same in all
    hed.write_bytes(bytes(raw))
    with open_source(hed) as src:
        shared = src.shared_keys()
    assert "IMAGIC.alpha" not in shared
    assert "euler_alpha" not in shared
    assert {"IMAGIC.xshift", "IMAGIC.type", "apix_x", "IMAGIC.label"} <= shared
    out = tmp_path / "p.hdf"
    compress_file(hed, out, bits=0, threads=1)
    assert_keys_kept(hed, out)


@pytest.mark.parametrize("name", ["stack.hed", "stack.spi", "single.spi", "volume.hed"])
def test_eman2_fileassert_keys_kept(tmp_path: Path, name: str) -> None:
    out = tmp_path / "out.hdf"
    compress_file(EMAN2_DATA / name, out, bits=8, threads=1)
    assert_keys_kept(EMAN2_DATA / name, out)
