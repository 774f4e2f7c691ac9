"""Exit status 0 must mean every frame is in the output and decodes right: a source that
changes during the run, symbolic and hard links, --skip-existing records, write-protected
outputs, in-place results that would grow, outputs that are another kind of file, and
recompressing already quantised data.

Truth: the arrays written to the source files, decoded independently with plain h5py
(``eman_decode``), and file bytes for files that must not be touched at all.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import e2compress
from e2compress import InputError, OutputError, compress_file, pipeline
from e2compress.options import Options
from e2compress.outputs import output_is_complete
from e2compress.readers import HdfSource, MrcSource
from helpers import (
    assert_file_within_half_step,
    assert_within_half_step,
    eman2_home,
    eman2_read,
    eman_decode,
    listing,
    run_cli,
    temporaries,
    write_mrc,
)

F32 = np.float32
RECORD = "e2compress."  # prefix of the root-group attributes that record the source
CHANGED = "changed while it was being compressed"


def image(seed: int, shape: tuple[int, ...] = (40, 56)) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 10 - 3).astype(F32)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def decoded(path: Path) -> list[np.ndarray]:
    return [values for values, _ in eman_decode(path)]


def stored_bits(path: Path) -> list[int]:
    return [m[0] if m else 0 for _, m in eman_decode(path)]


def assert_close(path: Path, originals: list[np.ndarray], bits: int) -> None:
    """Every image of ``path`` within half a step of ``originals`` (range = data range)."""
    assert_file_within_half_step(path, originals, bits=bits, clamped=None)


def compressed_hdf(d: Path, name: str, data: np.ndarray, bits: int) -> Path:
    """An .hdf written by e2compress at ``bits`` (its staging MRC removed)."""
    staging = write_mrc(d / f"{name}.stage.mrc", data)
    out = d / f"{name}.hdf"
    compress_file(staging, out, bits=bits, threads=1)
    staging.unlink()
    return out


# --------------------------------------------------------------------------- 1. source changes


def _append(path: Path) -> None:
    with open(path, "ab") as fh:
        fh.write(b"\0" * 4096)


def _rewrite_keeping_size_and_mtime(path: Path) -> None:
    """Same size, same mtime (restored as ``cp -p`` would): only the change time moves."""
    before = path.stat()
    raw = bytearray(path.read_bytes())
    raw[-64:] = bytes(64)
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    for _ in range(2000):  # the change time has the kernel's coarse clock granularity
        if path.stat().st_ctime_ns != before.st_ctime_ns:
            break
        time.sleep(0.001)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_ino,
    )


def _replace_by_another(path: Path) -> None:
    """A new file renamed over the source (what rsync and most writers do)."""
    fresh = path.with_name("fresh.tmp")
    shutil.copyfile(path, fresh)
    os.replace(fresh, path)


CHANGES = {
    "append": _append,
    "same_size_and_mtime": _rewrite_keeping_size_and_mtime,
    "renamed_over": _replace_by_another,
}


@pytest.mark.parametrize("verify", [False, True])
@pytest.mark.parametrize("change", sorted(CHANGES))
def test_source_changed_while_encoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str, verify: bool
) -> None:
    """The source changes after its first block was read: error, nothing written."""
    src = write_mrc(tmp_path / "a.mrc", image(1, (3, 40, 56)))
    real_read = MrcSource.read
    done: list[bool] = []

    def read_then_change(self: MrcSource, *args: Any) -> np.ndarray:
        data = real_read(self, *args)
        if not done:
            done.append(True)
            CHANGES[change](src)
        return data

    monkeypatch.setattr(MrcSource, "read", read_then_change)
    with pytest.raises(InputError, match=CHANGED) as err:
        compress_file(src, bits=5, threads=1, verify=verify)
    assert err.value.path == str(src)
    assert done
    assert listing(tmp_path) == {"a.mrc"}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_source_changed_during_verification(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """--verify reads the source again: a change made while it runs is caught too."""
    src = write_mrc(tmp_path / "a.mrc", image(2))
    real_verify = pipeline.verify_output
    calls: list[int] = []

    def change_then_verify(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        CHANGES[change](src)
        real_verify(*args, **kwargs)

    monkeypatch.setattr(pipeline, "verify_output", change_then_verify)
    with pytest.raises(InputError, match=CHANGED):
        compress_file(src, bits=5, threads=1, verify=True)
    assert calls == [1]
    assert listing(tmp_path) == {"a.mrc"}


def test_source_changed_just_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change after the last read (while the output is flushed to disk) is caught by
    the check just before the rename."""
    src = write_mrc(tmp_path / "a.mrc", image(3))
    real_fsync = os.fsync
    calls: list[int] = []

    def change_then_fsync(fd: int) -> None:
        if not calls:
            _append(src)
        calls.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", change_then_fsync)
    with pytest.raises(InputError, match=CHANGED):
        compress_file(src, bits=5, threads=1, verify=False)
    assert calls
    assert listing(tmp_path) == {"a.mrc"}


