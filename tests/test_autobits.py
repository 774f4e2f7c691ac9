"""``--bits auto`` and the quality warning, end to end: what was chosen, what it keeps."""

from __future__ import annotations

import math
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

import e2compress
from e2compress.compare import compare_files
from e2compress.errors import E2CompressError
from e2compress.options import AUTO_BITS, Options
from e2compress.report import ImageReport, quality_warning
from helpers import (
    REAL,
    assert_within_half_step,
    eman2_home,
    eman2_read,
    eman_decode,
    run_cli,
    write_mrc,
)

RNG = np.random.default_rng(4242)


def _noisy(shape: tuple[int, ...], sigma: float, span: float, seed: int = 0) -> np.ndarray:
    """A smooth ramp over ``span`` plus white noise ``sigma`` (float32, all positive)."""
    rng = np.random.default_rng(seed)
    ny, nx = shape[-2:]
    ramp = 1000.0 + span * (np.arange(nx) / nx)[None, :] * np.ones((ny, 1))
    return (ramp + rng.normal(0, sigma, shape)).astype(np.float32)


def _fewest_bits(lo: float, hi: float, sigma: float, fraction: float) -> int:
    """Independent: a [lo, hi] range in 2**b - 1 steps; step / sqrt(12) <= F sigma."""
    return math.ceil(math.log2((hi - lo) / (fraction * sigma * math.sqrt(12)) + 1))


@pytest.mark.parametrize(("sigma", "fraction"), [(2.0, 0.1), (0.5, 0.1), (2.0, 0.02)])
def test_auto_bits_follow_the_noise_rule(sigma: float, fraction: float, tmp_path: Path) -> None:
    img = _noisy((256, 256), sigma, 60.0)
    src = write_mrc(tmp_path / "a.mrc", img)
    report = e2compress.compress_file(src, tmp_path / "a.hdf", bits="auto", noise_fraction=fraction)
    (im,) = report.images
    assert im.auto
    assert im.noise == pytest.approx(sigma, rel=0.04)
    assert im.noise is not None
    expected = _fewest_bits(float(img.min()), float(img.max()), im.noise, fraction)
    assert im.bits == expected
    assert im.noise_ratio is not None
    assert im.noise_ratio <= fraction
    assert report.warnings == []
    ((_, mapping),) = eman_decode(tmp_path / "a.hdf")
    assert mapping is not None
    assert mapping[0] == expected
    # measured on the written file: the quantisation noise really is within F x sigma
    cmp = compare_files(src, tmp_path / "a.hdf").images[0]
    assert cmp.errors.inside_rms <= fraction * sigma * 1.05
    assert cmp.errors.inside_rms == pytest.approx(im.quant_noise, rel=0.05)


def test_fewer_bits_for_noisier_images_of_a_stack(tmp_path: Path) -> None:
    stack = np.stack([_noisy((64, 64), s, 100.0, seed=k) for k, s in enumerate((0.05, 2.0, 20.0))])
    src = write_mrc(tmp_path / "s.mrcs", stack)
    report = e2compress.compress_file(src, tmp_path / "s.hdf", bits="auto")
    bits = [im.bits for im in report.images]
    assert bits[0] > 8 >= bits[1] > bits[2]  # per image: uint16 storage for the first only
    with h5py.File(tmp_path / "s.hdf") as f:
        for k, b in enumerate(bits):
            ds = f[f"MDF/images/{k}/image"]
            assert int(f[f"MDF/images/{k}"].attrs["EMAN.stored_renderbits"][0]) == b
            assert ds.dtype == (np.uint16 if b > 8 else np.uint8)
            assert ds.shuffle == (b > 8)
            # a stack stores no EMAN.datatype: EMAN2 takes the type from the dataset
            assert "EMAN.datatype" not in f[f"MDF/images/{k}"].attrs
    for k, (decoded, mapping) in enumerate(eman_decode(tmp_path / "s.hdf")):
        assert mapping is not None
        assert mapping[0] == bits[k]
        assert assert_within_half_step(stack[k], decoded, mapping) == 0


def test_counting_data_are_stored_exactly(tmp_path: Path) -> None:
    counts = RNG.poisson(1.2, (128, 128)).astype(np.uint16)
    src = write_mrc(tmp_path / "c.mrc", counts)
    report = e2compress.compress_file(src, tmp_path / "c.hdf", bits="auto")
    (im,) = report.images
    assert im.noise_method == "poisson"
    assert im.noise == pytest.approx(math.sqrt(counts.mean()))
    assert im.bits == int(counts.max()).bit_length()
    assert im.quant_noise == 0.0
    np.testing.assert_array_equal(e2compress.read_images(tmp_path / "c.hdf")[0], counts)


