"""``e2compress export``: HDF -> MRC/TIFF round trips, value by value and header by header.

Originals and exports are read with mrcfile / tifffile directly, never through e2compress.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import mrcfile
import numpy as np
import pytest
import tifffile

import e2compress
from e2compress.errors import InputError, OutputError
from e2compress.export import export_file
from e2compress.layout import EmanHdfWriter
from helpers import plain_name, real_file_params, run_cli, true_images, write_mrc

INT_FILES = {
    "fei-extended.mrc",
    "HAADFscan.mrc",
    "KLH.tif",
    "13pf_MT.tif",
    "test_loading_image_saved_with_DM.tif",
    "grad.mrc",
}


def _is_tiff(path: Path) -> bool:
    return plain_name(path).endswith((".tif", ".tiff"))


def _mrc_suffix(path: Path) -> str:
    return ".mrcs" if plain_name(path).endswith(".mrcs") else ".mrc"


def _original_dtype(path: Path) -> np.dtype:
    if _is_tiff(path):
        with tifffile.TiffFile(path) as tif:
            return np.dtype(tif.pages[0].dtype)
    with mrcfile.open(path, permissive=True, header_only=True) as m:
        return np.dtype(mrcfile.utils.data_dtype_from_header(m.header)).newbyteorder("=")


def _mrc_header(path: Path) -> tuple[tuple[float, ...], tuple[float, ...], tuple[int, ...], int]:
    """Voxel size, origin, nstart in x, y, z order and ispg of an MRC file."""
    with mrcfile.open(path, permissive=True, header_only=True) as m:
        h = m.header
        vs = tuple(float(v) for v in m.voxel_size.item())
        origin = tuple(float(v) for v in h.origin.item())
        axes = (int(h.mapc), int(h.mapr), int(h.maps))
        starts = (int(h.nxstart), int(h.nystart), int(h.nzstart))
        by_axis = dict(zip(axes, starts, strict=True))
        return vs, origin, (by_axis[1], by_axis[2], by_axis[3]), int(h.ispg)


def _exported_mrc(path: Path) -> np.ndarray:
    log = io.StringIO()
    assert mrcfile.validate(path, print_file=log), log.getvalue()
    with mrcfile.open(path) as m:
        return np.array(m.data)


@pytest.mark.parametrize("fmt", ["mrc", "tif"])
@pytest.mark.parametrize("lossy", [False, True], ids=["bits0", "bits16-or-8"])
@pytest.mark.parametrize("path", real_file_params())
def test_export_round_trip_of_real_files(path: Path, lossy: bool, fmt: str, tmp_path: Path) -> None:
    # integer files at 16 bits are integer-mapped and exact; float files at 8 bits are not
    bits = (16 if plain_name(path) in INT_FILES else 8) if lossy else 0
    hdf = tmp_path / "c.hdf"
    e2compress.compress_file(path, hdf, bits=bits, threads=1)
    out = tmp_path / ("out" + (_mrc_suffix(path) if fmt == "mrc" else ".tif"))
    report = export_file(hdf, out)
    originals = true_images(path)
    integer = plain_name(path) in INT_FILES
    exact = bits == 0 or integer  # integers of these files fit 16 bits exactly
    assert report.exact is exact
    decoded = e2compress.read_images(hdf)
    want = np.stack(originals) if exact else np.stack(decoded)
    odtype = _original_dtype(path)
    with e2compress.open(hdf) as f:
        apix = tuple(float(f.header(0)[f"apix_{a}"]) for a in "xyz")

    if fmt == "mrc":
        data = _exported_mrc(out)
        assert data.reshape(want.shape).tobytes() == want.astype(data.dtype).tobytes()
        np.testing.assert_array_equal(data.reshape(want.shape).astype(np.float64), want)
        if integer:  # the original integer type (uint8 and int32 have no MRC mode)
            expect = {"u1": "u2", "i4": "i2"}.get(odtype.str[1:], odtype.str[1:])
            assert data.dtype.str[1:] == expect
        else:
            assert data.dtype == np.float32
        vs, origin, starts, ispg = _mrc_header(out)
        assert vs[:2] == pytest.approx(apix[:2], rel=1e-6)
        if data.ndim == 3 and len(originals) == 1:
            assert vs[2] == pytest.approx(apix[2], rel=1e-6)
        if not _is_tiff(path):
            ovs, oorigin, ostarts, oispg = _mrc_header(path)
            assert origin == oorigin
            assert starts == ostarts
            assert ispg == oispg
            plausible = [v if 0.01 < v < 1000 else 1.0 for v in ovs]
            assert vs[:2] == pytest.approx(plausible[:2], rel=1e-6)
            with mrcfile.open(path, permissive=True, header_only=True) as m:
                labels = [bytes(t).rstrip(b"\0 ") for t in m.header.label[: m.header.nlabl]]
            with mrcfile.open(out, header_only=True) as m:
                got = [bytes(t).rstrip(b"\0 ") for t in m.header.label[: m.header.nlabl]]
                assert (int(m.header.mapc), int(m.header.mapr), int(m.header.maps)) == (1, 2, 3)
            assert got[:-1] == [t for t in labels if t.strip()]
            assert got[-1].startswith(b"e2compress export of")
    else:
        pages = tifffile.imread(out)
        # rows flipped back: for a TIFF original this is the identity
        back = np.stack([p[::-1] for p in want.reshape(-1, *want.shape[-2:])])
        np.testing.assert_array_equal(pages.reshape(back.shape), back)
        if _is_tiff(path) and exact:
            original = tifffile.imread(path)
            assert pages.dtype == original.dtype
            assert pages.tobytes() == original.tobytes()
        elif integer:
            assert pages.dtype == odtype
        else:
            assert pages.dtype == np.float32


def _movie(path: Path, ispg: int) -> np.ndarray:
    data = np.random.default_rng(3).poisson(1.5, (6, 40, 50)).astype(np.uint16)
    write_mrc(path, data, voxel_size=(1.3, 1.3, 2.0), origin=(10.0, -4.0, 2.5), ispg=ispg)
    return data


@pytest.mark.parametrize(("ispg", "kind"), [(0, "movie"), (1, "volume")])
def test_a_movie_stays_a_movie_and_a_volume_a_volume(
    ispg: int, kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _movie(tmp_path / f"{kind}.mrc", ispg)
    e2compress.compress_file(tmp_path / f"{kind}.mrc", tmp_path / "c.hdf", bits=4)
    rc, out, err = run_cli(capsys, "export", tmp_path / "c.hdf", tmp_path / "back.mrc")
    assert (rc, err) == (0, "")
    assert "back.mrc: mrc, 50 x 40 x 6 uint16 (exact), 1.3 A/px" in out
    with mrcfile.open(tmp_path / "back.mrc") as m:
        assert m.data.dtype == np.uint16
        np.testing.assert_array_equal(m.data, data)
        assert int(m.header.ispg) == ispg
        assert m.voxel_size.item() == pytest.approx((1.3, 1.3, 2.0))
        assert m.header.origin.item() == (10.0, -4.0, 2.5)
    export_file(tmp_path / "c.hdf", tmp_path / "back.tif")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "back.tif"), data[:, ::-1])


def test_a_stack_stays_a_stack(tmp_path: Path) -> None:
    stack = np.random.default_rng(4).normal(0, 1, (5, 24, 30)).astype(np.float32)
    write_mrc(tmp_path / "s.mrcs", stack)
    e2compress.compress_file(tmp_path / "s.mrcs", tmp_path / "s.hdf", bits=0)
    export_file(tmp_path / "s.hdf", tmp_path / "back.mrcs")
    with mrcfile.open(tmp_path / "back.mrcs") as m:
        assert m.is_image_stack()
        np.testing.assert_array_equal(m.data, stack)
    assert e2compress.read_images(tmp_path / "back.mrcs")[4].tobytes() == stack[4].tobytes()


def test_a_stack_of_volumes_is_an_mrc_volume_stack_and_no_tiff(tmp_path: Path) -> None:
    vols = np.arange(2 * 4 * 5 * 6, dtype=np.float32).reshape(2, 4, 5, 6) / 7
    with EmanHdfWriter(tmp_path / "v.hdf") as w:
        for i in range(2):
            h5py.Dataset(w.create_image(i, (4, 5, 6), 0, chunks=(1, 5, 6)))[...] = vols[i]
            w.write_header(i, {"apix_x": np.float32(2.5), "apix_y": np.float32(2.5)})
    export_file(tmp_path / "v.hdf", tmp_path / "v.mrc")
    with mrcfile.open(tmp_path / "v.mrc") as m:
        assert m.is_volume_stack()
        np.testing.assert_array_equal(m.data, vols)
    with pytest.raises(InputError, match="stack of 3-D images cannot be written as one TIFF"):
        export_file(tmp_path / "v.hdf", tmp_path / "v.tif")
    assert not (tmp_path / "v.tif").exists()


def test_lossy_integer_data_export_as_float(tmp_path: Path) -> None:
    counts = np.random.default_rng(5).integers(0, 1000, (32, 40)).astype(np.int16)
    write_mrc(tmp_path / "a.mrc", counts)
    e2compress.compress_file(tmp_path / "a.mrc", tmp_path / "a.hdf", bits=5)  # step 32
    report = export_file(tmp_path / "a.hdf", tmp_path / "b.mrc")
    assert report.exact is False
    with mrcfile.open(tmp_path / "b.mrc") as m:
        assert m.data.dtype == np.float32
        np.testing.assert_array_equal(m.data, e2compress.read_images(tmp_path / "a.hdf")[0])
    export_file(tmp_path / "a.hdf", tmp_path / "c.mrc", as_float=True)
    with mrcfile.open(tmp_path / "c.mrc") as m:
        assert m.data.dtype == np.float32


def test_integer_values_of_a_float_original_stay_float(tmp_path: Path) -> None:
    write_mrc(tmp_path / "a.mrc", np.arange(64, dtype=np.float32).reshape(8, 8))
    e2compress.compress_file(tmp_path / "a.mrc", tmp_path / "a.hdf", bits=0)
    assert export_file(tmp_path / "a.hdf", tmp_path / "b.mrc").dtype == "float32"


def _one_file(tmp_path: Path) -> Path:
    write_mrc(tmp_path / "a.mrc", np.ones((16, 16), dtype=np.float32))
    e2compress.compress_file(tmp_path / "a.mrc", tmp_path / "a.hdf", bits=8)
    return tmp_path / "a.hdf"


def test_never_overwrites_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hdf = _one_file(tmp_path)
    target = tmp_path / "out.mrc"
    target.write_bytes(b"precious")
    rc, _, err = run_cli(capsys, "export", hdf, target)
    assert rc == 1
    assert err == f"ERROR: {target}: exists; use --force to replace it\n"
    assert target.read_bytes() == b"precious"
    rc, _, err = run_cli(capsys, "export", "--force", hdf, target)
    assert (rc, err) == (0, "")
    assert _exported_mrc(target).shape == (16, 16)
    assert sorted(os.listdir(tmp_path)) == ["a.hdf", "a.mrc", "out.mrc"]


def test_output_that_appears_during_the_export_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hdf = _one_file(tmp_path)
    target = tmp_path / "out.mrc"
    import e2compress.export as export_module

    real = export_module._write_mrc

    def racing(*args: object, **kwargs: object) -> tuple[int, ...]:
        target.write_bytes(b"someone else's")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(export_module, "_write_mrc", racing)
    with pytest.raises(OutputError, match="exists"):
        export_file(hdf, target)
    assert target.read_bytes() == b"someone else's"
    assert sorted(os.listdir(tmp_path)) == ["a.hdf", "a.mrc", "out.mrc"]


@pytest.mark.parametrize("fmt", [".mrc", ".tif"])
def test_failure_mid_write_leaves_nothing(
    fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = np.zeros((3, 8, 8), dtype=np.float32)
    write_mrc(tmp_path / "s.mrcs", stack)
    e2compress.compress_file(tmp_path / "s.mrcs", tmp_path / "s.hdf", bits=0)
    import e2compress.export as export_module

    calls = {"n": 0}
    real = export_module._sections

    def failing(*args: Any) -> Iterator[np.ndarray]:
        calls["n"] += 1
        for k, section in enumerate(real(*args)):
            if calls["n"] == 2 and k == 1:  # the write pass, after one section
                raise InputError("simulated read failure", tmp_path / "s.hdf")
            yield section

    monkeypatch.setattr(export_module, "_sections", failing)
    with pytest.raises(InputError, match="simulated"):
        export_file(tmp_path / "s.hdf", tmp_path / f"out{fmt}")
    assert sorted(os.listdir(tmp_path)) == ["s.hdf", "s.mrcs"]


def test_bad_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hdf = _one_file(tmp_path)
    rc, _, err = run_cli(capsys, "export", hdf, tmp_path / "out.png")
    assert rc == 1
    assert "unknown output format" in err
    rc, _, err = run_cli(capsys, "export", hdf, tmp_path / "nodir" / "out.mrc")
    assert rc == 1
    assert "does not exist" in err
    rc, _, err = run_cli(capsys, "export", tmp_path / "missing.hdf", tmp_path / "out.mrc")
    assert (rc, err) == (1, f"ERROR: {tmp_path / 'missing.hdf'}: no such file\n")
    rc, _, err = run_cli(capsys, "export", "--force", hdf, hdf.with_suffix(".mrc"))
    assert rc == 0  # a.mrc (the original) replaced on request
    assert sorted(os.listdir(tmp_path)) == ["a.hdf", "a.mrc"]
