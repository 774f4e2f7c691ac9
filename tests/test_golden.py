"""Golden outputs (numcodecs' habit): HDF files e2compress wrote from the bundled inputs,
checked in under tests/data/golden (made by its make_golden.py), checked on every run.

(a) each decodes, through plain h5py with EMAN2's formula (helpers.eman_decode) and
through our reader, to the SOURCE image in its own dtype within half a step; (b) its
stored attributes (range, bits, dtype, chunking, filters) are what the spec's rules give,
computed here by hand; (c) compressing the source again today gives exactly the golden's
codes, ranges and attributes, so an accidental change of the output fails; (d) with
../shared, its ranges are the ones real EMAN2 stored for the same file and options.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import e2compress
from helpers import (
    DATA,
    F32,
    assert_file_within_half_step,
    assert_within_half_step,
    eman2_read,
    eman_decode,
    formula_image,
    spec_nooutliers_limits,
    spec_render_range,
    true_images,
)

GOLDEN = DATA / "golden"
_spec = importlib.util.spec_from_file_location("make_golden", GOLDEN / "make_golden.py")
assert _spec is not None
assert _spec.loader is not None
make_golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_golden)

CASES = [
    pytest.param(source, case, id=make_golden.golden_name(source, case))
    for source, case in make_golden.all_cases()
]
# the option sets real EMAN2 was run with in ../shared/data/eman2_written/ranges.json
EMAN2_RUNS = {"bits4", "bits5", "bits10", "bits16", "bits5.nooutliers", "bits8.nooutliers"}
STACK_CHUNK_BYTES = 1 << 20  # docs/format.md: a stack image of at most 1 MiB is one chunk
CHUNK_ROWS = 64  # docs/format.md: chunks of 64 rows otherwise
VOLUME_CHUNK_BYTES = 1 << 20  # docs/format.md: a volume's chunk holds whole sections to 1 MiB
DEFLATE, SHUFFLE, FLETCHER32 = 1, 2, 3  # HDF5's built-in filter ids
VARYING = ("e2compress.source_mtime_ns",)  # the bundled input's modification time


def golden(source: str, case: str) -> Path:
    return GOLDEN / make_golden.golden_name(source, case)


def originals(source: str) -> list[np.ndarray]:
    """The source images, read independently of e2compress, in their own dtype."""
    if source == "eman2/stack.hed":  # tests/data/README.md: image k is a known formula
        return [formula_image(k, (12, 16)) for k in range(3)]
    return list(true_images(DATA / source))


def requested_bits(case: str) -> int | None:
    bits = make_golden.options_of(case)["bits"]
    return None if bits == "auto" else int(bits)


def stored_bits(group: h5py.Group) -> int:
    return int(np.ravel(group.attrs.get("EMAN.stored_renderbits", [0]))[0])


def test_the_golden_set_is_complete() -> None:
    """Every case has its file, and no file is left over from an older set."""
    made = {make_golden.golden_name(s, c) for s, c in make_golden.all_cases()}
    assert {p.name for p in GOLDEN.glob("*.hdf")} == made
    assert sum(p.stat().st_size for p in GOLDEN.glob("*.hdf")) < 2_000_000


@pytest.mark.parametrize(("source", "case"), CASES)
def test_golden_decodes_to_the_source(source: str, case: str) -> None:
    """(a) plain h5py + EMAN2's formula, and our reader: the source within half a step."""
    path, truth = golden(source, case), originals(source)
    nooutliers = "nooutliers" in case
    mappings = assert_file_within_half_step(
        path, truth, bits=requested_bits(case), clamped=None if nooutliers else 0
    )
    ours = e2compress.read_images(path)
    assert len(ours) == len(truth)
    for got, orig, mapping in zip(ours, truth, mappings, strict=True):
        if mapping is None:
            assert np.array_equal(got.reshape(orig.shape), orig.astype(F32))
        else:
            assert_within_half_step(orig, got, mapping)
    if nooutliers:  # the tails were clamped, at most max(n // 20000, 8) pixels a side
        for orig, mapping in zip(truth, mappings, strict=True):
            assert mapping is not None
            assert 0 < mapping[3] <= 2 * max(orig.size // 20000, 8)


@pytest.mark.parametrize(("source", "case"), CASES)
def test_golden_attributes_follow_the_spec(source: str, case: str) -> None:
    """(b) range, bits, dtype, chunks and filters, each computed here from the rules."""
    truth = originals(source)
    bits_asked = requested_bits(case)
    stacked = len(truth) > 1
    with h5py.File(golden(source, case), "r") as f:
        images = f["MDF/images"]
        assert int(np.ravel(images.attrs["imageid_max"])[0]) == len(truth) - 1
        for i, orig in enumerate(truth):
            group = images[str(i)]
            ds = group["image"]
            bits = stored_bits(group)
            if bits_asked is None:
                assert 2 <= bits <= 16
            else:
                assert bits == bits_asked
            dtype = np.dtype("<f4") if bits == 0 else np.dtype("u1" if bits <= 8 else "<u2")
            assert ds.dtype == dtype
            assert ds.shape == orig.shape
            ny, nx = orig.shape[-2:]
            itemsize = 4 if bits_asked is None else dtype.itemsize  # auto: float32 assumed
            section = ny * nx * itemsize
            rows = ny if stacked and section <= STACK_CHUNK_BYTES else CHUNK_ROWS
            rows = min(rows, ny)
            if orig.ndim == 3 and section <= VOLUME_CHUNK_BYTES:  # whole sections, to 1 MiB
                nz = orig.shape[0]
                assert ds.chunks == (min(nz, VOLUME_CHUNK_BYTES // section), ny, nx)
            else:
                assert ds.chunks == ((1, rows, nx) if orig.ndim == 3 else (rows, nx))
            dcpl = ds.id.get_create_plist()
            filters = [dcpl.get_filter(k)[0] for k in range(dcpl.get_nfilters())]
            shuffled = [SHUFFLE] if dtype.itemsize > 1 else []
            assert filters == [*shuffled, DEFLATE, FLETCHER32]  # built in: no plugin
            if bits == 0:
                assert not any(k.startswith("EMAN.stored_") for k in group.attrs)
                continue
            limits = spec_nooutliers_limits(orig) if "nooutliers" in case else None
            rmin, rmax, clamped = spec_render_range(orig, bits, limits)
            stored = [np.ravel(group.attrs[f"EMAN.stored_render{k}"])[0] for k in ("min", "max")]
            assert [a.dtype for a in stored] == [F32, F32]
            assert (float(stored[0]), float(stored[1])) == (rmin, rmax)
            truncated = group.attrs["EMAN.stored_truncated"]
            assert truncated.dtype == np.int32
            assert int(np.ravel(truncated)[0]) == clamped


@pytest.mark.parametrize(("source", "case"), CASES)
def test_real_eman2_reads_the_golden(source: str, case: str, tmp_path: Path) -> None:
    """Real EMAN2 (``$E2C_EMAN2``; skipped without it) reads every golden file as the
    source, within half a step (its float32 decode is inside the rule's slack)."""
    path, truth = golden(source, case), originals(source)
    stack, headers = eman2_read(path, tmp_path)
    assert len(headers) == len(truth)
    values = stack.reshape(len(truth), -1)
    for got, orig, (_, mapping) in zip(values, truth, eman_decode(path), strict=True):
        if mapping is None:
            assert np.array_equal(got.reshape(orig.shape), orig.astype(F32))
        else:
            assert_within_half_step(orig, got.reshape(orig.shape), mapping)


def snapshot(path: Path) -> dict[str, Any]:
    """Every object of ``path``: its attributes (but the input's mtime) and, for datasets,
    dtype, shape, chunks, filters and values."""
    out: dict[str, Any] = {}

    def attrs(obj: Any) -> dict[str, Any]:
        return {k: np.asarray(v).tolist() for k, v in obj.attrs.items() if k not in VARYING}

    def visit(name: str, obj: Any) -> None:
        entry = {"attrs": attrs(obj)}
        if isinstance(obj, h5py.Dataset):
            dcpl = obj.id.get_create_plist()
            entry.update(
                dtype=obj.dtype.str,
                shape=obj.shape,
                chunks=obj.chunks,
                filters=[dcpl.get_filter(k)[:3] for k in range(dcpl.get_nfilters())],
                values=obj[...].tobytes(),
            )
        out[name] = entry

    with h5py.File(path, "r") as f:
        out["/"] = {"attrs": attrs(f)}
        f.visititems(visit)
    return out


@pytest.mark.parametrize(("source", "case"), CASES)
def test_compressing_again_gives_the_golden(source: str, case: str, tmp_path: Path) -> None:
    """(c) today's output: exactly the golden's codes, ranges, attributes and values."""
    again = tmp_path / golden(source, case).name
    e2compress.compress_file(DATA / source, again, threads=1, **make_golden.options_of(case))
    want, got = snapshot(golden(source, case)), snapshot(again)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], f"{name} differs from the golden file"
    for new, old in zip(
        e2compress.read_images(again), e2compress.read_images(golden(source, case)), strict=True
    ):
        assert new.dtype == old.dtype
        assert np.array_equal(new, old)


@pytest.mark.shared
@pytest.mark.parametrize(
    ("source", "case"),
    [p for p in CASES if "/" not in p.values[0] and p.values[1] in EMAN2_RUNS],
)
def test_golden_ranges_are_eman2s(source: str, case: str, ranges_json: dict[str, Any]) -> None:
    """(d) the stored range of every image is the one real EMAN2 stored for the same file
    and options (ranges.json), bit for bit, except where EMAN2 hit its range bug."""
    options = make_golden.options_of(case)
    (run,) = [r for r in ranges_json["runs"] if r["file"] == source and r["options"] == options]
    decoded = eman_decode(golden(source, case))
    assert len(decoded) == len(run["images"])
    compared = 0
    for (_, mapping), theirs in zip(decoded, run["images"], strict=True):
        if theirs["rule"] == "none":  # EMAN2 stored [0, 0] (docs/format.md, difference 1)
            continue
        assert mapping is not None
        bits, rmin, rmax, truncated = mapping
        assert bits == theirs["stored_renderbits"]
        assert float(F32(rmin)).hex() == theirs["stored_rendermin_hex"]
        assert float(F32(rmax)).hex() == theirs["stored_rendermax_hex"]
        assert truncated == theirs["stored_truncated"]
        compared += 1
    assert compared > 0