def test_in_place_source_changed_is_not_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An .hdf being recompressed in place that someone rewrites meanwhile is left with
    their content, not ours."""
    hdf = compressed_hdf(tmp_path, "v", image(4, (3, 40, 56)), 10)
    real_read = HdfSource.read
    theirs: list[str] = []

    def read_then_append(self: HdfSource, *args: Any) -> np.ndarray:
        data = real_read(self, *args)
        if not theirs:
            _append(hdf)
            theirs.append(sha(hdf))
        return data

    monkeypatch.setattr(HdfSource, "read", read_then_append)
    with pytest.raises(InputError, match=CHANGED):
        compress_file(hdf, bits=5, threads=1)
    assert sha(hdf) == theirs[0]
    assert listing(tmp_path) == {"v.hdf"}


def test_in_place_untouched_passes_both_checks(tmp_path: Path) -> None:
    data = image(5, (2, 40, 56))
    hdf = compressed_hdf(tmp_path, "v", data, 10)
    ten = decoded(hdf)
    report = compress_file(hdf, bits=5, threads=1)
    assert report.verified
    assert stored_bits(hdf) == [5]
    assert_close(hdf, [ten[0].reshape(data.shape)], 5)
    assert listing(tmp_path) == {"v.hdf"}


def test_cli_source_changed_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    a = write_mrc(tmp_path / "a.mrc", image(6))
    b_img = image(7)
    b = write_mrc(tmp_path / "b.mrc", b_img)
    real_read = MrcSource.read
    done: list[bool] = []

    def read_then_change(self: MrcSource, *args: Any) -> np.ndarray:
        data = real_read(self, *args)
        if self.path == a and not done:
            done.append(True)
            _append(a)
        return data

    monkeypatch.setattr(MrcSource, "read", read_then_change)
    rc, _, err = run_cli(capsys, "--bits", "5", "--threads", "1", a, b)
    assert rc == 1
    lines = [ln for ln in err.splitlines() if CHANGED in ln]
    assert len(lines) == 1, err
    assert str(a) in lines[0]
    assert listing(tmp_path) == {"a.mrc", "b.mrc", "b.hdf"}
    assert_close(tmp_path / "b.hdf", [b_img], 5)


# --------------------------------------------------------------------------- 2. links


def test_in_place_through_symlink_replaces_the_target(tmp_path: Path) -> None:
    store = tmp_path / "store"
    view = tmp_path / "view"
    store.mkdir()
    view.mkdir()
    data = image(10)
    real = compressed_hdf(store, "v", data, 10)
    ten = decoded(real)[0]
    link = view / "v.hdf"
    link.symlink_to(real)
    report = compress_file(link, bits=5, threads=1)
    assert report.output == str(link)
    assert link.is_symlink()
    assert os.readlink(link) == str(real)
    assert stored_bits(real) == [5]
    assert_close(real, [ten], 5)
    assert listing(store) == {"v.hdf"}
    assert listing(view) == {"v.hdf"}


def test_cli_in_place_through_symlink(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    real = compressed_hdf(tmp_path, "real", image(11), 10)
    link = tmp_path / "link.hdf"
    link.symlink_to(real.name)  # relative link
    rc, _, err = run_cli(capsys, "--bits", "5", link)
    assert rc == 0, err
    assert link.is_symlink()
    assert os.readlink(link) == "real.hdf"
    assert stored_bits(real) == [5]
    assert listing(tmp_path) == {"real.hdf", "link.hdf"}


def test_outpath_symlink_output_replaces_its_target(tmp_path: Path) -> None:
    """An existing output that is a symbolic link (e.g. into a bigger disk): the file it
    points to is replaced and the link kept."""
    data = image(12)
    src = write_mrc(tmp_path / "a.mrc", data)
    (tmp_path / "out").mkdir()
    (tmp_path / "disk").mkdir()
    real = compressed_hdf(tmp_path / "disk", "a", image(13), 8)
    link = tmp_path / "out" / "a.hdf"
    link.symlink_to(real)
    compress_file(src, link, bits=5, threads=1)
    assert link.is_symlink()
    assert_close(real, [data], 5)
    assert listing(tmp_path / "disk") == {"a.hdf"}


def test_dangling_symlink_output_is_refused(tmp_path: Path) -> None:
    src = write_mrc(tmp_path / "a.mrc", image(14))
    link = tmp_path / "a.hdf"
    link.symlink_to(tmp_path / "gone" / "a.hdf")
    with pytest.raises(OutputError, match="symbolic link to a missing file"):
        compress_file(src, bits=5, threads=1)
    assert link.is_symlink()
    assert listing(tmp_path) == {"a.mrc", "a.hdf"}


def test_hard_linked_in_place_is_refused_unless_forced(tmp_path: Path) -> None:
    hdf = compressed_hdf(tmp_path, "v", image(15), 10)
    other = tmp_path / "also.hdf"
    os.link(hdf, other)
    before = sha(hdf)
    with pytest.raises(OutputError, match="2 hard links"):
        compress_file(hdf, bits=5, threads=1)
    assert sha(hdf) == sha(other) == before
    assert os.path.samefile(hdf, other)

    report = compress_file(hdf, bits=5, threads=1, force=True)
    assert stored_bits(hdf) == [5]
    assert stored_bits(other) == [10]  # the other name keeps the old content
    assert sha(other) == before
    assert any("hard links" in w and str(hdf) in w for w in report.warnings)
    assert listing(tmp_path) == {"v.hdf", "also.hdf"}


def test_hard_linked_outpath_output_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_mrc(tmp_path / "a.mrc", image(16))
    out = tmp_path / "out"
    out.mkdir()
    old = compressed_hdf(out, "a", image(17), 8)
    os.link(old, tmp_path / "backup.hdf")
    before = sha(old)
    rc, _, err = run_cli(capsys, "--bits", "5", "--outpath", out, src)
    assert rc == 1
    assert "hard links" in err
    assert str(old) in err
    assert sha(old) == before
    rc, _, err = run_cli(capsys, "--bits", "5", "--force", "--outpath", out, src)
    assert rc == 0, err
    assert stored_bits(old) == [5]
    assert sha(tmp_path / "backup.hdf") == before


# --------------------------------------------------------------------------- 3. --skip-existing


def _skip_run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str]:
    rc, out, err = run_cli(capsys, "-v", *argv)
    assert rc == 0, err
    return rc, out


def test_skip_existing_redoes_output_of_a_rewritten_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_mrc(tmp_path / "a.mrc", image(20))
    assert run_cli(capsys, "--bits", "5", src)[0] == 0
    first = (tmp_path / "a.hdf").stat()
    new = image(21)  # same shape, new values: only the content says it is stale
    write_mrc(src, new)
    os.utime(src, ns=(first.st_mtime_ns + 10**9, first.st_mtime_ns + 10**9))
    _, out = _skip_run(capsys, "--bits", "5", "--skip-existing", src)
    assert "Skipping" not in out
    assert_close(tmp_path / "a.hdf", [new], 5)
    _, out = _skip_run(capsys, "--bits", "5", "--skip-existing", src)
    assert "Skipping" in out


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("--bits", "5"), ("--bits", "8")),
        (("--bits", "5"), ("--bits", "5", "--range", "-1,4")),
        (("--bits", "5", "--range", "-1,4"), ("--bits", "5", "--range", "-1,5")),
        (("--bits", "5", "--sigrange", "2,2"), ("--bits", "5", "--nooutliers")),
        (("--bits", "5"), ("--bits", "0")),
    ],
)
def test_skip_existing_redoes_output_made_with_other_options(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    first: tuple[str, ...],
    second: tuple[str, ...],
) -> None:
    data = image(22)
    src = write_mrc(tmp_path / "a.mrc", data)
    assert run_cli(capsys, *first, src)[0] == 0
    _, out = _skip_run(capsys, *second, "--skip-existing", src)
    assert "Skipping" not in out
    bits = int(second[1])
    assert stored_bits(tmp_path / "a.hdf") == [bits]
    if bits == 0:
        np.testing.assert_array_equal(decoded(tmp_path / "a.hdf")[0], data)
    # what the second options write on their own (the first run wrote something else)
    (tmp_path / "fresh").mkdir()
    assert run_cli(capsys, *second, "--outpath", tmp_path / "fresh", src)[0] == 0
    redone, fresh = (eman_decode(d / "a.hdf")[0] for d in (tmp_path, tmp_path / "fresh"))
    assert redone[1] == fresh[1]
    np.testing.assert_array_equal(redone[0], fresh[0])
    (tmp_path / "first").mkdir()
    assert run_cli(capsys, *first, "--outpath", tmp_path / "first", src)[0] == 0
    assert eman_decode(tmp_path / "first" / "a.hdf")[0][1] != fresh[1]
    # the same command again is skipped, and the output is left alone
    before = (tmp_path / "a.hdf").stat()
    _, out = _skip_run(capsys, *second, "--skip-existing", src)
    assert "Skipping" in out
    after = (tmp_path / "a.hdf").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_skip_existing_needs_the_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An output without the record (e.g. written by EMAN2 or an older e2compress), or
    whose record names another source, is redone."""
    data = image(23)
    src = write_mrc(tmp_path / "a.mrc", data)
    assert run_cli(capsys, "--bits", "5", src)[0] == 0
    out_file = tmp_path / "a.hdf"
    opts = Options(bits=5)
    assert output_is_complete(src, out_file, opts)
    with h5py.File(out_file, "r+") as f:
        f.attrs[RECORD + "source_name"] = np.bytes_(b"b.mrc")
    assert not output_is_complete(src, out_file, opts)
    with h5py.File(out_file, "r+") as f:
        for key in [k for k in f.attrs if k.startswith(RECORD)]:
            del f.attrs[key]
    assert not output_is_complete(src, out_file, opts)
    _, out = _skip_run(capsys, "--bits", "5", "--skip-existing", src)
    assert "Skipping" not in out
    assert output_is_complete(src, out_file, opts)


