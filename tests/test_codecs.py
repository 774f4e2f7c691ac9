"""The chunk coders: standard zlib streams, the engine choice, and HDF5's shuffle."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from e2compress import codecs


def test_fast_engines_are_installed() -> None:
    # The package depends on all three; a missing one silently costs speed.
    names = [e.name for e in codecs.candidates(1)]
    assert names == ["huffman", "zlib-ng-rle", "isal-1"]
    assert codecs.lz_engine(9).name == "libdeflate-12"
    assert codecs.lz_engine(0).name == "zlib-0"


@pytest.mark.parametrize("level", range(10))
def test_every_engine_writes_standard_zlib_streams(level: int) -> None:
    rng = np.random.default_rng(level)
    data = rng.integers(0, 32, 100_000, dtype=np.uint8).tobytes()
    for engine in codecs.candidates(level):
        stream = engine.compress(data)
        assert zlib.decompress(stream) == data, engine.name
        assert codecs.inflate(stream, len(data)) == data, engine.name


def test_level_zero_stores() -> None:
    data = bytes(range(256)) * 100
    stream = codecs.lz_engine(0).compress(data)
    assert len(stream) > len(data)  # stored blocks: no compression at all
    assert zlib.decompress(stream) == data


def test_choice_follows_the_data() -> None:
    rng = np.random.default_rng(0)
    noise = rng.poisson(1.0, 200_000).astype(np.uint8).tobytes()  # no repeats to exploit
    engine, stream = codecs.choose(codecs.candidates(1), noise)
    assert engine.name == "huffman"
    assert zlib.decompress(stream) == noise
    pattern = bytes(rng.integers(0, 256, 1000, dtype=np.uint8)) * 200  # long repeats
    engine, stream = codecs.choose(codecs.candidates(6), pattern, 0.02)
    assert engine.name == "libdeflate-6"
    assert zlib.decompress(stream) == pattern
    # Huffman-only cannot go below ~1 bit per byte; repeats compress far better
    assert len(stream) < len(pattern) / 50


def test_lz_must_win_by_the_margin() -> None:
    rng = np.random.default_rng(1)
    noise = rng.poisson(1.0, 100_000).astype(np.uint8).tobytes()
    sizes = {e.name: len(e.compress(noise)) for e in codecs.candidates(9)}
    best_literal = min(sizes["huffman"], sizes["zlib-ng-rle"])
    engine, _ = codecs.choose(codecs.candidates(9), noise, 0.02)
    if sizes["libdeflate-12"] < best_literal * 0.98:
        assert engine.name == "libdeflate-12"
    else:
        assert engine.name in ("huffman", "zlib-ng-rle")


@pytest.mark.parametrize("dtype", ["u1", "<u2", "<f4"])
def test_shuffle_matches_hdf5_byte_planes(dtype: str) -> None:
    rng = np.random.default_rng(2)
    values = rng.integers(0, 60000, 1234).astype(dtype)
    size = values.dtype.itemsize
    planes = values.view(np.uint8).reshape(-1, size)
    expected = np.concatenate([planes[:, k] for k in range(size)])
    shuffled = codecs.shuffle(values)
    assert np.array_equal(shuffled, expected)
    back = codecs.unshuffle(shuffled.tobytes(), values.dtype)
    assert np.array_equal(back.view(np.uint8), values.view(np.uint8))


def test_unshuffle_keeps_nan_payloads() -> None:
    values = np.array([np.nan, -np.inf, np.inf, -0.0, 1.5], dtype="<f4")
    back = codecs.unshuffle(codecs.shuffle(values).tobytes(), values.dtype)
    assert back.tobytes() == values.tobytes()
