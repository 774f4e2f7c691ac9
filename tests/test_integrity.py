"""Integrity regressions: values no quantised range can hold, verification on its own,
and one interrupted run never poisoning the next (issue: exit 0 means every frame is right)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import e2compress
from e2compress import (
    Cancel,
    InputError,
    VerificationError,
    compress_file,
    encode,
    layout,
    pipeline,
    plan,
)
from e2compress.errors import Interrupted
from e2compress.quantize import RenderRange, half_step_bound, within_half_step
from e2compress.ranges import Stats, choose_range
from helpers import write_mrc

F32 = np.float32


def _huge(shape: tuple[int, int] = (64, 48)) -> np.ndarray:
    """A float32 image holding +-3e38 (corrupt or uninitialised data) among normal values."""
    img = np.random.default_rng(3).normal(0, 1, shape).astype(F32)
    img[0, 0], img[-1, -1] = F32(-3e38), F32(3e38)
    return img


def test_range_of_values_near_float32_max_is_finite_or_flagged() -> None:
    """EMAN2's float32 arithmetic gives NaN here; ours is redone in float64 and flagged
    when no float32 reader could decode it (the span overflows float32)."""
    st = Stats(count=4, minimum=-3e38, maximum=3e38, all_int=False)
    rng = choose_range(st, 5)
    assert not np.isnan(rng.rmin)
    assert not np.isnan(rng.rmax)
    assert not rng.is_finite  # 6e38 does not fit in float32: refuse, never store NaN
    st = Stats(count=4, minimum=-1e38, maximum=2e38, all_int=False)
    rng = choose_range(st, 5)
    assert rng.is_finite
    assert rng.rmin <= float(F32(-1e38))
    assert rng.rmax >= 2e38 * (1 - 1e-6)


@pytest.mark.parametrize("bits", [5, 10, 16])
def test_overflowing_image_is_refused(tmp_path: Path, bits: int) -> None:
    src = write_mrc(tmp_path / "huge.mrc", _huge())
    with pytest.raises(InputError, match="too wide for a quantised range") as info:
        compress_file(src, tmp_path / "huge.hdf", bits=bits)
    assert str(src) in str(info.value)
    assert not (tmp_path / "huge.hdf").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["huge.mrc"]


def test_overflowing_image_is_exact_at_bits_0(tmp_path: Path) -> None:
    img = _huge()
    src = write_mrc(tmp_path / "huge.mrc", img)
    compress_file(src, tmp_path / "huge.hdf", bits=0)
    (back,) = e2compress.read_images(tmp_path / "huge.hdf")
    assert np.array_equal(back, img)


def test_verification_catches_non_finite_decode_on_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the range check disabled, the verifier alone must refuse the output of
    EMAN2's overflow (a NaN stored range, every pixel decoding to NaN)."""
    monkeypatch.setattr(
        plan,
        "choose_range",
        lambda stats, bits, limits=None: RenderRange(bits, np.nan, np.nan, "eman2-overflow"),
    )
    src = write_mrc(tmp_path / "huge.mrc", _huge())
    # with the range check and the layout read-back both off, --verify alone catches it
    monkeypatch.setattr(RenderRange, "is_finite", property(lambda self: True))
    monkeypatch.setattr(pipeline, "check_complete", lambda *args: None)
    with pytest.raises(VerificationError, match="decode to NaN or infinity"):
        compress_file(src, tmp_path / "huge.hdf", bits=5, verify=True)
    assert not (tmp_path / "huge.hdf").exists()


