"""Every value in native precision (issue 14 items 1 and 3, issue 16's ``--nooutliers``
on +-3e38 data).

The rule, for every source dtype, value set and bits: the written file decodes, through
e2compress's reader *and* through plain h5py with EMAN2's float32 formula, within half a
step (``quantize.within_half_step``) of the source compared in float64 / its own dtype;
or the file is refused with one line. Integer data stored exactly read back exactly as
integers through e2compress. Expected values come from the arrays written, not from the
code under test.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import e2compress
from e2compress.errors import InputError, VerificationError
from e2compress.export import export_file
from e2compress.info import file_info
from e2compress.quantize import RenderRange, integer_step, within_half_step
from e2compress.ranges import block_stats, choose_range, histogram, nooutliers_limits
from e2compress.readers import open_source
from e2compress.verify import verify_output
from helpers import assert_within_half_step, eman2_read, eman_decode, one_line, run_cli, write_mrc

F32 = np.float32
SETTINGS = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
DTYPES = ("u1", "i1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8")
NEAR_2_24 = 1 << 24


def _tiff(path: Path, data: np.ndarray) -> np.ndarray:
    """Write ``data`` as a TIFF; return what e2compress must store (rows flipped, as EMAN2)."""
    tifffile.imwrite(path, data)
    return np.ascontiguousarray(data[::-1])


def _exact_in_f32(a: np.ndarray) -> bool:
    if a.dtype.kind in "iu":  # exactly, in Python integers
        return all(int(F32(int(v))) == int(v) for v in a.ravel())
    with np.errstate(over="ignore"):
        return bool(np.array_equal(a.astype(F32).astype(np.float64), a.astype(np.float64)))


@st.composite
def sources(draw: st.DrawFn) -> np.ndarray:
    """A small image of any source dtype, its values near zero, near 2**24, near the
    type's ends or (floats) far from zero with a small span."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=2, min_side=3, max_side=12))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        span = draw(st.sampled_from([1, 3, 200, 5000, 70000, 1 << 30, 1 << 62]))
        centres = [0, NEAR_2_24, NEAR_2_24 + 1, 3 * NEAR_2_24 + 7, 1 << 31, info.max, info.min]
        centre = draw(st.sampled_from(centres))
        lo = max(int(info.min), min(int(info.max), centre - span // 2))
        hi = max(lo, min(int(info.max), lo + span))
        ints = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, 1 << 62)))
        values = [lo + int(v) % (hi - lo + 1) for v in ints.ravel()]
        return np.array(values, dtype=object).astype(dtype).reshape(shape)
    width = 2 if dtype.itemsize == 2 else 32 if dtype.itemsize == 4 else 64
    centres = [0.0, 1.0, 1000.0, -3.5e4, 1e10, 1e30] + ([1e300] if width == 64 else [])
    centre = draw(st.sampled_from(centres))
    span = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    unit = draw(hnp.arrays(np.float64, shape, elements=st.floats(-1.0, 1.0)))
    if width == 2:
        centre, span = min(centre, 1000.0), min(span, 1.0)
    return (centre + span * unit).astype(dtype)


