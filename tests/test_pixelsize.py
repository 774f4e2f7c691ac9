"""Pixel size from TIFF metadata, and --apix for every input."""

from __future__ import annotations

from pathlib import Path

import h5py
import mrcfile
import numpy as np
import pytest
import tifffile

import e2compress
from e2compress.export import export_file
from e2compress.pixelsize import tiff_apix
from helpers import DATA, run_cli, write_mrc

IMG = np.arange(24 * 30, dtype=np.uint16).reshape(24, 30)


def _apix_of(hdf: Path, index: int = 0) -> tuple[float, float, float]:
    with h5py.File(hdf) as f:
        a = f[f"MDF/images/{index}"].attrs
        return tuple(float(a[f"EMAN.apix_{k}"][0]) for k in "xyz")  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("xres", "yres", "unit", "imagej", "expected"),
    [
        ((1, 1), (1, 1), 1, {"unit": "nm"}, (10.0, 10.0, 10.0)),
        ((4082668531, 4294967295), None, 1, {"unit": "nm", "spacing": 1.052}, (10.52,) * 3),
        ((20, 1), (40, 1), 1, {"unit": "micron", "spacing": 0.025}, (500.0, 250.0, 250.0)),
        ((1, 1), (1, 1), 1, {"unit": "\u00b5m"}, None),  # 1 um = 10000 A: implausible
        ((1e8 / 1.06, 1), (1e8 / 1.06, 1), 3, None, (1.06, 1.06, 1.06)),  # px per cm
        ((2.54e8 / 0.85, 1), (2.54e8 / 0.85, 1), 2, None, (0.85, 0.85, 0.85)),  # px per inch
        ((72, 1), (72, 1), 2, None, None),  # 72 dpi: a screen default, 3.5e6 A
        ((1, 1), (1, 1), 1, None, None),  # no unit at all
        ((1, 1), (1, 1), 1, {"unit": "pixel"}, None),
        ((0, 1), (0, 1), 3, None, None),
        ((2, 1), None, 1, {"unit": "A"}, (0.5, 0.5, 0.5)),
        ((2, 1), None, 1, {"unit": "\u00c5", "spacing": 3.0}, (0.5, 0.5, 3.0)),
    ],
)
def test_tiff_apix_from_tags(
    xres: object, yres: object, unit: int, imagej: dict[str, object] | None, expected: object
) -> None:
    got = tiff_apix(xres, yres, unit, imagej)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, rel=1e-7)


def test_imagej_tiff_pixel_size_reaches_the_header(tmp_path: Path) -> None:
    stack = np.stack([IMG, IMG + 1, IMG + 2])
    tifffile.imwrite(
        tmp_path / "a.tif",
        stack,
        imagej=True,
        resolution=(1 / 0.213, 1 / 0.213),
        metadata={"unit": "nm", "spacing": 0.5},
    )
    e2compress.compress_file(tmp_path / "a.tif", tmp_path / "a.hdf", bits=0)
    for i in range(3):
        assert _apix_of(tmp_path / "a.hdf", i) == pytest.approx((2.13, 2.13, 5.0), rel=1e-6)


def test_resolution_tags_in_centimetres(tmp_path: Path) -> None:
    tifffile.imwrite(
        tmp_path / "a.tif", IMG, resolution=(1e8 / 0.83, 1e8 / 0.83), resolutionunit="CENTIMETER"
    )
    e2compress.compress_file(tmp_path / "a.tif", tmp_path / "a.hdf", bits=0)
    assert _apix_of(tmp_path / "a.hdf") == pytest.approx((0.83, 0.83, 0.83), rel=1e-6)


@pytest.mark.parametrize("kwargs", [{}, {"resolution": (72, 72), "resolutionunit": "INCH"}])
def test_no_or_default_resolution_gives_emans_unset_value(
    kwargs: dict[str, object], tmp_path: Path
) -> None:
    tifffile.imwrite(tmp_path / "a.tif", IMG, **kwargs)  # type: ignore[arg-type]
    e2compress.compress_file(tmp_path / "a.tif", tmp_path / "a.hdf", bits=0)
    assert _apix_of(tmp_path / "a.hdf") == (1.0, 1.0, 1.0)