def test_layout_read_back_refuses_a_nan_stored_range(tmp_path: Path) -> None:
    """Without --verify, the fresh read-back of the written file refuses a NaN range."""
    import h5py

    from e2compress.verify import check_complete

    src = write_mrc(tmp_path / "a.mrc", np.random.default_rng(2).normal(size=(20, 30)).astype(F32))
    report = compress_file(src, tmp_path / "a.hdf", bits=5)
    check_complete(tmp_path / "a.hdf", report.images, 1)
    with h5py.File(tmp_path / "a.hdf", "r+") as f:
        for key in ("EMAN.stored_rendermin", "EMAN.stored_rendermax"):
            f["MDF/images/0"].attrs[key] = np.array([np.nan], dtype=F32)
    with pytest.raises(VerificationError, match=r"stored range nan\.\.nan holds NaN"):
        check_complete(tmp_path / "a.hdf", report.images, 1)


def test_within_half_step_rejects_nan_where_source_is_finite() -> None:
    rng = RenderRange(8, -1.0, 1.0)
    orig = np.array([0.0, 0.5, -2.0, 2.0], dtype=F32)
    good = np.array([0.0, 0.5 + rng.step / 2 * 0.99, -1.0, 1.0], dtype=F32)
    assert within_half_step(orig, good, rng).all()
    bad = good.copy()
    bad[1] = np.nan
    assert list(within_half_step(orig, bad, rng)) == [True, False, True, True]
    far = good.copy()
    far[1] = 0.5 + rng.step  # a whole step away
    assert not within_half_step(orig, far, rng)[1]


def test_half_step_bound_by_hand() -> None:
    """8 bits over [-1, 1]: step 2/255, half 1/255, plus 1e-4 of it and 8 float32 ulps of 1."""
    rng = RenderRange(8, -1.0, 1.0)
    expected = (2 / 255) / 2 * (1 + 1e-4) + 8 * 2.0**-23
    assert half_step_bound(rng) == pytest.approx(expected, rel=1e-12)


def test_cancelled_run_does_not_poison_the_next(tmp_path: Path) -> None:
    """A set token stops that run only; each run gets its own token."""
    img = np.random.default_rng(5).normal(size=(32, 40)).astype(F32)
    src = write_mrc(tmp_path / "a.mrc", img)
    cancel = Cancel()
    cancel.set(15)
    with pytest.raises(Interrupted):
        compress_file(src, tmp_path / "a.hdf", bits=8, cancel=cancel)
    assert not (tmp_path / "a.hdf").exists()
    compress_file(src, tmp_path / "a.hdf", bits=8)
    (back,) = e2compress.read_images(tmp_path / "a.hdf")
    assert np.abs(back - img).max() <= half_step_bound(
        e2compress.open(tmp_path / "a.hdf").render_range(0) or RenderRange(8, 0, 1)
    )


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"bits": 5.5}, "bits must be"),
        ({"bits": 1}, "bits must be"),
        ({"bits": True}, "bits must be"),
        ({"threads": 0}, "threads must be"),
        ({"threads": 2.0}, "threads must be"),
        ({"level": 10}, "level must be"),
        ({"value_range": (1.0, 1.0)}, "value_range needs"),
        ({"nooutliers": True, "sigrange": (2.0, 2.0)}, "only one of"),
    ],
)
def test_library_rejects_impossible_options(
    tmp_path: Path, kwargs: dict[str, object], text: str
) -> None:
    src = write_mrc(tmp_path / "a.mrc", np.zeros((4, 4), dtype=F32))
    with pytest.raises(e2compress.E2CompressError, match=text):
        compress_file(src, tmp_path / "a.hdf", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "a.hdf").exists()


def test_blocks_in_flight_are_bounded_by_memory_not_threads() -> None:
    """--threads 32 on a movie held 33 blocks (520 MB measured); the window is now set by
    a memory budget: at most MEMORY_BUDGET of tasks, whatever the thread count."""
    from e2compress.executor import MEMORY_BUDGET, TASK_BYTES, in_flight

    assert in_flight(1) == 2
    assert in_flight(2) == 3
    for width in (8, 32, 256):
        assert in_flight(width) * TASK_BYTES <= MEMORY_BUDGET
    assert in_flight(256, task_bytes=1 << 20) == min(257, MEMORY_BUDGET >> 20)


