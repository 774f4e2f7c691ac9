"""``counts``: gain-normalised float32 movies stored exactly as integer counts plus a gain.

Truth is the movie as made here: integer counts times a float32 gain, multiplied in
float32; every check compares the float32 bits (uint32 views), so -0.0 and NaN cannot
pass for 0.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import h5py
import mrcfile
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import e2compress
from e2compress.audit import check_archive
from e2compress.compare import compare_files
from e2compress.counts import (
    MAX_COUNT,
    UNEXPOSED_GAIN,
    GainEstimator,
    NotCounts,
    from_counts,
    to_counts,
)
from e2compress.errors import InputError, OutputError
from e2compress.export import export_file
from e2compress.options import Options
from e2compress.outputs import output_is_complete
from e2compress.readers import open_source
from e2compress.restore import restore_file
from helpers import REAL_FILES, eman2_read, run_cli

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
        ("minus_zero", "-0.0 is negative"),
        ("nan", "nan is NaN"),
        ("inf", "inf is infinite"),
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


# --------------------------------------------------------------------------- files


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_movie(path: Path, movie: np.ndarray) -> Path:
    """A float32 movie as a big-endian ``.mrcs`` or a multi-page TIFF."""
    if path.suffix == ".mrcs":
        with mrcfile.new(path, overwrite=True) as m:
            m.set_data(movie.astype(">f4"))
            m.voxel_size = 1.06
    else:
        tifffile.imwrite(path, movie)
    return path


def movie_dtype(path: Path) -> np.dtype:
    with open_source(path) as source:
        return source.dtype(0)


def movie_values(path: Path) -> np.ndarray:
    """The movie as EMAN2 sees its file (TIFF rows flipped), float32."""
    with open_source(path) as source:
        return np.stack([np.asarray(source.image(i), dtype=F32) for i in range(len(source))])


def check_counts_archive(src: Path, out: Path, tmp: Path) -> None:
    """``out`` holds ``src``'s movie as counts and a gain, and gives it back exactly."""
    movie = movie_values(src)
    gain = e2compress.read_gain(out)
    assert gain is not None
    assert gain.dtype == F32
    assert gain.shape == movie.shape[1:]
    counts = np.stack(e2compress.read_images(out))
    assert np.array_equal(counts, np.rint(counts))  # whole counts
    assert same_bits(from_counts(counts, gain), movie)
    with h5py.File(out, "r") as f:
        assert f["e2compress/gain"].fletcher32
        assert f["e2compress/gain"].compression == "gzip"
        assert f["e2compress/gain"].attrs["images"] == b"counts"
        assert f.attrs["e2compress.gain"] == b"e2compress/gain"
        assert f["e2compress/gain"].attrs["source_dtype"] == movie_dtype(src).str.encode()
        for i in range(len(counts)):
            ds = f[f"MDF/images/{i}/image"]
            assert ds.dtype == np.uint8
            assert f[f"MDF/images/{i}"].attrs["EMAN.stored_renderbits"] == 8
    restored = restore_file(out, tmp / ("restored" + src.suffix))
    assert restored.byte_identical
    assert sha256(restored.path) == sha256(src)
    exported = tmp / "exported.mrcs"
    report = export_file(out, exported)
    assert report.dtype == "float32"
    with mrcfile.open(exported) as m:
        assert same_bits(np.asarray(m.data, dtype=F32), movie)


@pytest.mark.parametrize("suffix", [".mrcs", ".tif"])
def test_movie_round_trips_bit_for_bit(suffix: str, tmp_path: Path) -> None:
    movie, _, _ = gain_movie(7, (40, 36), 9)
    src = write_movie(tmp_path / f"movie{suffix}", movie)
    out = tmp_path / "movie.hdf"
    report = e2compress.compress_file(src, out, counts=True, verify=True)
    assert report.verified
    assert not report.warnings
    check_counts_archive(src, out, tmp_path)