def test_counts_with_a_gain_use_the_noise_rule_not_exactness(tmp_path: Path) -> None:
    counts = (100 * RNG.poisson(30.0, (256, 256))).astype(np.uint16)  # gain 100 (EPU-like)
    src = write_mrc(tmp_path / "g.mrc", counts)
    (im,) = e2compress.compress_file(src, tmp_path / "g.hdf", bits="auto").images
    assert im.noise_method == "differences"
    assert im.noise == pytest.approx(100 * math.sqrt(30.0), rel=0.05)
    exact = (int(counts.max()) - int(counts.min())).bit_length()
    assert im.bits < exact - 1
    assert im.noise_ratio is not None
    assert 0 < im.noise_ratio <= 0.1


def test_noiseless_float_data_are_kept_lossless(tmp_path: Path) -> None:
    ramp = np.add.outer(np.arange(40.0), 0.37 * np.arange(50.0)).astype(np.float32)
    src = write_mrc(tmp_path / "r.mrc", ramp)
    report = e2compress.compress_file(src, tmp_path / "r.hdf", bits="auto")
    assert report.images[0].bits == 0
    assert e2compress.read_images(tmp_path / "r.hdf")[0].tobytes() == ramp.tobytes()
    with h5py.File(tmp_path / "r.hdf") as f:
        assert f["MDF/images/0/image"].dtype == np.float32


def test_bad_auto_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_mrc(tmp_path / "a.mrc", _noisy((32, 32), 1.0, 10.0))
    for bad in ("0", "-1", "nan", "x", "11"):
        rc, _, err = run_cli(capsys, "--bits", "auto", "--noise-fraction", bad, src)
        assert rc == 2
        assert "--noise-fraction" in err
    rc, _, err = run_cli(capsys, "--bits", "automatic", src)
    assert rc == 2
    assert "expected 0, an integer 2..16 or auto" in err
    with pytest.raises(E2CompressError, match="bits must be 0"):
        e2compress.compress_file(src, bits="most")
    with pytest.raises(E2CompressError, match="noise_fraction must be"):
        Options(bits=AUTO_BITS, noise_fraction=0.0).validate()
    assert not (tmp_path / "a.hdf").exists()


def test_verbose_reports_the_chosen_bits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_mrc(tmp_path / "a.mrc", _noisy((128, 128), 2.0, 60.0))
    rc, out, err = run_cli(capsys, "--bits", "auto", "-v", src)
    assert (rc, err) == (0, "")
    with e2compress.open(tmp_path / "a.hdf") as f:
        bits = int(f.header(0)["stored_renderbits"])
    assert f"{src}: --bits auto chose {bits} (image noise " in out


# --------------------------------------------------------------------------- warning


def test_warning_names_file_bits_figure_and_the_bits_that_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = _noisy((256, 256), 2.0, 60.0)
    src = write_mrc(tmp_path / "a.mrc", img)
    rc, out, err = run_cli(capsys, "--bits", "3", src)
    assert (rc, out) == (0, "")
    (line,) = err.splitlines()
    m = re.fullmatch(
        rf"WARNING: {re.escape(str(src))}: bits 3 add quantisation noise (\S+) = (\S+) x the "
        r"image noise (\S+), over the limit 0\.1; bits (\d+) would pass",
        line,
    )
    assert m is not None, line
    ((_, mapping),) = eman_decode(tmp_path / "a.hdf")
    assert mapping is not None
    step = (mapping[2] - mapping[1]) / 7
    assert float(m[1]) == pytest.approx(step / math.sqrt(12), rel=1e-2)
    assert float(m[3]) == pytest.approx(2.0, rel=0.04)
    assert float(m[2]) == pytest.approx(float(m[1]) / float(m[3]), rel=2e-2)
    auto = e2compress.compress_file(src, tmp_path / "b.hdf", bits="auto")
    assert int(m[4]) == auto.images[0].bits
    # the suggested bits pass: no warning
    rc, out, err = run_cli(capsys, "--bits", m[4], src)
    assert (rc, out, err) == (0, "", "")
    # and a looser fraction accepts 3 bits
    rc, out, err = run_cli(capsys, "--bits", "3", "--noise-fraction", "2", src)
    assert (rc, out, err) == (0, "", "")


def test_warning_for_a_stack_names_the_worst_image(tmp_path: Path) -> None:
    stack = np.stack([_noisy((64, 64), s, 50.0, seed=k) for k, s in enumerate((40.0, 0.2, 1.0))])
    src = write_mrc(tmp_path / "s.mrcs", stack)
    report = e2compress.compress_file(src, tmp_path / "s.hdf", bits=5)
    (warning,) = report.warnings
    assert warning.startswith(f"{src}: image 1 (2 of 3 fail): bits 5 add quantisation noise ")
    need = max(im.passing_bits or 0 for im in report.images)
    assert warning.endswith(f"; bits {need} would pass")
    again = e2compress.compress_file(src, tmp_path / "s.hdf", bits=need)
    assert again.warnings == []