@SETTINGS
@given(
    data=sources(),
    bits=st.sampled_from([0, 2, 5, 8, 10, 16, "auto"]),
    nooutliers=st.booleans(),
)
def test_every_value_in_native_precision(
    tmp_path_factory: pytest.TempPathFactory, data: np.ndarray, bits: int | str, nooutliers: bool
) -> None:
    tmp = tmp_path_factory.mktemp("p")
    truth = _tiff(tmp / "in.tif", data)
    out = tmp / "in.hdf"
    try:
        report = e2compress.compress_file(
            tmp / "in.tif", out, bits=bits, nooutliers=nooutliers, verify=True, threads=1
        )
    except (InputError, VerificationError) as exc:
        text = one_line(exc)
        # refused only where no EMAN2 storage holds the values: float32 (bits 0) for
        # values it cannot represent, or a range float32 limits cannot express
        assert isinstance(exc, InputError), text  # noqa: PT017
        assert (bits == 0 and not _exact_in_f32(truth)) or "too wide" in text, text
        return
    ours = e2compress.read_images(out)[0]
    (eman, mapping), *_ = eman_decode(out)
    if mapping is None:  # float32 storage (bits 0, or auto for noiseless data): bit for bit
        assert bits in (0, "auto")
        assert np.array_equal(ours.astype(np.float64), truth.astype(np.float64))
        assert np.array_equal(eman.astype(np.float64), truth.astype(np.float64))
        return
    clamped = assert_within_half_step(truth, ours, mapping)
    assert assert_within_half_step(truth, eman, mapping) == clamped
    assert report.images[0].truncated == clamped
    rng = RenderRange(*mapping[:3])
    if integer_step(rng) == 1 and clamped == 0 and truth.dtype.kind in "iu":
        assert np.array_equal(ours.astype(np.int64), truth.astype(np.int64))  # exact integers
    if not nooutliers:  # without clamping, nothing is refused or clamped but float32 ends
        assert clamped == 0 or "integer_step" in report.images[0].rule


# --------------------------------------------------------------------------- the cases


def _near_2_24(dtype: str) -> np.ndarray:
    rng = np.random.default_rng(5)
    return (NEAR_2_24 + rng.integers(0, 4096, size=(64, 64))).astype(dtype)


@pytest.mark.parametrize("dtype", ["i4", "u4"])
def test_bits0_refuses_integers_float32_cannot_hold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dtype: str
) -> None:
    """The issue's case: exit 0 with 2063 of 4096 pixels off by one; now refused with one
    line naming the bits that hold them."""
    _tiff(tmp_path / "a.tif", _near_2_24(dtype))
    rc, _, err = run_cli(
        capsys, "--bits", "0", "--verify", "--outpath", tmp_path, tmp_path / "a.tif"
    )
    assert rc == 1
    assert not (tmp_path / "a.hdf").exists()
    lines = [x for x in err.splitlines() if "a.tif" in x]
    assert len(lines) == 1
    assert "not exact in float32" in lines[0]
    assert "bits 16 stores them exactly" in lines[0]


@pytest.mark.parametrize("dtype", ["i4", "u4"])
def test_integer_mapping_past_2_24_reads_back_exactly(tmp_path: Path, dtype: str) -> None:
    truth = _tiff(tmp_path / "a.tif", _near_2_24(dtype))
    out = tmp_path / "a.hdf"
    e2compress.compress_file(tmp_path / "a.tif", out, bits=16, verify=True)
    got = e2compress.read_images(out)[0]
    assert got.dtype == np.float64
    assert np.array_equal(got.astype(np.int64), truth.astype(np.int64))
    (eman, mapping), *_ = eman_decode(out)
    assert mapping is not None
    # EMAN2's float32 formula cannot hold odd values past 2**24: within one unit
    assert np.abs(eman.astype(np.int64) - truth.astype(np.int64)).max() <= 1
    assert_within_half_step(truth, eman, mapping)
    assert "float64" in file_info(out).images[0].decoded  # type: ignore[operator]
    back = tmp_path / "back.tif"
    rep = export_file(out, back)
    assert rep.exact
    assert rep.dtype == str(np.dtype(dtype))
    assert np.array_equal(tifffile.imread(back)[::-1], truth)


def _float_hdf(path: Path, values: np.ndarray, attrs: dict[str, int]) -> None:
    """A plain float32 EMAN2 HDF of one image (as EMAN2 or the old bits 0 wrote it)."""
    with h5py.File(path, "w") as f:
        images = f.create_group("MDF/images")
        images.attrs["imageid_max"] = np.array([0], dtype=np.int32)
        g = images.create_group("0")
        g.create_dataset("image", data=values.astype(F32))
        for key, value in attrs.items():
            g.attrs[f"EMAN.{key}"] = np.array([value], dtype=np.int32)