def test_skip_existing_checks_every_image(tmp_path: Path) -> None:
    """A record that matches is not enough: an image lost or cut short is redone."""
    stack = [image(24 + k) for k in range(3)]
    src = write_mrc(tmp_path / "s.mrcs", np.stack(stack))
    out_file = tmp_path / "s.hdf"
    compress_file(src, out_file, bits=5, threads=1)
    opts = Options(bits=5)
    assert output_is_complete(src, out_file, opts)
    assert not output_is_complete(src, out_file, Options(bits=6))
    with h5py.File(out_file, "r+") as f:  # one image's data never written
        ds = f["MDF/images/1/image"]
        del f["MDF/images/1/image"]
        f["MDF/images/1"].create_dataset("image", shape=ds.shape, dtype=ds.dtype, chunks=True)
    assert not output_is_complete(src, out_file, opts)
    compress_file(src, out_file, bits=5, threads=1)
    with h5py.File(out_file, "r+") as f:  # the last image dropped (and counted out)
        del f["MDF/images/2"]
        f["MDF/images"].attrs["imageid_max"] = np.array([1], dtype=np.int32)
    assert not output_is_complete(src, out_file, opts)


def test_skip_existing_in_place_rule(tmp_path: Path) -> None:
    """In place: skipped when every image is already deflated at the requested bits
    (and the record, if any, has the same range option)."""
    hdf = compressed_hdf(tmp_path, "v", image(27), 5)
    assert output_is_complete(hdf, hdf, Options(bits=5))
    assert not output_is_complete(hdf, hdf, Options(bits=4))
    assert not output_is_complete(hdf, hdf, Options(bits=5, nooutliers=True))
    # an uncompressed float EMAN2 file (contiguous, no deflate) is not "done" at bits 0
    raw = tmp_path / "raw.hdf"
    ramp = np.tile(np.arange(128, dtype=F32) / 4, (128, 1))  # deflates well
    with h5py.File(raw, "w") as f:
        images = f.create_group("MDF/images")
        images.attrs["imageid_max"] = np.array([0], dtype=np.int32)
        images.create_group("0").create_dataset("image", data=ramp)
    assert not output_is_complete(raw, raw, Options(bits=0))
    compress_file(raw, bits=0, threads=1)
    assert output_is_complete(raw, raw, Options(bits=0))
    np.testing.assert_array_equal(decoded(raw)[0], ramp)


