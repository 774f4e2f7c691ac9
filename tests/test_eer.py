"""EER movies (Falcon 4/4i): decoding, grouping, header, integrity, and real EMAN2.

No small real EER file is public: the files are written by ``helpers.write_eer`` from
known event frames (the truth), with strips coded by ``helpers.eer_encode`` from the
format's description; imagecodecs' own decoder is checked against the same truth, so the
encoder cannot agree with our reader by sharing a mistake.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import h5py
import imagecodecs
import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

from e2compress import E2CompressError, InputError, compress_file, open_source
from e2compress.options import Options
from e2compress.outputs import output_is_complete
from helpers import eer_encode, eman2_read, eman_decode, one_line, run_cli, write_eer

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None)
CODINGS = {65000: (8, 2, 2), 65001: (7, 2, 2), 65002: (7, 2, 2)}


def _frames(n: int, ny: int, nx: int, density: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((n, ny, nx)) < density).astype(np.uint8)


@st.composite
def movies(draw: st.DrawFn) -> np.ndarray:
    n = draw(st.integers(1, 5))
    ny, nx = draw(st.integers(1, 40)), draw(st.integers(1, 300))
    density = draw(st.sampled_from([0.0, 0.001, 0.02, 0.3, 1.0]))
    return _frames(n, ny, nx, density, draw(st.integers(0, 2**16)))


@SETTINGS
@given(movie=movies(), compression=st.sampled_from(sorted(CODINGS)))
def test_frames_decode_to_the_events(
    tmp_path_factory: pytest.TempPathFactory, movie: np.ndarray, compression: int
) -> None:
    """Each frame is one image, values 0/1 as written, rows not flipped; imagecodecs'
    decoder, given the raw strip, agrees (the encoder is right)."""
    path = write_eer(tmp_path_factory.mktemp("eer") / "m.eer", movie, compression=compression)
    with tifffile.TiffFile(path) as tif:
        for k, page in enumerate(tif.pages):
            with open(path, "rb") as fh:
                fh.seek(page.dataoffsets[0])
                strip = fh.read(page.databytecounts[0])
            padded = strip + b"\0" * 8  # see test_strip_ending_with_an_event
            direct = imagecodecs.eer_decode(padded, movie.shape[1:], *CODINGS[compression])
            np.testing.assert_array_equal(np.asarray(direct, np.uint8), movie[k])
    with open_source(path) as src:
        assert src.kind == "eer"
        assert len(src) == len(movie)
        for k in range(len(movie)):
            assert src.shape(k) == (1, *movie.shape[1:])
            assert src.dtype(k) == np.uint8
            np.testing.assert_array_equal(src.image(k), movie[k])


@SETTINGS
@given(n=st.integers(1, 9), grouping=st.integers(1, 6))
def test_grouping_sums_frames(
    tmp_path_factory: pytest.TempPathFactory, n: int, grouping: int
) -> None:
    """Image k is the sum of frames kN .. kN+N-1; a last partial group keeps the rest."""
    movie = _frames(n, 12, 40, 0.3, seed=n * 10 + grouping)
    path = write_eer(tmp_path_factory.mktemp("eer") / "g.eer", movie)
    with open_source(path, eer_grouping=grouping) as src:
        assert len(src) == math.ceil(n / grouping)
        for k in range(len(src)):
            part = movie[k * grouping : (k + 1) * grouping]
            np.testing.assert_array_equal(src.image(k), part.sum(axis=0))
            head = src.header(k)
            if grouping > 1:
                assert (head["EER.first_frame"], head["EER.frames"]) == (k * grouping, len(part))
            else:
                assert "EER.frames" not in head


def test_grouping_over_255_is_uint16(tmp_path: Path) -> None:
    movie = np.ones((300, 2, 3), np.uint8)
    path = write_eer(tmp_path / "many.eer", movie)
    with open_source(path, eer_grouping=300) as src:
        assert src.dtype(0) == np.uint16
        np.testing.assert_array_equal(src.image(0), np.full((2, 3), 300))


@pytest.mark.parametrize("grouping", [1, 3])
@pytest.mark.parametrize("bits", [5, "auto"])
def test_stored_exactly_with_header(tmp_path: Path, grouping: int, bits: int | str) -> None:
    """Counts are stored exactly; pixel size from sensorPixelSize (m -> A), the metadata
    as EER.* keys, and with grouping which frames each image sums."""
    movie = _frames(7, 50, 70, 0.05, seed=grouping)
    path = write_eer(tmp_path / "movie.eer", movie)
    out = tmp_path / "movie.hdf"
    report = compress_file(path, out, bits=bits, eer_grouping=grouping)
    decoded = eman_decode(out)
    sums = [movie[k : k + grouping].sum(axis=0) for k in range(0, 7, grouping)]
    assert len(decoded) == len(sums)
    for (img, _), want in zip(decoded, sums, strict=True):
        np.testing.assert_array_equal(img.reshape(want.shape), want.astype(np.float32))
    with h5py.File(out, "r") as f:
        group = f["MDF/images"].attrs
        assert bytes(group["EER.number_of_frames"]).decode() == "7"
        assert int(np.ravel(group["EER.compression"])[0]) == 65001
        image = f["MDF/images/0"].attrs
        assert float(np.ravel(image["EMAN.apix_x"])[0]) == pytest.approx(0.82, rel=1e-6)
        if grouping > 1:
            assert int(np.ravel(f["MDF/images/2"].attrs["EMAN.EER.first_frame"])[0]) == 6
            assert int(np.ravel(f["MDF/images/2"].attrs["EMAN.EER.frames"])[0]) == 1
    electrons = [int(s.sum()) for s in sums]
    mean = np.mean(electrons) / (50 * 70)
    (note,) = report.notes
    assert str(path) in note
    assert f"dose per image {mean:.4g} e/px" in note


def test_large_frames_in_blocks_verified(tmp_path: Path) -> None:
    """Frames large enough to be split into blocks across threads (each image decoded
    once, its blocks read from the cache by two workers), then verified against the
    source."""
    movie = _frames(3, 1600, 1700, 0.01, seed=5)
    path = write_eer(tmp_path / "big.eer", movie)
    out = tmp_path / "big.hdf"
    report = compress_file(path, out, bits=5, eer_grouping=2, threads=2, verify=True)
    assert report.verified
    decoded = eman_decode(out)
    for (img, _), want in zip(decoded, [movie[:2].sum(0), movie[2]], strict=True):
        np.testing.assert_array_equal(img.reshape(want.shape), want.astype(np.float32))


def test_dose_note_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    movie = _frames(4, 20, 30, 0.1, seed=9)
    path = write_eer(tmp_path / "d.eer", movie)
    rc, out, _err = run_cli(capsys, "-v", "--bits", "auto", "--eer-grouping", "2", path)
    assert rc == 0
    lines = out.splitlines()
    assert any("--bits auto chose" in line and "EER" not in line for line in lines), out
    assert any(line.startswith(f"{path}: 4 EER frames") for line in lines), out
    doses = [movie[k : k + 2].sum() / 600 for k in (0, 2)]
    assert "4 EER frames summed 2 at a time into 2 images" in out
    assert f"dose per image {np.mean(doses):.4g} e/px" in out
    assert f"min {min(doses):.4g}, max {max(doses):.4g}" in out


def test_grouping_option_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(E2CompressError, match="eer_grouping"):
        Options(eer_grouping=0).validate()
    rc, _out, err = run_cli(capsys, "--eer-grouping", "0", tmp_path / "x.eer")
    assert rc == 2
    assert "--eer-grouping" in err


@pytest.mark.parametrize("bits", [5, -1, 0])
def test_skip_existing_knows_the_grouping(tmp_path: Path, bits: int) -> None:
    """An output made with one grouping is not the output of another (bits -1: auto)."""
    path = write_eer(tmp_path / "s.eer", _frames(4, 8, 8, 0.2))
    out = tmp_path / "s.hdf"
    compress_file(path, out, options=Options(bits=bits, eer_grouping=2))
    assert output_is_complete(path, out, Options(bits=bits, eer_grouping=2))
    assert not output_is_complete(path, out, Options(bits=bits))
    assert not output_is_complete(path, out, Options(bits=bits, eer_grouping=4))


# ------------------------------------------------------------------ bad files


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 0.7, 0.9, 0.99])
def test_truncated_refused(tmp_path: Path, fraction: float) -> None:
    """A movie cut short (still being written) is refused when opened, never read as
    fewer frames."""
    movie = _frames(5, 30, 64, 0.05, seed=2)
    for bigtiff in (True, False):
        path = write_eer(tmp_path / f"cut{bigtiff}.eer", movie, bigtiff=bigtiff)
        blob = path.read_bytes()
        path.write_bytes(blob[: int(fraction * len(blob))])
        with pytest.raises(InputError) as err:
            open_source(path)  # at once, before any frame is decoded
        one_line(err, path)


def test_frame_count_must_match_metadata(tmp_path: Path) -> None:
    path = write_eer(tmp_path / "n.eer", _frames(3, 8, 8, 0.2), metadata={"numberOfFrames": "4"})
    with pytest.raises(InputError, match="3 frames, but its metadata says numberOfFrames=4") as e:
        open_source(path)
    one_line(e, path)


def test_page_that_is_not_an_eer_frame(tmp_path: Path) -> None:
    """An uncompressed page (e.g. an integrated image) or a plain TIFF named .eer."""
    path = tmp_path / "plain.eer"
    tifffile.imwrite(path, np.zeros((2, 8, 8), np.uint16))
    with pytest.raises(InputError, match="page 0 is not an EER frame") as err:
        open_source(path)
    one_line(err, path)


def test_run_past_the_frame_refused(tmp_path: Path) -> None:
    """A strip whose runs go past the last pixel (corrupt) is refused on one line."""
    movie = _frames(2, 8, 8, 0.0)
    path = write_eer(tmp_path / "r.eer", movie)
    with tifffile.TiffFile(path) as tif:
        offset = int(tif.pages[1].dataoffsets[0])
    blob = bytearray(path.read_bytes())
    blob[offset] = 100  # a first run of 100 empty pixels in an 8 x 8 frame
    path.write_bytes(bytes(blob))
    with open_source(path) as src:
        src.image(0)
        with pytest.raises(InputError, match="cannot decode EER frame 1") as err:
            src.image(1)
    one_line(err, path)


def test_cli_one_line_for_a_bad_movie(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_eer(tmp_path / "bad.eer", _frames(3, 16, 16, 0.1))
    path.write_bytes(path.read_bytes()[:-40])
    good = write_eer(tmp_path / "good.eer", _frames(2, 16, 16, 0.1))
    rc, _out, err = run_cli(capsys, "--bits", "5", path, good)
    assert rc == 1
    lines = err.strip().splitlines()
    assert lines
    assert all("bad.eer" in line for line in lines), err
    assert (tmp_path / "good.hdf").is_file()
    assert not (tmp_path / "bad.hdf").exists()


def test_strip_ending_with_an_event(tmp_path: Path) -> None:
    """16 events filling a 1 x 16 frame in 8-bit runs: 16 x 12 bits = 24 bytes, the strip
    ends exactly after the last event's code. imagecodecs alone drops that event (it
    reads a code only when a bit follows); the reader pads the strip and keeps it."""
    movie = np.ones((1, 1, 16), np.uint8)
    strip = eer_encode(movie[0], run_bits=8)
    assert len(strip) == 24
    alone = np.asarray(imagecodecs.eer_decode(strip, (1, 16), 8, 2, 2), np.uint8)
    assert alone.sum() == 15
    path = write_eer(tmp_path / "full.eer", movie, compression=65000)
    with open_source(path) as src:
        np.testing.assert_array_equal(src.image(0), movie[0])


def test_encoder_agrees_with_eman2_layout() -> None:
    """The encoder by hand on a tiny frame: events at pixels 0 and 3 of 1 x 5 with
    sub-pixel codes 5 and 9: runs 0, 2 then the final run 1, 7-bit runs, LSB first."""
    strip = eer_encode(np.array([[1, 0, 0, 1, 0]]), subpix=np.array([5, 9]))
    bits = 0 | 5 << 7 | (2 | 9 << 7) << 11 | 1 << 22
    assert strip == struct.pack("<Q", bits)


# ------------------------------------------------------------------ real EMAN2


def test_eman2_reads_the_same(tmp_path: Path) -> None:
    """EMAN2's EerIO (4K, 7-bit runs) on a 4096 x 4096 movie: the same frames (rows not
    flipped), the same EER.* header keys and pixel size; and EMAN2 reads our output."""
    movie = _frames(3, 4096, 4096, 0.003, seed=11)
    path = write_eer(tmp_path / "k4.eer", movie)
    theirs, headers = eman2_read(path, tmp_path)
    with open_source(path) as src:
        ours = np.stack([src.image(k) for k in range(len(src))])
        ours_head = src.header(0)
    np.testing.assert_array_equal(theirs, ours.astype(np.float32))
    np.testing.assert_array_equal(ours, movie)
    eer_keys = {k: v for k, v in headers[0].items() if k.startswith("EER.")}
    assert eer_keys == {k: v for k, v in ours_head.items() if k.startswith("EER.")}
    assert headers[0]["apix_x"] == pytest.approx(float(ours_head["apix_x"]), rel=1e-7)
    out = tmp_path / "k4.hdf"
    compress_file(path, out, bits=5)
    back, _ = eman2_read(out, tmp_path)
    np.testing.assert_array_equal(back, movie.astype(np.float32))


def test_eman2_differs_as_documented(tmp_path: Path) -> None:
    """Where EMAN2's EerIO is wrong and we are not (docs/counting_inputs.md): it decodes every
    file with 7-bit runs, so an 8-bit-run file (compression 65000) reads as other events,
    and it counts the frames of a one-frame file as none. Needs E2C_EMAN2."""
    movie = _frames(2, 4096, 4096, 0.003, seed=12)
    path = write_eer(tmp_path / "v0.eer", movie, compression=65000)
    theirs, failure = None, ""
    try:  # it reads past the strip: other values, or a crash (seen: SIGSEGV)
        theirs, _ = eman2_read(path, tmp_path)
    except AssertionError as exc:
        failure = str(exc)
    if theirs is None:
        assert "could not read" in failure
    else:
        assert not np.array_equal(theirs, movie.astype(np.float32))
    with open_source(path) as src:
        np.testing.assert_array_equal(np.stack([src.image(0), src.image(1)]), movie)
    one = write_eer(tmp_path / "one.eer", movie[:1])
    with pytest.raises(AssertionError, match="no images"):
        eman2_read(one, tmp_path)
    with open_source(one) as src:
        assert len(src) == 1