def test_compare_sees_native_values(tmp_path: Path) -> None:
    """compare reads both sides in their own precision: the integer mapping past 2**24 is
    exact (the float32 decode showed errors of 1)."""
    from e2compress.compare import compare_files

    _tiff(tmp_path / "a.tif", _near_2_24("i4"))
    out = tmp_path / "a.hdf"
    e2compress.compress_file(tmp_path / "a.tif", out, bits=16)
    result = compare_files(tmp_path / "a.tif", out)
    assert result.images[0].errors.max_abs == 0.0
    assert result.images[0].errors.truncated == 0


def test_export_does_not_call_rounded_integers_exact(tmp_path: Path) -> None:
    """A float32-stored int32 image past 2**24 (as the old bits 0 wrote it) was exported
    as "int32 (exact)"."""
    out = tmp_path / "a.hdf"
    _float_hdf(out, _near_2_24("i4"), {"TIFF.bitspersample": 32, "TIFF.sampleformat": 2})
    rep = export_file(out, tmp_path / "back.tif")
    assert not rep.exact
    small = tmp_path / "small.hdf"
    _float_hdf(small, _near_2_24("i4") - NEAR_2_24, {"TIFF.bitspersample": 32})
    assert export_file(small, tmp_path / "small.tif").exact


def test_verify_compares_against_the_native_source(tmp_path: Path) -> None:
    """Float32-rounded values of an int32 source fail verification (a float32 view of the
    source used to hide them)."""
    src = tmp_path / "a.tif"
    truth = _tiff(src, _near_2_24("i4"))
    out = tmp_path / "a.hdf"
    _float_hdf(out, truth, {})
    rep = e2compress.ImageReport(0, (64, 64), 0, None, None, 0, "")
    opts = e2compress.Options(bits=0).validate()
    with open_source(src) as source, pytest.raises(VerificationError, match="lossless"):
        verify_output(source, out, opts, [rep])


def test_float64_keeps_its_distinct_values(tmp_path: Path) -> None:
    """The issue's float64 TIFF collapsed to one value (its span is below float32's unit
    at 1e10)."""
    rng = np.random.default_rng(3)
    truth = _tiff(tmp_path / "a.tif", 1e10 + rng.normal(0, 1, (64, 64)))
    out = tmp_path / "a.hdf"
    e2compress.compress_file(tmp_path / "a.tif", out, bits=16, verify=True)
    got = e2compress.read_images(out)[0]
    assert np.unique(got).size > 100  # +-4 sigma on a 0.03 step (the range spans 2048)
    (_, mapping), *_ = eman_decode(out)
    assert mapping is not None
    assert_within_half_step(truth, got, mapping)
    rep = export_file(out, tmp_path / "back.tif")  # TIFF holds float64: the decoded values
    assert rep.dtype == "float64"
    assert np.array_equal(tifffile.imread(tmp_path / "back.tif")[::-1], got)
    assert not export_file(out, tmp_path / "back.mrc").exact  # MRC rounds them to float32


def test_within_half_step_sees_float32_rounding_of_integers() -> None:
    truth = _near_2_24("i4")
    rng = choose_range(block_stats(truth), 16)
    assert integer_step(rng) == 1
    exact = truth.astype(np.float64)
    assert within_half_step(truth, exact, rng).all()
    off_by_one = exact + (truth % 2)
    assert not within_half_step(truth, off_by_one, rng).all()
    small = np.arange(-100, 100, dtype=np.int32) + (1 << 23)
    srng = choose_range(block_stats(small), 8)
    assert not within_half_step(small, small.astype(F32) + F32(1), srng).any()


# --------------------------------------------------------------------------- counts


def _poisson(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(7)
    frames = rng.poisson(0.05, (2, 1024, 1024)).astype(np.uint8)
    frames[:, 100, 200] = 5  # the rare 5-electron pixel of a 4096^2 frame: max 5, and
    # EMAN2's histogram limit lands on a fraction (2.507)
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, frames)
    return path, np.ascontiguousarray(frames[:, ::-1])