def test_eman2_reads_the_record_file_identically(tmp_path: Path) -> None:
    """EMAN2 ignores the root-group record: a file with it reads exactly as without."""
    eman2_home()
    originals = [image(29), image(30)]
    src = write_mrc(tmp_path / "s.mrcs", np.stack(originals))
    (tmp_path / "with").mkdir()
    (tmp_path / "without").mkdir()
    compress_file(src, tmp_path / "with" / "s.hdf", bits=6, threads=1)
    shutil.copyfile(tmp_path / "with" / "s.hdf", tmp_path / "without" / "s.hdf")
    with h5py.File(tmp_path / "without" / "s.hdf", "r+") as f:
        assert len(f.attrs) > 0
        for key in list(f.attrs):
            assert key.startswith(RECORD)
            del f.attrs[key]
    reads = {
        kind: eman2_read(tmp_path / kind / "s.hdf", tmp_path / kind) for kind in ("with", "without")
    }
    np.testing.assert_array_equal(reads["with"][0], reads["without"][0])
    for header in (*reads["with"][1], *reads["without"][1]):  # EMAN2 sets it to the path read
        assert header.pop("source_path").endswith("s.hdf")
    assert reads["with"][1] == reads["without"][1]
    assert len(reads["with"][1]) == 2
    mappings = [m for _, m in eman_decode(tmp_path / "with" / "s.hdf")]
    for k, mapping in enumerate(mappings):  # and what EMAN2 read is the data
        assert mapping is not None
        assert_within_half_step(originals[k], reads["with"][0][k], mapping)


