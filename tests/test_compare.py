"""``e2compress compare``: every printed figure against an independent computation."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

import e2compress
from e2compress.compare import ImagesDiffer, compare_files, format_comparison, plot_title
from helpers import DATA, REAL, eman_decode, run_cli, write_mrc

RNG = np.random.default_rng(99)


def _micrograph(shape: tuple[int, ...], sigma: float = 2.0, seed: int = 1) -> np.ndarray:
    """Smooth structure (20 sigma) plus white noise of known sigma."""
    rng = np.random.default_rng(seed)
    ny, nx = shape[-2:]
    y, x = np.mgrid[0:ny, 0:nx]
    base = 40 * sigma * np.exp(-((y - ny / 2) ** 2 + (x - nx / 3) ** 2) / (2 * (nx / 6) ** 2))
    base = base + 5 * sigma * x / nx
    return (100.0 + base + rng.normal(0, sigma, shape)).astype(np.float32)


def _frc_direct(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    fa, fb = np.fft.fft2(a.astype(np.float64)), np.fft.fft2(b.astype(np.float64))
    fy, fx = np.fft.fftfreq(a.shape[0]), np.fft.fftfreq(a.shape[1])
    # rings by rounding; the same float expression as the library, so ties fall alike
    ring = np.rint(np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2) * min(a.shape)).astype(int)
    out = []
    for k in range(min(a.shape) // 2 + 1):
        m = ring == k
        num = np.sum(fa[m] * np.conj(fb[m])).real
        out.append(num / np.sqrt(np.sum(np.abs(fa[m]) ** 2) * np.sum(np.abs(fb[m]) ** 2)))
    return np.array(out)


def test_known_error_between_two_mrc_files(tmp_path: Path) -> None:
    orig = _micrograph((200, 240))
    err = np.where(RNG.random(orig.shape) < 0.5, 0.25, -0.5).astype(np.float32)
    err[10, 20] = 1.5
    a = write_mrc(tmp_path / "a.mrc", orig)
    b = write_mrc(tmp_path / "b.mrc", orig + err)
    im = compare_files(a, b).images[0]
    diff = (orig + err).astype(np.float64) - orig
    assert im.bits is None
    assert im.step is None
    assert im.errors.max_abs == pytest.approx(np.abs(diff).max())
    assert im.errors.rms == pytest.approx(math.sqrt(np.mean(diff**2)))
    assert im.errors.truncated == 0
    expected = np.corrcoef(orig.ravel(), (orig + err).ravel())[0, 1]
    assert im.errors.pearson == pytest.approx(expected, rel=1e-9)
    assert im.noise.sigma == pytest.approx(2.0, rel=0.03)
    assert im.quant_ratio == pytest.approx(im.errors.rms / im.noise.sigma)
    assert im.correlation_kind == "FRC"
    assert im.rings is not None
    np.testing.assert_allclose(im.rings.correlation, _frc_direct(orig, orig + err), rtol=1e-9)


@pytest.mark.parametrize("bits", [4, 6, 9])
def test_quantised_file_against_an_independent_decode(
    bits: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    orig = _micrograph((256, 300))
    orig[5, 5] = 1e3  # one outlier: clamped by the range option below
    a = write_mrc(tmp_path / "a.mrc", orig, voxel_size=1.25)
    hdf = tmp_path / "a.hdf"
    e2compress.compress_file(a, hdf, bits=bits, value_range=(50.0, 300.0))
    ((decoded, mapping),) = eman_decode(hdf)  # plain h5py + EMAN2's formula
    assert mapping is not None
    _, rmin, rmax, stored_truncated = mapping
    step = (rmax - rmin) / (2**bits - 1)
    rc, out, err = run_cli(capsys, "compare", "--json", a, hdf)
    assert (rc, err) == (0, "")
    got = json.loads(out)["images"][0]
    diff = decoded.astype(np.float64) - orig
    inside = (orig >= np.float32(rmin)) & (orig <= np.float32(rmax))
    assert got["bits"] == bits
    assert got["step"] == pytest.approx(step, rel=1e-6)
    assert got["truncated"] == int((~inside).sum()) == stored_truncated == 1
    assert got["max_abs_error"] == pytest.approx(np.abs(diff).max(), rel=1e-5)
    assert got["rms_error"] == pytest.approx(math.sqrt(np.mean(diff**2)), rel=1e-5)
    inside_rms = math.sqrt(np.mean(diff[inside] ** 2))
    assert got["quant_noise"] == pytest.approx(inside_rms, rel=1e-4)
    assert got["max_error_steps"] <= 0.5 + 1e-4
    assert got["rms_error_steps"] == pytest.approx(inside_rms / step, rel=1e-4)
    if step < 2.0:  # errors uniform over a step when the noise (2.0) spans it
        assert got["quant_noise"] == pytest.approx(step / math.sqrt(12), rel=0.03)
    assert got["noise_sigma"] == pytest.approx(2.0, rel=0.03)
    assert got["quant_noise_ratio"] == pytest.approx(got["quant_noise"] / got["noise_sigma"])
    frc = _frc_direct(orig, decoded)
    np.testing.assert_allclose(got["frc"], frc, rtol=1e-5, atol=1e-6)
    assert got["lowest_correlation"] == pytest.approx(frc[1:].min(), rel=1e-5)
    below = np.nonzero(frc[1:] < 0.999)[0]
    assert got["apix"] == pytest.approx(1.25)
    if below.size:
        k = below[0] + 1  # first ring below: the crossing lies between rings k-1 and k
        f = got["threshold_frequency"]
        assert (k - 1) / 256 <= f <= k / 256
        assert got["resolution_px"] == pytest.approx(1 / f)
        assert got["resolution_A"] == pytest.approx(1.25 / f)
    else:
        assert got["threshold_frequency"] is None


def test_identical_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    orig = _micrograph((64, 80))
    a = write_mrc(tmp_path / "a.mrc", orig, voxel_size=2.0)
    e2compress.compress_file(a, tmp_path / "a.hdf", bits=0)
    rc, out, _ = run_cli(capsys, "compare", a, tmp_path / "a.hdf")
    assert rc == 0
    assert out.splitlines() == [
        f"{tmp_path / 'a.hdf'} against {a}: 1 image",
        "image 0: 80 x 64  bits 0  (float32)",
        "  error: max 0, RMS 0; 0 pixels truncated; correlation 1",
        out.splitlines()[3],
        "  FRC threshold 0.999: stays at or above it up to Nyquist (4 A); lowest 1",
    ]
    assert "quantisation 0 = 0 x image noise" in out
    im = compare_files(a, tmp_path / "a.hdf").images[0]
    assert im.rings is not None
    np.testing.assert_allclose(im.rings.correlation, 1.0, rtol=1e-12)


def test_files_with_different_images_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write_mrc(tmp_path / "a.mrcs", RNG.normal(0, 1, (3, 16, 16)).astype(np.float32))
    b = write_mrc(tmp_path / "b.mrcs", RNG.normal(0, 1, (2, 16, 16)).astype(np.float32))
    c = write_mrc(tmp_path / "c.mrcs", RNG.normal(0, 1, (3, 16, 20)).astype(np.float32))
    rc, out, err = run_cli(capsys, "compare", a, b)
    assert (rc, out) == (1, "")
    assert err == f"ERROR: {a} holds 3 images, {b} holds 2: not the same images\n"
    rc, out, err = run_cli(capsys, "compare", a, c)
    assert (rc, out) == (1, "")
    assert err == f"ERROR: image 0 is 16 x 16 in {a} but 20 x 16 in {c}: not the same images\n"
    with pytest.raises(ImagesDiffer):
        compare_files(b, a)
    rc, _, err = run_cli(capsys, "compare", a, tmp_path / "missing.hdf")
    assert rc == 1
    assert err == f"ERROR: {tmp_path / 'missing.hdf'}: no such file\n"


def test_stack_overall_figures_pool_every_image(tmp_path: Path) -> None:
    stack = np.stack([_micrograph((48, 48), sigma=s, seed=k) for k, s in enumerate((1, 2, 3))])
    a = write_mrc(tmp_path / "s.mrcs", stack)
    e2compress.compress_file(a, tmp_path / "s.hdf", bits=6)
    result = compare_files(a, tmp_path / "s.hdf")
    decoded = np.stack(e2compress.read_images(tmp_path / "s.hdf"))
    diff = decoded.astype(np.float64) - stack
    overall = result.overall
    assert len(result.images) == 3
    assert overall.errors.count == stack.size
    assert overall.errors.rms == pytest.approx(math.sqrt(np.mean(diff**2)))
    assert overall.errors.max_abs == pytest.approx(np.abs(diff).max())
    sigmas = [im.noise.sigma for im in result.images]
    assert overall.noise.sigma == pytest.approx(math.sqrt(np.mean(np.square(sigmas))))
    assert overall.rings is not None
    cross = sum(im.rings.cross for im in result.images if im.rings is not None)
    np.testing.assert_allclose(overall.rings.cross, cross)
    assert overall.bits == 6
    assert overall.step is None  # each image has its own range: steps shown per image
    text = format_comparison(result, summary=True)
    assert text.splitlines()[1].startswith("overall: 48 x 48")


def test_a_volume_gets_a_shell_correlation_and_a_movie_rings_over_sections(
    tmp_path: Path,
) -> None:
    vol_path = DATA / "EMD-3197.map"
    e2compress.compress_file(vol_path, tmp_path / "v.hdf", bits=6)
    im = compare_files(vol_path, tmp_path / "v.hdf").images[0]
    assert im.correlation_kind == "FSC"
    assert im.apix == pytest.approx(11.4)
    with mrcfile.open(vol_path) as m:
        orig = np.array(m.data, dtype=np.float64)
    dec = e2compress.read_images(tmp_path / "v.hdf")[0].astype(np.float64)
    fa, fb = np.fft.fftn(orig), np.fft.fftn(dec)
    f = np.fft.fftfreq(20)
    shell = np.rint(
        np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2) * 20
    )
    for k in (1, 4, 10):
        m = shell == k
        fsc = np.sum(fa[m] * fb[m].conj()).real / np.sqrt(
            np.sum(np.abs(fa[m]) ** 2) * np.sum(np.abs(fb[m]) ** 2)
        )
        assert im.rings is not None
        assert im.rings.correlation[k] == pytest.approx(fsc, rel=1e-5)
    movie = RNG.poisson(2.0, (4, 64, 64)).astype(np.float32)
    write_mrc(tmp_path / "m.mrc", movie)
    e2compress.compress_file(tmp_path / "m.mrc", tmp_path / "m.hdf", bits=3)
    im = compare_files(tmp_path / "m.mrc", tmp_path / "m.hdf").images[0]
    assert im.correlation_kind == "FRC over sections"
    assert im.noise.method == "poisson"
    assert im.noise.sigma == pytest.approx(math.sqrt(movie.mean()))


def test_apix_override_and_unknown_pixel_size(tmp_path: Path) -> None:
    orig = _micrograph((64, 64))
    a = write_mrc(tmp_path / "a.mrc", orig)  # voxel size 1.0 ("unset"): no Angstrom figure
    e2compress.compress_file(a, tmp_path / "a.hdf", bits=3)
    im = compare_files(a, tmp_path / "a.hdf").images[0]
    assert im.apix is None
    assert im.to_dict()["resolution_A"] is None
    im = compare_files(a, tmp_path / "a.hdf", apix=0.5).images[0]
    assert im.to_dict()["resolution_A"] == pytest.approx(0.5 * im.to_dict()["resolution_px"])


def test_plot_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    a = write_mrc(tmp_path / "a.mrc", _micrograph((64, 64)), voxel_size=1.5)
    e2compress.compress_file(a, tmp_path / "a.hdf", bits=4)
    rc, _, err = run_cli(capsys, "compare", "--plot", tmp_path / "p.png", a, tmp_path / "a.hdf")
    assert (rc, err) == (0, "")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.hdf", "a.mrc", "p.png"]


def test_plot_title_names_the_file_bits_and_noise_ratio(tmp_path: Path) -> None:
    a = write_mrc(tmp_path / "a.mrc", _micrograph((64, 48)), voxel_size=1.5)
    e2compress.compress_file(a, tmp_path / "a.hdf", bits=4)
    result = compare_files(a, tmp_path / "a.hdf")
    ratio = result.images[0].errors.inside_rms / result.images[0].noise.sigma
    assert plot_title(result) == (
        f"a.hdf against a.mrc, bits 4, quantisation noise {ratio:.3g} x image noise"
    )
    doc = result.to_dict()  # shapes x first, as the text says "48 x 64"
    assert (doc["axis_order"], doc["images"][0]["shape"]) == ("x,y,z", [48, 64])


def test_plot_without_matplotlib_says_how_to_get_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    a = write_mrc(tmp_path / "a.mrc", _micrograph((32, 32)))
    rc, _, err = run_cli(capsys, "compare", "--plot", tmp_path / "p.png", a, a)
    assert rc == 1
    assert err == (
        f"ERROR: {tmp_path / 'p.png'}: --plot needs matplotlib: pip install 'e2compress[plot]'\n"
    )


@pytest.mark.shared
def test_the_issue_figures_for_fei_extended_at_5_bits(tmp_path: Path) -> None:
    """The issue: --bits 5 on fei-extended.mrc gives RMS error 651 and correlation 0.79."""
    src = REAL / "fei-extended.mrc"
    e2compress.compress_file(src, tmp_path / "f.hdf", bits=5)
    im = compare_files(src, tmp_path / "f.hdf").images[0]
    with mrcfile.open(src, permissive=True) as m:
        orig = np.array(m.data, dtype=np.float64)
    dec = eman_decode(tmp_path / "f.hdf")[0][0].astype(np.float64)
    diff = dec - orig
    assert im.errors.rms == pytest.approx(math.sqrt(np.mean(diff**2)), rel=1e-6)
    assert round(im.errors.rms) == 651
    assert im.errors.pearson == pytest.approx(np.corrcoef(orig.ravel(), dec.ravel())[0, 1])
    assert round(im.errors.pearson, 2) == 0.79
    assert im.step == 2048
    assert im.quant_ratio > 1  # quantisation noise above the image's own noise
