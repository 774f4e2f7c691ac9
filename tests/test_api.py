"""The library API: one way to pass settings to compress_file, keyword-only Options,
``bits="auto"``, one check of ``threads``, the public names and 1 x N images."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import tifffile

import e2compress
from e2compress import E2CompressError, Interrupted, Options, compress_file, read_images
from e2compress.executor import make_pool
from e2compress.options import AUTO_BITS
from helpers import DATA, write_mrc


def test_options_and_keywords_together_is_an_error(tmp_path: Path) -> None:
    """``bits=6`` beside ``options=Options(bits=5)`` used 5 without a word; now it is one
    error naming both parameters, and nothing is written."""
    src = DATA / "EMD-3001.map"
    out = tmp_path / "a.hdf"
    with pytest.raises(E2CompressError) as info:
        compress_file(src, out, bits=6, options=Options(bits=5))
    message = str(info.value)
    assert "options" in message
    assert "bits" in message
    assert "\n" not in message
    with pytest.raises(E2CompressError, match=r"level, apix"):
        compress_file(src, out, level=3, apix=1.5, options=Options())
    assert not out.exists()


def test_keywords_and_options_give_the_same_file(tmp_path: Path) -> None:
    """The per-field keywords are the Options fields of the same names."""
    src = DATA / "EMD-3001.map"
    by_keywords = compress_file(src, tmp_path / "k.hdf", bits=6, level=2, threads=1)
    by_options = compress_file(src, tmp_path / "o.hdf", options=Options(bits=6, level=2), threads=1)
    assert [i.bits for i in by_keywords.images] == [i.bits for i in by_options.images] == [6]
    for a, b in zip(read_images(tmp_path / "k.hdf"), read_images(tmp_path / "o.hdf"), strict=True):
        np.testing.assert_array_equal(a, b)


def test_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        Options(5)  # type: ignore[misc]
    assert dataclasses.replace(Options(bits=5), level=4) == Options(bits=5, level=4)


def test_options_bits_auto() -> None:
    """``Options(bits="auto")`` was refused with "... or auto, not 'auto'"."""
    opts = Options(bits="auto").validate()  # type: ignore[arg-type]
    assert opts.bits == AUTO_BITS
    assert opts.auto
    assert opts == Options(bits=AUTO_BITS)


def test_options_bits_auto_compresses(tmp_path: Path) -> None:
    src = DATA / "EMD-3001.map"
    by_options = compress_file(
        src,
        tmp_path / "o.hdf",
        options=Options(bits="auto"),  # type: ignore[arg-type]
        threads=1,
    )
    by_keyword = compress_file(src, tmp_path / "k.hdf", bits="auto", threads=1)
    assert [i.bits for i in by_options.images] == [i.bits for i in by_keyword.images]
    assert 2 <= by_options.images[0].bits <= 16


@pytest.mark.parametrize("threads", [0, -1, 2.0, True, "4"])
def test_threads_checked_once_with_one_type(tmp_path: Path, threads: object) -> None:
    """make_pool raised ValueError, compress_file E2CompressError for the same mistake."""
    with pytest.raises(E2CompressError, match="threads must be a positive integer"):
        make_pool(threads)  # type: ignore[arg-type]
    with pytest.raises(E2CompressError, match="threads must be a positive integer"):
        compress_file(DATA / "EMD-3001.map", tmp_path / "a.hdf", threads=threads)  # type: ignore[arg-type]
    assert not (tmp_path / "a.hdf").exists()


def test_public_names() -> None:
    assert "Interrupted" in e2compress.__all__
    assert e2compress.Interrupted is Interrupted
    assert issubclass(Interrupted, BaseException)
    for name in e2compress.__all__:
        assert hasattr(e2compress, name), name


@pytest.mark.parametrize("nx", [1, 7])
def test_one_row_images_are_two_dimensional(tmp_path: Path, nx: int) -> None:
    """A 1 x N image is (1, N) from read_images, from the source and from the EMAN2 HDF
    (which stores it as a 1-D dataset), as a 2 x N one is (2, N)."""
    row = np.arange(nx, dtype=np.float32).reshape(1, nx) * np.float32(0.5) - np.float32(1)
    mrc = write_mrc(tmp_path / "row.mrc", row)
    tif = tmp_path / "row.tif"
    tifffile.imwrite(tif, row.astype(np.uint16))
    for src, want in ((mrc, row), (tif, row.astype(np.uint16))):
        out = tmp_path / f"{src.suffix[1:]}.hdf"
        compress_file(src, out, bits=0, threads=1)
        for path in (src, out):
            (got,) = read_images(path)
            assert got.shape == (1, nx), (path, got.shape)
            np.testing.assert_array_equal(got, want)