# --------------------------------------------------------------------------- 4. write-protected


def test_write_protected_in_place_is_refused_unless_forced(tmp_path: Path) -> None:
    hdf = compressed_hdf(tmp_path, "v", image(31), 10)
    hdf.chmod(0o444)
    before = sha(hdf)
    with pytest.raises(OutputError, match=r"write-protected \(mode 0444\)"):
        compress_file(hdf, bits=5, threads=1)
    assert sha(hdf) == before
    assert listing(tmp_path) == {"v.hdf"}
    compress_file(hdf, bits=5, threads=1, force=True)
    assert stored_bits(hdf) == [5]
    assert hdf.stat().st_mode & 0o777 == 0o444  # still protected
    assert listing(tmp_path) == {"v.hdf"}


def test_write_protected_output_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = image(32)
    src = write_mrc(tmp_path / "a.mrc", data)
    old = compressed_hdf(tmp_path, "a", image(33), 8)
    old.chmod(0o400)
    before = sha(old)
    rc, _, err = run_cli(capsys, "--bits", "5", src)
    assert rc == 1
    assert "write-protected" in err
    assert "--force replaces it" in err  # the CLI names its flag for force=True
    assert str(old) in err
    assert sha(old) == before
    rc, _, err = run_cli(capsys, "--bits", "5", "--force", src)
    assert rc == 0, err
    assert_close(old, [data], 5)


# --------------------------------------------------------------------------- 5. larger output


