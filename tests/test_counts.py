"""``counts``: gain-normalised float32 movies stored exactly as integer counts plus a gain.

Truth is the movie as made here: integer counts times a float32 gain, multiplied in
float32; every check compares the float32 bits (uint32 views), so -0.0 and NaN cannot
pass for 0.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e2compress.counts import (
    MAX_COUNT,
    UNEXPOSED_GAIN,
    GainEstimator,
    NotCounts,
    from_counts,
    to_counts,
)

F32 = np.float32
U32 = np.uint32


def gain_movie(
    seed: int,
    shape: tuple[int, int] = (48, 40),
    frames: int = 8,
    dose: float = 1.0,
    spread: float = 0.1,
    dead: int = 5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(movie float32 (frames, ny, nx), counts, gain): ``float32(count) * gain``, with
    ``dead`` pixels that are 0 in every frame."""
    rng = np.random.default_rng(seed)
    gain = (1.0 + spread * rng.standard_normal(shape)).clip(0.2, None).astype(F32)
    counts = rng.poisson(dose, (frames, *shape)).astype(np.uint16)
    flat = counts.reshape(frames, -1)
    flat[:, rng.choice(flat.shape[1], dead, replace=False)] = 0
    return counts.astype(F32) * gain, counts, gain


def estimate(movie: np.ndarray) -> tuple[np.ndarray, np.dtype]:
    est = GainEstimator(movie.shape[1:])
    for i, frame in enumerate(movie):
        est.add(frame, f"frame {i}")
    found = est.result()
    return found.image, found.dtype()


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype == F32 and bool(np.array_equal(a.view(U32), b.view(U32)))


def roundtrip(movie: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(counts, gain) found from ``movie``, checked to give it back bit for bit."""
    gain, dtype = estimate(movie)
    counts = np.stack([to_counts(f, gain, dtype, f"frame {i}") for i, f in enumerate(movie)])
    assert same_bits(from_counts(counts, gain), movie)
    return counts, gain


def test_counts_and_gain_come_back_exactly() -> None:
    movie, counts, gain = gain_movie(1)
    got, found = roundtrip(movie)
    assert got.dtype == np.uint8
    seen = counts.max(axis=0) > 0
    # a pixel that saw a single count has its true gain, hence its true counts
    single = (counts == 1).any(axis=0)
    assert np.array_equal(found[single], gain[single])
    assert np.array_equal(got[:, single], counts[:, single])
    assert np.all(found[~seen] == F32(UNEXPOSED_GAIN))


def test_a_pixel_that_never_saw_one_count_finds_its_gain() -> None:
    """Smallest value 2 or 3 gains, and counts that are not multiples of it (2 and 3;
    3 and 4; 3 and 5): the gain is found from the smallest values."""
    gain = np.array([[0.7391, 1.2345, 0.9137, 1.777]], dtype=F32)
    counts = np.array(
        [[[2, 3, 3, 0]], [[3, 4, 5, 6]], [[0, 0, 0, 9]], [[2, 3, 3, 0]]], dtype=np.uint16
    )
    movie = counts.astype(F32) * gain
    got, found = roundtrip(movie)
    assert np.array_equal(found[0, :3], gain[0, :3])
    assert np.array_equal(got[:, 0, :3], counts[:, 0, :3])


def test_counts_past_255_are_uint16() -> None:
    movie, counts, gain = gain_movie(2)
    counts[3, 4, 5], counts[4, 4, 5] = 300, 1
    movie = counts.astype(F32) * gain
    got, _ = roundtrip(movie)
    assert got.dtype == np.uint16
    assert np.array_equal(got[:, 4, 5], counts[:, 4, 5])


def test_a_high_dose_movie_whose_gain_cannot_be_found_is_refused_not_guessed() -> None:
    """About 200 counts a pixel a frame: no pixel ever shows one count, and its few
    smallest values say too little to find its gain; never a wrong movie."""
    movie, _, _ = gain_movie(2, dose=200.0, frames=3)
    with pytest.raises(NotCounts, match="is not a whole count"):
        roundtrip(movie)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ("ulp", "is not a whole count"),
        ("negative", "negative"),
        ("minus_zero", "-0.0"),
        ("nan", "NaN"),
        ("inf", "infinite"),
    ],
)
def test_a_pixel_that_does_not_fit_is_refused_where_it_is(change: str, words: str) -> None:
    movie, _, _ = gain_movie(3)
    frame, y, x = 5, 7, 11
    v = movie[frame, y, x]
    if change == "ulp":  # one pixel one ulp off, in a frame where it holds counts
        movie[frame, y, x] = np.nextafter(max(v, F32(1)), F32(np.inf))
    else:
        movie[frame, y, x] = {"negative": -v - 1, "minus_zero": -0.0, "nan": np.nan}.get(
            change, np.inf
        )
    with pytest.raises(NotCounts, match=words) as info:
        roundtrip(movie)
    assert f"frame {frame}" in str(info.value)
    assert f"(y={y}, x={x})" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_count_past_65535_is_refused() -> None:
    movie = np.zeros((2, 4, 4), dtype=F32)
    movie[0] = F32(0.5)
    movie[1, 2, 3] = F32(MAX_COUNT + 1) * F32(0.5)
    est = GainEstimator((4, 4))
    for i, frame in enumerate(movie):
        est.add(frame, f"frame {i}")
    with pytest.raises(NotCounts, match=r"\(y=2, x=3\): 65536 counts"):
        est.result().dtype()


def test_a_float64_frame_is_refused() -> None:
    with pytest.raises(NotCounts, match="not a float32"):
        GainEstimator((2, 2)).add(np.zeros((2, 2)), "frame 0")
    with pytest.raises(NotCounts, match="float64, not float32"):
        to_counts(np.zeros((2, 2)), np.ones((2, 2), F32), np.dtype(np.uint8), "frame 0")


def test_counts_stored_in_uint8_must_fit_it() -> None:
    """A count of 256 checked as uint8 wraps, and the recomputed product says so."""
    gain = np.full((1, 2), 0.75, dtype=F32)
    values = np.array([[1, 256]], dtype=F32) * gain
    with pytest.raises(NotCounts, match=r"\(y=0, x=1\).*255 at most"):
        to_counts(values, gain, np.dtype(np.uint8), "frame 0")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    ny=st.integers(1, 24),
    nx=st.integers(1, 24),
    frames=st.integers(1, 12),
    dose=st.sampled_from([0.05, 0.3, 1.0]),
    scale=st.sampled_from([1e-3, 0.1, 1.0, 7.5, 300.0]),
    spread=st.sampled_from([0.0, 0.05, 0.3]),
)
def test_any_gain_normalised_movie_round_trips(
    seed: int, ny: int, nx: int, frames: int, dose: float, scale: float, spread: float
) -> None:
    """The rule: whatever the gains and shape, a counting movie (about 1 count a pixel a
    frame or less) made of counts times a float32 gain is accepted and given back bit
    for bit."""
    movie, counts, gain = gain_movie(seed, (ny, nx), frames, dose, spread, dead=0)
    movie = counts.astype(F32) * (gain * F32(scale))
    got, _ = roundtrip(movie)
    assert got.dtype == np.uint8


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), dose=st.sampled_from([3.0, 10.0, 60.0, 500.0]))
def test_accepted_means_exact(seed: int, dose: float) -> None:
    """At doses where a gain may not be found, a movie is refused or comes back bit
    for bit: never anything else."""
    movie, _, _ = gain_movie(seed, (12, 10), 6, dose, 0.2, dead=0)
    with contextlib.suppress(NotCounts):
        roundtrip(movie)  # checks the bits when accepted