@pytest.mark.parametrize("bits", ["auto", 2])
def test_nooutliers_keeps_counts_integer(tmp_path: Path, bits: int | str) -> None:
    """Single electrons decoded as 0.9706 and the dose fell by 2.8 % (31 % at 2 bits)."""
    path, truth = _poisson(tmp_path)
    out = tmp_path / "movie.hdf"
    report = e2compress.compress_file(path, out, bits=bits, nooutliers=True, verify=True)
    got = np.stack(e2compress.read_images(out))
    assert np.array_equal(got, np.trunc(got))
    assert np.all(got[truth == 1] == 1.0)
    inside = truth <= got.max()
    assert np.array_equal(got[inside], truth[inside])
    clamped = int(np.count_nonzero(~inside))
    assert report.truncated == clamped
    change = (got.sum() - truth.sum(dtype=np.int64)) / truth.size
    assert abs(change) <= 0.01 * truth.mean()
    for (values, mapping), frame in zip(eman_decode(out), truth, strict=True):
        assert mapping is not None
        assert_within_half_step(frame, values, mapping)
    assert not any("mean" in w for w in report.warnings)


def test_clamping_that_moves_the_mean_is_warned(tmp_path: Path) -> None:
    """--range 0,0.5 on counts (widened to 0..1) clamps every 2, 3...: the dose drops by
    far more than 1 %; the warning says so and auto's report carries the change."""
    path, truth = _poisson(tmp_path)
    report = e2compress.compress_file(path, tmp_path / "m.hdf", bits="auto", value_range=(0.0, 0.5))
    for im, frame in zip(report.images, truth, strict=True):
        lost = np.sum(np.maximum(frame.astype(np.int64) - 1, 0))
        assert im.mean_change == pytest.approx(-lost / frame.size)
        assert im.truncated == np.count_nonzero(frame > 1)
    assert any("move the mean" in w for w in report.warnings)


def test_integer_limits_widen_outward() -> None:
    data = np.array([0, 1, 1, 2, 3, 9], dtype=np.uint16)
    from e2compress.ranges import integer_limits

    assert integer_limits((0.4, 2.93)) == (0.0, 3.0)
    clamped = block_stats(data, integer_limits((0.4, 2.93)))
    assert clamped.all_int
    assert (clamped.minimum, clamped.maximum) == (0.0, 3.0)
    assert choose_range(clamped, 2).rule == "integer_lossless"


# --------------------------------------------------------------------------- +-3e38


def test_histogram_over_float32s_whole_span() -> None:
    """EMAN2's float32 histogram overflows over +-3e38 (a ValueError before)."""
    values = np.array([-3e38, -1.0, 0.0, 1.0, 3e38], dtype=F32)
    hist = histogram(values, float(values.min()), float(values.max()))
    assert hist.sum() == 5
    assert (hist[0], hist[-1], hist[511] + hist[512]) == (1, 1, 3)
    lo, hi = nooutliers_limits(hist, float(values.min()), float(values.max()), 5)
    assert np.isfinite(lo)
    assert np.isfinite(hi)


def _huge(path: Path, half: bool) -> np.ndarray:
    """Normal data with two pixels at +-3e38 (corrupt), or half of them there."""
    rng = np.random.default_rng(1)
    data = rng.normal(0, 1, (64, 64)).astype(F32)
    if half:
        data[::2] = np.where(data[::2] > 0, F32(3e38), F32(-3e38))
    else:
        data[0, 0], data[1, 1] = 3e38, -3e38
    write_mrc(path, data)
    return data