def test_in_place_result_larger_keeps_the_original(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """5-bit noise stored again as float32 would grow: the file is kept, exit 0, and
    the report says why; --force replaces it."""
    hdf = compressed_hdf(tmp_path, "v", image(34, (64, 64)), 5)
    before = sha(hdf)
    size = hdf.stat().st_size
    report = compress_file(hdf, bits=0, threads=1)
    assert sha(hdf) == before
    assert report.bytes_out == report.bytes_in == size
    assert report.images == []
    assert len(report.warnings) == 2
    assert (
        report.warnings[0] == f"{hdf}: image stored at 5 bits; storing it as float32 gains nothing"
    )
    grown = re.fullmatch(
        rf"{re.escape(str(hdf))}: kept as it was: the new file would be larger "
        rf"\((\d+) bytes, now {size}\)",
        report.warnings[1],
    )
    assert grown is not None, report.warnings
    assert int(grown[1]) > size
    assert listing(tmp_path) == {"v.hdf"}

    rc, _, err = run_cli(capsys, "--bits", "0", hdf)
    assert rc == 0, err
    assert sha(hdf) == before

    five = e2compress.read_images(hdf)[0]  # exact values, not EMAN2's float32 formula
    compress_file(hdf, bits=0, threads=1, force=True)
    assert stored_bits(hdf) == [0]
    assert hdf.stat().st_size > size
    np.testing.assert_array_equal(decoded(hdf)[0], five)


# --------------------------------------------------------------------------- 6. other kinds


def test_output_that_is_the_mrc_input_is_an_error(tmp_path: Path) -> None:
    src = write_mrc(tmp_path / "x.mrc", image(35))
    before = sha(src)
    with pytest.raises(OutputError, match="would replace this MRC input"):
        compress_file(src, src, bits=5, threads=1)
    assert sha(src) == before
    with pytest.raises(OutputError, match="would replace this MRC input"):
        compress_file(src, src, bits=5, threads=1, force=True)
    assert sha(src) == before
    assert listing(tmp_path) == {"x.mrc"}


def test_existing_output_of_another_kind_is_refused(tmp_path: Path) -> None:
    src = write_mrc(tmp_path / "b.mrc", image(36))
    other = write_mrc(tmp_path / "a.mrc", image(37))
    notes = tmp_path / "notes.hdf"
    notes.write_text("HDF4 or anything else that is not HDF5\n")
    before = {p: sha(p) for p in (other, notes)}
    for dst in (other, notes):
        with pytest.raises(OutputError, match="not an HDF5 file"):
            compress_file(src, dst, bits=5, threads=1)
    fifo = tmp_path / "pipe.hdf"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="not a regular file"):
        compress_file(src, fifo, bits=5, threads=1)
    assert {p: sha(p) for p in (other, notes)} == before
    assert fifo.is_fifo()
    empty = tmp_path / "empty.hdf"
    empty.touch()  # nothing to lose: replaced
    compress_file(src, empty, bits=5, threads=1)
    assert stored_bits(empty) == [5]
    assert temporaries(tmp_path) == []


# --------------------------------------------------------------------------- 7. requantising


def test_more_bits_than_stored_warns(tmp_path: Path) -> None:
    hdf = compressed_hdf(tmp_path, "v", image(38), 5)
    report = compress_file(hdf, tmp_path / "ten.hdf", bits=10, threads=1)
    assert report.warnings == [
        f"{hdf}: image stored at 5 bits; storing it at 10 bits gains nothing"
    ]
    assert compress_file(hdf, tmp_path / "four.hdf", bits=4, threads=1).warnings == []
    assert compress_file(hdf, tmp_path / "five.hdf", bits=5, threads=1).warnings == []
    stack = tmp_path / "s.mrcs"
    write_mrc(stack, np.stack([image(39), image(40), image(41)]))
    s6 = tmp_path / "s6.hdf"
    compress_file(stack, s6, bits=6, threads=1)
    report = compress_file(s6, tmp_path / "s0.hdf", bits=0, threads=1)
    assert report.warnings == [
        f"{s6}: 3 of 3 images stored at 6 bits; storing them as float32 gains nothing"
    ]


def test_threaded_change_is_caught(tmp_path: Path) -> None:
    """A writer in another thread appending to a movie while it is compressed."""
    frames = np.random.default_rng(42).standard_normal((16, 512, 512), dtype=F32)
    src = write_mrc(tmp_path / "m.mrc", frames)
    started = threading.Event()
    appended = threading.Event()
    real_read = MrcSource.read

    def read(self: MrcSource, *args: Any) -> np.ndarray:
        started.set()
        appended.wait(60)  # the first reads see the file after the writer is done
        return real_read(self, *args)

    def writer() -> None:
        started.wait(60)
        _append(src)
        appended.set()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(MrcSource, "read", read)
            with pytest.raises(InputError, match=CHANGED):
                compress_file(src, bits=5, threads=2)
    finally:
        thread.join(60)
    assert listing(tmp_path) == {"m.mrc"}


def test_foreign_hdf5_output_is_not_replaced(tmp_path: Path) -> None:
    """An existing HDF5 file that holds no EMAN2 images is someone else's data."""
    src = write_mrc(tmp_path / "data.mrc", np.arange(64, dtype=np.float32).reshape(8, 8))
    with h5py.File(tmp_path / "data.hdf", "w") as f:
        f["results"] = np.arange(10)
    with pytest.raises(OutputError, match="no EMAN2 images"):
        compress_file(src, bits=8)
    with h5py.File(tmp_path / "data.hdf", "r") as f:
        assert list(f["results"][...]) == list(range(10))
    compress_file(src, bits=8, force=True)
    (back,) = e2compress.read_images(tmp_path / "data.hdf")
    assert np.array_equal(back, np.arange(64, dtype=np.float32).reshape(8, 8))