def test_bounded_never_holds_more_than_its_window() -> None:
    """Results are consumed in order while at most ``window`` tasks are outstanding."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from e2compress.executor import bounded

    lock = threading.Lock()
    live = [0, 0]  # outstanding now, most ever

    def task(k: int) -> int:
        with lock:
            live[0] += 1
            live[1] = max(live[1], live[0])
        return k

    with ThreadPoolExecutor(max_workers=32) as pool:
        out = []
        for k in bounded(pool, task, range(200), window=5):
            with lock:
                live[0] -= 1
            out.append(k)
    assert out == list(range(200))
    assert live[1] <= 5


def test_compressed_input_is_decompressed_beside_the_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A .bz2 movie is streamed into a nameless scratch file in the output directory
    (where there is room for the output), not into the system temp directory."""
    import bz2
    import tempfile

    from helpers import DATA

    src = tmp_path / "in" / "m.map.bz2"
    src.parent.mkdir()
    src.write_bytes(bz2.compress((DATA / "EMD-3197.map").read_bytes()))
    out = tmp_path / "out"
    out.mkdir()
    made: list[str] = []
    real = tempfile.TemporaryFile

    def spy(*args: object, **kwargs: object) -> object:
        made.append(str(kwargs.get("dir")))
        return real(*args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(tempfile, "TemporaryFile", spy)
    compress_file(src, out / "m.hdf", bits=0)
    assert made == [str(out)]
    assert sorted(p.name for p in out.iterdir()) == ["m.hdf"]
    (back,) = e2compress.read_images(out / "m.hdf")
    (orig,) = e2compress.read_images(DATA / "EMD-3197.map")
    assert np.array_equal(back, orig)


# ------------------------------------------------ the written file, checked without --verify


def _movie(tmp_path: Path) -> tuple[Path, np.ndarray]:
    img = np.random.default_rng(8).normal(size=(3, 200, 64)).astype(F32)
    return write_mrc(tmp_path / "m.mrc", img), img


def test_a_chunk_never_written_fails_the_file_without_verify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unwritten chunk reads back as zeros with no HDF5 error: the fresh read-back of
    the file's layout after writing must catch it, with --verify off."""
    src, _ = _movie(tmp_path)
    real = encode.Encoder.encode

    def drop_last_chunk(self: object, *args: object, **kwargs: object) -> object:
        enc = real(self, *args, **kwargs)  # type: ignore[arg-type]
        enc.chunks.pop()
        return enc

    monkeypatch.setattr(encode.Encoder, "encode", drop_last_chunk)
    with pytest.raises(VerificationError, match="chunks missing"):
        compress_file(src, tmp_path / "m.hdf", bits=8, verify=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mrc"]


def test_a_stored_mapping_other_than_the_one_used_fails_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, _ = _movie(tmp_path)
    real = layout.image_header

    def wrong_max(*args: object, **kwargs: object) -> dict[str, object]:
        header = real(*args, **kwargs)  # type: ignore[arg-type]
        header["stored_rendermax"] = F32(header["stored_rendermax"]) * F32(2)
        return header

    monkeypatch.setattr(layout, "image_header", wrong_max)
    with pytest.raises(VerificationError, match="stored mapping"):
        compress_file(src, tmp_path / "m.hdf", bits=8, verify=False)
    assert not (tmp_path / "m.hdf").exists()


def test_check_complete_counts_images_against_the_source(tmp_path: Path) -> None:
    from e2compress.verify import check_complete

    stack = np.random.default_rng(9).normal(size=(70, 16, 16)).astype(F32)
    src = write_mrc(tmp_path / "s.mrcs", stack)
    report = compress_file(src, tmp_path / "s.hdf", bits=6)
    check_complete(tmp_path / "s.hdf", report.images, 70)  # 64 sampled of 70: passes
    with pytest.raises(VerificationError, match="holds 70 images"):
        check_complete(tmp_path / "s.hdf", report.images, 71)