def test_nooutliers_clamps_a_few_huge_values(tmp_path: Path) -> None:
    """--nooutliers beside two +-3e38 pixels ended in ValueError; EMAN2's 1024 bins over
    that span cannot see the data between, so the histogram looks again inside its
    limits: the two pixels and at most 7 more per tail are clamped."""
    truth = _huge(tmp_path / "huge.mrc", half=False)
    out = tmp_path / "huge.hdf"
    report = e2compress.compress_file(tmp_path / "huge.mrc", out, nooutliers=True, verify=True)
    im = report.images[0]
    normal = np.sort(truth[np.abs(truth) < 1e30])
    assert 2 < im.truncated <= 2 + 2 * 7
    assert im.rmin is not None
    assert im.rmax is not None
    assert normal[0] - 0.1 <= im.rmin <= normal[8]  # at most 7 normal values clamped
    assert normal[-9] <= im.rmax <= normal[-1] + 0.1
    for values, mapping in eman_decode(out):
        assert mapping is not None
        assert_within_half_step(truth, values, mapping)


@pytest.mark.parametrize(("option", "half"), [(["--nooutliers"], True), ([], False)])
def test_huge_values_refusedone_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: list[str], half: bool
) -> None:
    _huge(tmp_path / "huge.mrc", half)
    rc, _, err = run_cli(capsys, *option, "--outpath", tmp_path, tmp_path / "huge.mrc")
    assert rc == 1
    assert "unexpected error" not in err
    lines = [x for x in err.splitlines() if "huge.mrc" in x]
    assert len(lines) == 1
    assert "too wide" in lines[0]
    assert ("nooutliers cannot narrow" in lines[0]) == bool(option)


@pytest.mark.parametrize("bits", [0, 5, "auto"])
@pytest.mark.parametrize("nooutliers", [False, True])
def test_float64_spike_past_float32(tmp_path: Path, bits: int | str, nooutliers: bool) -> None:
    """One float64 pixel beyond float32's range (a corrupt value in a DM/SER/TIFF file):
    clamped by nooutliers, or refused on one line; never a numpy overflow warning."""
    data = np.random.default_rng(3).random((32, 32))
    data[5, 7] = 1e300
    tifffile.imwrite(tmp_path / "spike.tif", data)
    out = tmp_path / "spike.hdf"
    error: InputError | None = None
    try:
        e2compress.compress_file(
            tmp_path / "spike.tif", out, bits=bits, nooutliers=nooutliers, threads=1
        )
    except InputError as exc:
        error = exc
    if error is not None:
        assert "spike.tif" in one_line(error)
        assert not out.exists()
        return
    assert nooutliers
    assert bits != 0
    for values, mapping in eman_decode(out):
        assert mapping is not None
        assert np.isfinite(values).all()


# --------------------------------------------------------------------------- real EMAN2


def test_eman2_reads_an_integer_mapping_past_2_24(tmp_path: Path) -> None:
    """Real EMAN2 decodes the integer mapping to float32: within one unit past 2**24 (the
    float32 spacing there is 2), exact below it."""
    truth = _tiff(tmp_path / "a.tif", _near_2_24("i4"))
    out = tmp_path / "a.hdf"
    e2compress.compress_file(tmp_path / "a.tif", out, bits=16)
    got, _ = eman2_read(out, tmp_path)
    got = got.reshape(truth.shape)
    # float32's own rounding (ties broken either way), nothing more
    assert np.abs(got.astype(np.int64) - truth.astype(np.int64)).max() == 1
    assert np.array_equal(got[truth % 2 == 0], truth[truth % 2 == 0])
    (_, mapping), *_ = eman_decode(out)
    assert mapping is not None
    assert_within_half_step(truth, got, mapping)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    values=st.lists(
        st.one_of(
            st.integers(-(2**63), 2**63 - 1),
            st.integers(-(2**26), 2**26),
            st.sampled_from([2**63 - 1, -(2**63), 2**24 + 1, 2**53 + 1, 2**62 + 2**38]),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_inexact_in_float32_counts_exactly(values: list[int]) -> None:
    """Counted in exact integer arithmetic (float64 equality called 2**63 - 1 exact)."""
    from e2compress.quantize import inexact_in_float32, integer_inexact

    a = np.array(values, dtype=np.int64)
    assert inexact_in_float32(a) == sum(int(F32(v)) != v for v in values)
    assert list(integer_inexact(a, 53)) == [int(float(v)) != v for v in values]
