"""``--delete-input``: a source goes only with its verified archive and manifest line.

Truth: the source bytes kept by the test before the run (their SHA-256 by hashlib,
their pixels by mrcfile), ``e2compress restore`` writing them back, and the files left
on disk after the process was killed at random moments.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import e2compress
from e2compress.audit import check_archive
from e2compress.deletion import Manifest, delete_source, read_manifest
from e2compress.restore import restore_file
from helpers import DATA, run_cli, write_mrc

MANIFEST = "e2compress-deleted.jsonl"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sources(folder: Path, size: int = 64, frames: int = 2) -> dict[str, bytes]:
    """Two integer MRCs (stored exactly at 8 bits) and two float MRCs (quantised);
    returns their bytes by name."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for k in range(2):
        ints = rng.integers(0, 200, (frames, size, size)).astype(np.int16)
        write_mrc(folder / f"ints{k}.mrc", ints)
        write_mrc(
            folder / f"floats{k}.mrc", rng.normal(size=(frames, size, size)).astype(np.float32)
        )
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_delete_input_deletes_what_is_proven(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    originals = _sources(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    names = sorted(originals)
    rc, stdout, err = run_cli(
        capsys, "--delete-input", "-v", "1", "--bits", "8", "--outpath", out,
        *(tmp_path / "in" / n for n in names),
    )  # fmt: skip
    assert rc == 0, err
    assert err == ""
    assert "4 compressed, 0 failed, 0 skipped; 4 inputs deleted, 0 kept" in stdout
    assert list((tmp_path / "in").iterdir()) == []
    lines = {Path(r["source"]).name: r for r in read_manifest(out / MANIFEST)}
    assert sorted(lines) == names
    for name, data in originals.items():
        archive = out / name.replace(".mrc", ".hdf")
        line = lines[name]
        assert line["source"] == str(tmp_path / "in" / name)
        assert line["source_size"] == len(data)
        assert line["source_sha256"] == hashlib.sha256(data).hexdigest()
        assert line["output"] == str(archive)
        assert line["output_sha256"] == _sha(archive)
        assert line["bits"] == 8
        assert line["other_links"] == 0
        exact = name.startswith("ints")
        assert line["values"] == ("exact" if exact else "within half a step")
        # independent truth: what restore writes, and the values against the original
        (tmp_path / "restored").mkdir(exist_ok=True)
        restored = restore_file(archive, tmp_path / "restored" / name)
        assert restored.byte_identical == exact
        back = restored.path.read_bytes()
        assert back[:1024] == data[:1024]  # the MRC header, always
        assert (back == data) == exact


def test_never_with_dry_run_skip_or_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    originals = _sources(tmp_path / "in")
    src = [tmp_path / "in" / n for n in sorted(originals)]
    out = tmp_path / "out"
    out.mkdir()
    rc, stdout, _ = run_cli(capsys, "--delete-input", "--dry-run", "--outpath", out, *src)
    assert rc == 0
    assert all(p.exists() for p in src)
    assert not (out / MANIFEST).exists()
    # compressed earlier without deleting: a skipped file is never deleted
    rc, _, err = run_cli(capsys, "--bits", "8", "--outpath", out, *src)
    assert rc == 0, err
    rc, stdout, err = run_cli(
        capsys, "--delete-input", "--skip-existing", "--bits", "8", "--outpath", out, *src
    )
    assert rc == 0, err
    assert "0 compressed, 0 failed, 4 skipped; 0 inputs deleted, 0 kept" in stdout
    assert all(p.exists() for p in src)
    # a failed file (cut short) stays, the others go
    bad = tmp_path / "in" / "bad.mrc"
    bad.write_bytes(originals["floats0.mrc"][:-100])
    rc, stdout, err = run_cli(
        capsys, "--delete-input", "--bits", "8", "--outpath", out, bad, src[0]
    )
    assert rc == 1
    assert bad.exists()
    assert not src[0].exists()
    # --no-verify contradicts it: refused before any work
    rc, _, err = run_cli(capsys, "--delete-input", "--no-verify", "--outpath", out, src[1])
    assert rc == 2
    assert "--verify" in err
    assert src[1].exists()


def test_what_is_kept_and_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _sources(tmp_path / "in")
    src = tmp_path / "in" / "ints0.mrc"
    out = tmp_path / "out"
    out.mkdir()
    archive = out / "ints0.hdf"
    e2compress.compress_file(src, archive, bits=8, verify=True)
    with Manifest(tmp_path / "m.jsonl") as manifest:
        # not verified in this run
        d = delete_source(src, archive, manifest, verified=False)
        assert (d.deleted, "not verified" in d.message) == (False, True)
        # the archive replaced in place: nothing else to delete
        d = delete_source(archive, archive, manifest, verified=True)
        assert not d.deleted
        assert "in place" in d.message
        # no header bytes kept: an EMAN2 HDF source (written by h5py here)
        hdf = tmp_path / "in" / "plain.hdf"
        with h5py.File(hdf, "w") as f:
            images = f.create_group("MDF/images")
            images.attrs["imageid_max"] = np.array([0], dtype=np.int32)
            images.create_group("0").create_dataset("image", data=np.ones((8, 8), np.float32))
        e2compress.compress_file(hdf, out / "plain.hdf", bits=8, verify=True)
        d = delete_source(hdf, out / "plain.hdf", manifest, verified=True)
        assert not d.deleted
        assert "header bytes" in d.message
        # an e2compress archive as the source: its archive carries the MRC's header
        # bytes, but no SHA-256 of the HDF file itself
        mapped = tmp_path / "in" / "map.hdf"
        e2compress.compress_file(DATA / "EMD-3001.map", mapped, bits=0)
        e2compress.compress_file(mapped, out / "map.hdf", bits=8, verify=True)
        d = delete_source(mapped, out / "map.hdf", manifest, verified=True)
        assert not d.deleted
        assert "records no SHA-256" in d.message
        # the source changed after it was compressed, same size and time
        data = bytearray(src.read_bytes())
        st = src.stat()
        data[-1] ^= 1
        src.write_bytes(bytes(data))
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
        d = delete_source(src, archive, manifest, verified=True)
        assert not d.deleted
        assert "SHA-256" in d.message
        data[-1] ^= 1
        src.write_bytes(bytes(data))
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
        # an exact archive whose restored bytes do not have the source's SHA-256
        with h5py.File(archive, "r+") as f:
            f.attrs["e2compress.restorable_sha256"] = np.bytes_(b"0" * 64)
        d = delete_source(src, archive, manifest, verified=True)
        assert not d.deleted
        assert "byte for byte" in d.message
    assert src.exists()
    assert hdf.exists()
    assert mapped.exists()
    assert read_manifest(tmp_path / "m.jsonl") == []


def test_links(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A symbolic link: neither name goes. A hard link: the name given goes, the data
    stays under the other name (no space freed), and the manifest says so."""
    originals = _sources(tmp_path / "in")
    folder = tmp_path / "in"
    (folder / "link.mrc").symlink_to("ints0.mrc")
    os.link(folder / "ints1.mrc", folder / "twin.mrc")
    out = tmp_path / "out"
    out.mkdir()
    rc, stdout, err = run_cli(
        capsys, "--delete-input", "-v", "1", "--bits", "8", "--outpath", out,
        "--manifest", tmp_path / "links.jsonl", folder / "link.mrc", folder / "ints1.mrc",
    )  # fmt: skip
    assert rc == 0
    assert "link.mrc: not deleted: it is a symbolic link (to ints0.mrc)" in err
    assert (folder / "link.mrc").is_symlink()
    assert (folder / "ints0.mrc").read_bytes() == originals["ints0.mrc"]
    assert not (folder / "ints1.mrc").exists()
    assert (folder / "twin.mrc").read_bytes() == originals["ints1.mrc"]
    assert (folder / "twin.mrc").stat().st_nlink == 1
    assert not (out / MANIFEST).exists()
    (line,) = read_manifest(tmp_path / "links.jsonl")
    assert line["source"] == str(folder / "ints1.mrc")
    assert line["other_links"] == 1
    deleted = f"{folder / 'ints1.mrc'}: deleted (in {tmp_path / 'links.jsonl'})"
    assert f"{deleted}; 1 other hard link keeps its data (no space freed)" in stdout


def test_manifest_lines_survive_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"source": "a"}\n{"source": "cut sh')
    with Manifest(path) as m:
        m.append({"source": "b"})
    assert read_manifest(path) == [{"source": "a"}, {"source": "b"}]


def _run_killed(folder: Path, delay: float) -> int:
    """The CLI on every source of ``folder``/in, killed with SIGKILL after ``delay`` s."""
    srcs = sorted(str(p) for p in (folder / "in").iterdir())
    cmd = [sys.executable, "-m", "e2compress", "--delete-input", "--bits", "8"]
    proc = subprocess.Popen(
        [*cmd, "--threads", "1", "--outpath", str(folder / "out"), *srcs],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    return proc.wait(timeout=600)


def _check_invariant(folder: Path, originals: dict[str, bytes]) -> int:
    """Every source is there unchanged, or gone with its complete, verified archive and
    its manifest line; returns how many are gone."""
    manifest = folder / "out" / MANIFEST
    lines = read_manifest(manifest) if manifest.exists() else []
    by_source = {r["source"]: r for r in lines}
    gone = 0
    for name, data in originals.items():
        src = folder / "in" / name
        if src.exists():
            assert src.read_bytes() == data, f"{name} was damaged"
            continue
        gone += 1
        archive = folder / "out" / name.replace(".mrc", ".hdf")
        assert archive.is_file(), f"{name} is gone without its archive"
        line = by_source.get(str(src))
        assert line is not None, f"{name} is gone without its manifest line"
        assert line["source_sha256"] == hashlib.sha256(data).hexdigest()
        assert line["output_sha256"] == _sha(archive)
        keep = folder / "kept" / name
        keep.parent.mkdir(exist_ok=True)
        keep.write_bytes(data)
        result = check_archive(archive, keep, threads=1)
        assert result.ok, result.problems
    return gone


def test_kill_9_at_random_moments_never_loses_a_source(tmp_path: Path) -> None:
    """SIGKILL the CLI at random moments over many runs; after each, every source is
    either unchanged or gone with its complete, verified archive and manifest line."""
    # how long the interpreter takes to start here, and one run to the end (which
    # deletes everything): the kills fall between the two, where the work is
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "e2compress", "--version"], check=True, capture_output=True
    )
    start = time.perf_counter() - t0
    first = tmp_path / "first"
    originals = _sources(first / "in", size=256, frames=6)
    (first / "out").mkdir()
    t0 = time.perf_counter()
    assert _run_killed(first, 600) == 0
    span = time.perf_counter() - t0
    assert _check_invariant(first, originals) == len(originals)
    rng = random.Random(20261205)  # reproducible moments
    killed = 0
    for run in range(24):
        folder = tmp_path / f"run{run}"
        (folder / "in").mkdir(parents=True)
        for name, data in originals.items():
            (folder / "in" / name).write_bytes(data)
        (folder / "out").mkdir()
        status = _run_killed(folder, rng.uniform(0.8 * start, 1.05 * span))
        killed += status == -signal.SIGKILL
        _check_invariant(folder, originals)
    assert killed > 0  # the kills landed while the run was working


def test_no_manifest_line_no_deletion(tmp_path: Path) -> None:
    """The line is on disk before the name goes: when it cannot be written, the source
    stays (a deletion first would lose the only record of where the data went)."""

    class Full(Manifest):
        def append(self, record: dict[str, object]) -> None:
            raise OSError(28, "No space left on device")

    _sources(tmp_path / "in")
    src = tmp_path / "in" / "ints0.mrc"
    archive = tmp_path / "ints0.hdf"
    e2compress.compress_file(src, archive, bits=8, verify=True)
    with Full(tmp_path / "m.jsonl") as manifest:
        d = delete_source(src, archive, manifest, verified=True)
    assert not d.deleted
    assert "manifest line cannot be written (No space left on device)" in d.message
    assert src.exists()
    with Manifest(tmp_path / "m.jsonl") as manifest:
        d = delete_source(src, archive, manifest, verified=True)
    assert d.deleted
    assert not src.exists()
    assert read_manifest(tmp_path / "m.jsonl") == [d.record]