def test_the_bundled_imagej_volume(tmp_path: Path) -> None:
    src = DATA / "13pf_MT.tif"
    with tifffile.TiffFile(src) as tif:  # independently: spacing and resolution in nm
        meta = tif.imagej_metadata
        assert meta is not None
        num, den = tif.pages[0].tags["XResolution"].value
        nm_per_px = den / num
        assert meta["unit"] == "nm"
        spacing = float(meta["spacing"])
    e2compress.compress_file(src, tmp_path / "m.hdf", bits=8)
    for i in (0, 35):
        got = _apix_of(tmp_path / "m.hdf", i)
        assert got == pytest.approx((10 * nm_per_px, 10 * nm_per_px, 10 * spacing), rel=1e-6)
    assert got[0] == pytest.approx(10.52, rel=1e-6)


def test_tiff_export_keeps_the_pixel_size(tmp_path: Path) -> None:
    src = DATA / "13pf_MT.tif"
    e2compress.compress_file(src, tmp_path / "m.hdf", bits=8)
    export_file(tmp_path / "m.hdf", tmp_path / "back.tif")
    with tifffile.TiffFile(tmp_path / "back.tif") as tif:
        assert tif.imagej_metadata is not None
        assert tif.imagej_metadata["unit"] == "nm"
        assert tif.imagej_metadata["spacing"] == pytest.approx(1.052, rel=1e-6)
    e2compress.compress_file(tmp_path / "back.tif", tmp_path / "again.hdf", bits=8)
    assert _apix_of(tmp_path / "again.hdf", 3) == pytest.approx(_apix_of(tmp_path / "m.hdf", 3))
    # signed 16-bit has no ImageJ form: resolution in centimetres
    tifffile.imwrite(tmp_path / "s.tif", (IMG.astype(np.int16) - 300))
    e2compress.compress_file(tmp_path / "s.tif", tmp_path / "s.hdf", bits=0, apix=1.7)
    export_file(tmp_path / "s.hdf", tmp_path / "s2.tif")
    with tifffile.TiffFile(tmp_path / "s2.tif") as tif:
        assert tif.pages[0].dtype == np.int16
        assert int(tif.pages[0].tags["ResolutionUnit"].value) == 3
    e2compress.compress_file(tmp_path / "s2.tif", tmp_path / "s3.hdf", bits=0)
    assert _apix_of(tmp_path / "s3.hdf") == pytest.approx((1.7, 1.7, 1.7), rel=1e-6)


@pytest.mark.parametrize("kind", ["mrc", "tif", "hdf"])
def test_apix_overrides_every_input(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / f"a.{kind}"
    if kind == "mrc":
        write_mrc(src, IMG.astype(np.float32))
        with mrcfile.open(src, "r+") as m:
            m.voxel_size = 3.3
    elif kind == "tif":
        tifffile.imwrite(src, IMG, imagej=True, resolution=(1, 1), metadata={"unit": "nm"})
    else:
        write_mrc(tmp_path / "x.mrc", IMG.astype(np.float32))
        e2compress.compress_file(tmp_path / "x.mrc", src, bits=0, apix=4.4)
        assert _apix_of(src) == pytest.approx((4.4,) * 3)
    out = tmp_path / "out"
    out.mkdir()
    rc, _, err = run_cli(capsys, "--apix", "0.97", "--bits", "12", "--outpath", out, src)
    assert (rc, err) == (0, "")
    assert _apix_of(out / "a.hdf") == pytest.approx((0.97, 0.97, 0.97), rel=1e-7)
    rc, _, err = run_cli(capsys, "--apix", "-1", "--outpath", out, src)
    assert rc == 2
    assert "--apix" in err