def test_no_warning_without_quantisation_or_measurable_noise(tmp_path: Path) -> None:
    src = write_mrc(tmp_path / "a.mrc", _noisy((64, 64), 1.0, 50.0))
    assert e2compress.compress_file(src, tmp_path / "a.hdf", bits=0).warnings == []
    plane = np.add.outer(np.arange(32.0), np.arange(32.0)).astype(np.float32)
    flat = write_mrc(tmp_path / "f.mrc", plane)
    report = e2compress.compress_file(flat, tmp_path / "f.hdf", bits=4)
    assert report.images[0].noise is None  # a plane: no noise to compare with
    assert report.warnings == []


def test_skip_existing_with_auto_in_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_mrc(tmp_path / "a.mrc", _noisy((64, 64), 1.0, 50.0))
    e2compress.compress_file(src, tmp_path / "a.hdf", bits=0)
    rc, out, _ = run_cli(capsys, "--bits", "auto", "--skip-existing", "-v", tmp_path / "a.hdf")
    assert rc == 0
    assert "Skipping" not in out  # float32 storage: not yet compressed
    rc, out, _ = run_cli(capsys, "--bits", "auto", "--skip-existing", "-v", tmp_path / "a.hdf")
    assert "Skipping" in out


@pytest.mark.shared
def test_the_warning_for_fei_extended_at_5_bits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = REAL / "fei-extended.mrc"
    rc, _, err = run_cli(capsys, "--bits", "5", "--outpath", tmp_path, src)
    assert rc == 0
    assert err == (
        f"WARNING: {src}: bits 5 add quantisation noise 591 = 0.99 x the image noise 598, "
        "over the limit 0.1; bits 9 would pass\n"
    )
    rc, _, err = run_cli(capsys, "--bits", "9", "--outpath", tmp_path, src)
    assert (rc, err) == (0, "")


def test_eman2_reads_a_stack_with_bits_chosen_per_image(tmp_path: Path) -> None:
    """Real EMAN2 decodes images of one file stored at different bits (uint8 and uint16);
    the same file is checked everywhere with plain h5py in
    test_fewer_bits_for_noisier_images_of_a_stack."""
    eman2_home()
    stack = np.stack([_noisy((64, 64), s, 100.0, seed=k) for k, s in enumerate((0.05, 2.0, 20.0))])
    src = write_mrc(tmp_path / "s.mrcs", stack)
    out = tmp_path / "s.hdf"
    report = e2compress.compress_file(src, out, bits="auto")
    assert len({im.bits for im in report.images}) == 3
    theirs, headers = eman2_read(out, tmp_path)
    ours = e2compress.read_images(out)
    for k, mine in enumerate(ours):
        assert int(headers[k]["stored_renderbits"]) == report.images[k].bits
        scale = max(abs(float(mine.min())), abs(float(mine.max())))
        eman = theirs.reshape(len(ours), *mine.shape)[k]
        assert float(np.max(np.abs(mine.astype(np.float64) - eman))) <= 2e-6 * scale


def test_a_long_stack_is_sampled_for_the_warning_and_auto_measures_every_image(
    tmp_path: Path,
) -> None:
    """With fixed bits, a stack of more than 256 images has its noise measured on every
    k-th image (k = n // 256) and the warning says so; --bits auto measures them all."""
    from e2compress.encode import NOISE_SAMPLED_IMAGES

    n = 2 * NOISE_SAMPLED_IMAGES + 10
    stack = np.stack([_noisy((16, 16), 0.2, 50.0, seed=k) for k in range(n)])
    src = write_mrc(tmp_path / "s.mrcs", stack)
    report = e2compress.compress_file(src, tmp_path / "s.hdf", bits=4)
    measured = [im.index for im in report.images if im.noise is not None]
    assert measured == list(range(0, n, 2))
    (warning,) = report.warnings
    assert f"of {len(measured)} sampled fail)" in warning
    auto = e2compress.compress_file(src, tmp_path / "a.hdf", bits="auto")  # type: ignore[arg-type]
    assert all(im.noise is not None for im in auto.images)


@pytest.mark.parametrize(
    ("ratio", "shown"), [(0.1004, "0.1004"), (0.10000004, "0.10000004"), (0.35, "0.35")]
)
def test_the_warning_figure_never_reads_as_a_pass(ratio: float, shown: str) -> None:
    """Just over the limit 0.1, the figure shows the digits that put it over (it used to
    say "0.10 x the image noise (limit 0.1)")."""
    im = ImageReport(0, (8, 8), 5, 0.0, 1.0, 0, "minmax", noise=1.0, quant_noise=ratio)
    im.noise_ratio, im.passing_bits, im.noise_method = ratio, 6, "differences"
    line = quality_warning("a.mrc", [im], 0.1)
    assert line is not None
    assert f" = {shown} x the image noise 1, over the limit 0.1; bits 6 would pass" in line
    assert float(shown) > 0.1