def test_cli_counts(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    movie, _, _ = gain_movie(8, (32, 30), 6)
    src = write_movie(tmp_path / "movie.mrcs", movie)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    rc, _, err = run_cli(capsys, "--counts", "--outpath", out_dir, src)
    assert rc == 0, err
    check_counts_archive(src, out_dir / "movie.hdf", tmp_path)
    rc, out, _ = run_cli(capsys, "info", out_dir / "movie.hdf")
    assert rc == 0
    assert "images are counts, the movie is count x gain" in out.splitlines()[0]
    assert "restore: byte for byte" in out.splitlines()[0]


def test_counts_takes_no_range_option(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    src = write_movie(tmp_path / "movie.mrcs", gain_movie(8, (8, 8), 2)[0])
    rc, _, err = run_cli(capsys, "--counts", "--nooutliers", src)
    assert rc == 2
    assert "--counts" in err
    assert "--nooutliers" in err
    assert not (tmp_path / "movie.hdf").exists()


def bad_movie(kind: str) -> np.ndarray:
    movie, _, _ = gain_movie(9, (24, 20), 5)
    if kind == "ulp":
        movie[3, 4, 5] = np.nextafter(movie[3].max(), F32(np.inf))
    elif kind == "negative":
        movie[3, 4, 5] = F32(-0.75)
    elif kind == "past_65535":
        movie[3, 4, 5] = F32(70000) * movie[3:].max()
    return movie


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("ulp", "is not a whole count"),
        ("negative", "negative"),
        ("past_65535", "more than 65535"),
        ("float64", "float64, not float32"),
    ],
)
def test_a_movie_that_does_not_fit_is_refused(
    kind: str, words: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """One line naming the file and the problem, exit 1, no output, the input intact."""
    if kind == "float64":
        src = tmp_path / "movie.tif"
        tifffile.imwrite(src, gain_movie(9, (24, 20), 5)[0].astype(np.float64))
    else:
        src = write_movie(tmp_path / "movie.mrcs", bad_movie(kind))
    before = sha256(src)
    rc, _out, err = run_cli(capsys, "--counts", src)
    assert rc == 1
    lines = [line for line in err.splitlines() if str(src) in line]
    assert len(lines) == 1, err
    assert words in lines[0]
    if kind != "float64":
        assert "(y=4, x=5)" in lines[0]
    assert sha256(src) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


def test_a_counts_archive_is_not_compressed_again(tmp_path: Path) -> None:
    """Its images are counts: a file made from them would lose the gain."""
    src = write_movie(tmp_path / "movie.mrcs", gain_movie(10, (16, 16), 4)[0])
    out = tmp_path / "movie.hdf"
    e2compress.compress_file(src, out, counts=True)
    before = sha256(out)
    for counts in (False, True):
        with pytest.raises(InputError, match="lose the gain"):
            e2compress.compress_file(out, tmp_path / "again.hdf", counts=counts)
        with pytest.raises(InputError, match="lose the gain"):
            e2compress.compress_file(out, bits=5, counts=counts)  # in place
    assert sha256(out) == before
    assert not (tmp_path / "again.hdf").exists()


def test_real_eman2_reads_the_counts(tmp_path: Path) -> None:
    movie, _, _ = gain_movie(11, (30, 28), 5, dose=150.0 / 5)
    movie[:, 0, 0] = np.array([1, 0, 300, 2, 0], dtype=F32) * F32(0.8125)  # uint16 counts
    movie[:, 0, 1] = np.array([1, 0, 3, 2, 0], dtype=F32) * F32(1.25)
    src = write_movie(tmp_path / "movie.mrcs", movie)
    out = tmp_path / "movie.hdf"
    try:
        e2compress.compress_file(src, out, counts=True)
    except InputError:  # dose 30: some pixel's gain cannot be found; use a counting dose
        movie, _, _ = gain_movie(11, (30, 28), 5)
        movie[:, 0, 0] = np.array([1, 0, 300, 2, 0], dtype=F32) * F32(0.8125)
        src = write_movie(tmp_path / "movie.mrcs", movie)
        e2compress.compress_file(src, out, counts=True)
    ours = np.stack(e2compress.read_images(out))
    theirs, _ = eman2_read(out, tmp_path)
    assert np.array_equal(theirs, ours)
    assert theirs.max() >= 300
    assert same_bits(from_counts(theirs, e2compress.read_gain(out)), movie)


@pytest.mark.shared
@pytest.mark.parametrize("path", [p for p in REAL_FILES if p.suffix != ".bz2"], ids=str)
def test_real_files_are_refused_or_exact(
    path: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """No file in ../shared/data/real is a gain-normalised movie (MANIFEST.md): each is
    refused with one line, or (a float32 image of non-negative values is its own gain
    times counts of 1) stored and given back bit for bit. Never anything else."""
    out = tmp_path / "out.hdf"
    refused = ""
    try:
        e2compress.compress_file(path, out, counts=True)
    except InputError as exc:
        refused = str(exc)
    if refused:
        assert "\n" not in refused
        assert "counts" in refused
        assert not out.exists()
        return
    movie = movie_values(path)
    counts = np.stack(e2compress.read_images(out))
    assert same_bits(from_counts(counts, e2compress.read_gain(out)), movie)
    if path.name.lower().endswith((".mrc", ".mrcs", ".map", ".ccp4", ".tif", ".tiff")):
        assert restore_file(out, tmp_path / path.name).byte_identical


def test_check_and_compare_see_the_movie(tmp_path: Path) -> None:
    """``check --originals`` checks the original against the stored counts and gain;
    ``compare`` compares movie with movie. One ulp off in a copy of the original is
    found."""
    movie, _, _ = gain_movie(12, (20, 18), 4)
    src = write_movie(tmp_path / "movie.mrcs", movie)
    out = tmp_path / "movie.hdf"
    e2compress.compress_file(src, out, counts=True)
    result = check_archive(out, src)
    assert result.ok, result.problems
    assert result.restores_exactly
    compared = compare_files(src, out)
    assert compared.overall.errors.max_abs == 0.0
    other = tmp_path / "other" / "movie.mrcs"
    other.parent.mkdir()
    movie[2, 3, 4] = np.nextafter(movie[2, 3, 4], F32(np.inf))
    write_movie(other, movie)
    result = check_archive(out, other)
    assert not result.ok
    assert "(y=3, x=4)" in result.problems[0]
    assert compare_files(other, out).overall.errors.max_abs > 0


def test_write_images_with_counts(tmp_path: Path) -> None:
    movie, _, _ = gain_movie(13, (16, 12), 5)
    out = tmp_path / "frames.hdf"
    e2compress.write_images(out, list(movie), options=Options(counts=True), verify=True)
    gain = e2compress.read_gain(out)
    assert same_bits(from_counts(np.stack(e2compress.read_images(out)), gain), movie)


def test_an_existing_counts_output_is_skipped_only_when_it_has_counts(tmp_path: Path) -> None:
    src = write_movie(tmp_path / "movie.mrcs", gain_movie(14, (16, 16), 4)[0])
    out = tmp_path / "movie.hdf"
    counts = Options(counts=True)
    e2compress.compress_file(src, out, options=counts)
    assert output_is_complete(src, out, counts)
    assert not output_is_complete(src, out, Options(bits=8))
    e2compress.compress_file(src, out, bits=8)
    assert not output_is_complete(src, out, counts)


def test_a_movie_of_single_counts_restores_byte_for_byte(tmp_path: Path) -> None:
    """Images holding only 0 and 1 count are stored on EMAN2's unit-range mapping (codes
    0 and 255), which decodes exactly: restore still gives the file back."""
    movie, counts, _ = gain_movie(15, (16, 16), 4, dose=0.2)
    movie[counts > 1] = 0
    src = write_movie(tmp_path / "movie.mrcs", movie)
    out = tmp_path / "movie.hdf"
    report = e2compress.compress_file(src, out, counts=True)
    assert {im.rule for im in report.images} == {"unit_range"}
    restored = restore_file(out, tmp_path / "restored.mrcs")
    assert restored.byte_identical
    assert same_bits(movie_values(restored.path), movie)


def test_the_output_is_checked_before_the_gain_pass(tmp_path: Path) -> None:
    """An output that must not be replaced is refused before the movie is read."""
    src = write_movie(tmp_path / "movie.mrcs", bad_movie("negative"))
    out = tmp_path / "movie.hdf"
    with h5py.File(out, "w") as f:
        f["someone_else"] = np.arange(3)
    with pytest.raises(OutputError, match="no EMAN2 images"):
        e2compress.compress_file(src, out, counts=True)
