"""Fault injection: SIGKILL/SIGINT/SIGTERM mid-write, full disks, read-only and odd output
paths, concurrent writers, stale temporaries, --ppid, verification failures and
restarted batches.

Every case checks that the input is byte-identical afterwards, that no partial output
or temporary file is left (a SIGKILL may leave the temporary; the next run must then
clean it up), that any previous output still decodes to the same values (decoded
content is compared, never file bytes), that the error is reported on one stderr line
naming the file and the cause without a traceback, and that the exit status is
non-zero. The CLI runs as a subprocess (``python -m e2compress``) except where a
function of the package has to be patched.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from e2compress import OutputError, VerificationError, compress_file, pipeline
from e2compress.cli import main
from helpers import (
    DATA,
    assert_within_half_step,
    cli_args,
    eman_decode,
    listing,
    temporaries,
    write_mrc,
)

F32 = np.float32
TMP_SUFFIX = pipeline.TMP_SUFFIX
CLI = (sys.executable, "-m", "e2compress")
SUMMARY = re.compile(r"^(\d+) compressed, (\d+) failed, (\d+) skipped$", re.M)
# every line the CLI may print on stderr when something fails
STDERR_PREFIXES = ("ERROR: ", "failed: ", "e2compress: ")
MOVIE_FRAMES = 40  # 40 x 1024 x 1024 float32 = 168 MB: a write takes a few hundred ms
INPLACE_FRAMES = 12


# --------------------------------------------------------------------------- helpers


def small_image(seed: int, shape: tuple[int, ...] = (48, 64)) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 10 - 3).astype(F32)


def eman_images(path: Path) -> list[np.ndarray]:
    return [img for img, _ in eman_decode(path)]


def decoded_digest(path: Path) -> str:
    """A digest of the decoded values (and shapes) of every image of ``path``."""
    h = hashlib.sha256()
    for img in eman_images(path):
        h.update(repr(img.shape).encode())
        h.update(np.ascontiguousarray(img, dtype=F32).tobytes())
    return h.hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def assert_matches_source(path: Path, images: list[np.ndarray], bits: int) -> None:
    """``path`` holds ``images`` to within half a step of its stored ``bits``-bit range."""
    decoded = eman_decode(path)
    assert len(decoded) == len(images)
    for (got, mapping), orig in zip(decoded, images, strict=True):
        assert mapping is not None
        assert mapping[0] == bits
        clamped = assert_within_half_step(orig, got, mapping)
        assert clamped <= 0.01 * orig.size  # no range option given: hardly anything is clamped


def tmp_name(target: Path) -> Path:
    return target.parent / f".{target.name}{TMP_SUFFIX}"


def spawn(*args: object, cwd: Path, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, *cli_args(*args)],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


@contextmanager
def running(*args: object, cwd: Path, **kw: Any) -> Iterator[subprocess.Popen[str]]:
    """``spawn`` whose process is killed, reaped and whose pipes are closed on exit."""
    proc = spawn(*args, cwd=cwd, **kw)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None and not stream.closed:
                stream.close()
        proc.wait(timeout=60)


def link_movie(movie: dict[str, Any], dst: Path) -> None:
    """The shared movie as ``dst`` (a hard link: the tests check its bytes afterwards, so
    damage through the link would show up)."""
    os.link(movie["mrc"], dst)


def run_cli(*args: object, cwd: Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*CLI, *cli_args(*args)],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
        **kw,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout
    return proc


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 60.0) -> bool:
    """Poll until ``path`` exists (True) or ``proc`` has exited (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists():
            return True
        if proc.poll() is not None:
            return path.exists()
        time.sleep(0.002)
    raise AssertionError(f"{path} did not appear within {timeout} s")


def finish(proc: subprocess.Popen[str], timeout: float = 60.0) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def assert_clean_error(stderr: str, name: object, *causes: str) -> str:
    """One stderr line names ``name`` and one of ``causes``; no traceback, no noise.

    Returns that line.
    """
    assert "Traceback" not in stderr, stderr
    assert "unexpected error" not in stderr, stderr
    for line in stderr.splitlines():
        assert line.startswith(STDERR_PREFIXES), f"stray stderr line {line!r} in:\n{stderr}"
    named = [ln for ln in stderr.splitlines() if str(name) in ln]
    assert named, f"no stderr line names {name}:\n{stderr}"
    pattern = "|".join(causes)
    assert re.search(pattern, named[0], re.I), f"{named[0]!r} does not say {pattern!r}"
    return named[0]


# --------------------------------------------------------------------------- shared inputs


@pytest.fixture(scope="module")
def movie(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 40-frame 1024x1024 float32 .mrc movie, a previous (4-bit) output of it, and the
    decoded digest of its 5-bit output (the reference every completed run must match)."""
    d = tmp_path_factory.mktemp("movie")
    frames = np.random.default_rng(20240501).standard_normal((MOVIE_FRAMES, 1024, 1024), dtype=F32)
    src = write_mrc(d / "m.mrc", frames)
    compress_file(src, d / "ref5.hdf", bits=5)
    compress_file(src, d / "prev4.hdf", bits=4)
    info = {
        "mrc": src,
        "mrc_sha": file_digest(src),
        "prev4": d / "prev4.hdf",
        "prev4_digest": decoded_digest(d / "prev4.hdf"),
        "ref5_digest": decoded_digest(d / "ref5.hdf"),
    }
    assert info["prev4_digest"] != info["ref5_digest"]
    assert_matches_source(d / "ref5.hdf", [frames], 5)  # the reference is right
    return info


@pytest.fixture(scope="module")
def stack_hdf(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An 8-bit EMAN2 .hdf of a 12-frame movie (the in-place input) and the decoded
    digests of it and of its 6-bit recompression (what a completed in-place run gives)."""
    d = tmp_path_factory.mktemp("stack")
    frames = np.random.default_rng(7).standard_normal((INPLACE_FRAMES, 1024, 1024), dtype=F32)
    src = write_mrc(d / "s.mrc", frames)
    compress_file(src, d / "s8.hdf", bits=8)
    compress_file(d / "s8.hdf", d / "s6.hdf", bits=6)
    return {
        "hdf8": d / "s8.hdf",
        "hdf8_sha": file_digest(d / "s8.hdf"),
        "hdf8_digest": decoded_digest(d / "s8.hdf"),
        "hdf6_digest": decoded_digest(d / "s6.hdf"),
    }


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Mount small tmpfs file systems under tmp_path (root only); unmounted afterwards."""
    mounted: list[Path] = []

    def mount(name: str, size: str = "2m") -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        if shutil.which("mount") is None or shutil.which("umount") is None:
            pytest.skip("no mount/umount command")
        d = tmp_path / name
        d.mkdir()
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(d)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs: {proc.stderr.strip()}")
        mounted.append(d)
        return d

    yield mount
    for d in reversed(mounted):
        if subprocess.run(["umount", str(d)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(d)], capture_output=True)


def remount_readonly(d: Path) -> None:
    proc = subprocess.run(["mount", "-o", "remount,ro", str(d)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot remount read-only: {proc.stderr.strip()}")


# --------------------------------------------------------------------------- SIGKILL


def _kill_during_write(
    args: tuple[object, ...], cwd: Path, temp: Path, delay: float
) -> tuple[int | None, bool]:
    """Start the CLI, wait for its temporary file, let it run ``delay`` s, freeze it
    (SIGSTOP) and SIGKILL it.

    Returns (exit status if it finished before the kill else None, whether the
    temporary had appeared). With ``delay`` 0 the process is frozen as soon as its
    temporary appears, so it is killed mid-write whatever the machine's speed."""
    with running(*args, cwd=cwd) as proc:
        appeared = wait_for(temp, proc)
        if delay:
            time.sleep(delay)
        proc.send_signal(signal.SIGSTOP)
        finished = proc.poll()
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    return finished, appeared


def _timed_run(args: tuple[object, ...], cwd: Path, temp: Path) -> tuple[float, str]:
    """A complete run: seconds from the temporary appearing to exit, and stderr."""
    with running(*args, cwd=cwd) as proc:
        wait_for(temp, proc)
        t0 = time.monotonic()
        rc, _, err = finish(proc)
    assert rc == 0, err
    return time.monotonic() - t0, err


@pytest.mark.slow
def test_sigkill_during_outpath_write_then_restart(tmp_path: Path, movie: dict[str, Any]) -> None:
    """SIGKILL at random points of a --outpath write: the previous output survives, a
    temporary may remain, and the next run on the same output succeeds without litter."""
    src = tmp_path / "m.mrc"
    link_movie(movie, src)
    out = tmp_path / "out"
    out.mkdir()
    target, temp = out / "m.hdf", tmp_name(out / "m.hdf")
    # 5 bits on Gaussian frames sit just past the default noise rule (0.11 x): no warning
    args = ("--bits", "5", "--noise-fraction", "0.2", "--outpath", out, src)
    window, _ = _timed_run(args, tmp_path, temp)  # calibration: how long the write takes
    assert decoded_digest(target) == movie["ref5_digest"]

    rng = random.Random(1234)
    killed_mid_write = temps_left = 0
    for round_ in range(3):
        shutil.copyfile(movie["prev4"], target)  # a previous output with other content
        for k in range(rng.choice((1, 1, 2))):  # sometimes kill a run that met a stale temp
            # the first kill of two rounds is at the start of the write (surely mid-write)
            delay = 0.0 if round_ < 2 and k == 0 else rng.uniform(0.0, 0.9 * window)
            finished, appeared = _kill_during_write(args, tmp_path, temp, delay)
            assert appeared
            left = listing(out)
            assert left <= {"m.hdf", temp.name}, left
            digest = decoded_digest(target)
            if finished is None and digest == movie["prev4_digest"]:
                killed_mid_write += 1
            else:  # killed after the rename: the new output is complete
                assert digest == movie["ref5_digest"]
                assert temp.name not in left
                shutil.copyfile(movie["prev4"], target)
            temps_left += temp.name in left
        proc = run_cli(*args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""
        assert listing(out) == {"m.hdf"}
        assert decoded_digest(target) == movie["ref5_digest"]
    assert killed_mid_write >= 2
    assert listing(tmp_path) == {"m.mrc", "out"}
    assert file_digest(src) == movie["mrc_sha"]
    print(f"killed mid-write {killed_mid_write} times, temporary left {temps_left} times")


@pytest.mark.slow
def test_sigkill_during_in_place_write_then_restart(
    tmp_path: Path, stack_hdf: dict[str, Any]
) -> None:
    """SIGKILL at random points of an in-place recompression: the .hdf is never damaged,
    and the next run replaces it correctly and leaves no temporary."""
    target = tmp_path / "s.hdf"
    temp = tmp_name(target)
    args = ("--bits", "6", target)
    shutil.copyfile(stack_hdf["hdf8"], target)
    window, _ = _timed_run(args, tmp_path, temp)
    assert decoded_digest(target) == stack_hdf["hdf6_digest"]

    rng = random.Random(99)
    killed_mid_write = 0
    for round_ in range(3):
        shutil.copyfile(stack_hdf["hdf8"], target)
        delay = 0.0 if round_ < 2 else rng.uniform(0.0, 0.9 * window)  # two surely mid-write
        finished, appeared = _kill_during_write(args, tmp_path, temp, delay)
        assert appeared
        left = listing(tmp_path)
        assert left <= {"s.hdf", temp.name}, left
        if finished is None and file_digest(target) == stack_hdf["hdf8_sha"]:
            killed_mid_write += 1  # the input is byte-identical and decodes as before
            assert decoded_digest(target) == stack_hdf["hdf8_digest"]
        else:  # killed after the rename: the replacement is complete
            assert temp.name not in left
            assert decoded_digest(target) == stack_hdf["hdf6_digest"]
            shutil.copyfile(stack_hdf["hdf8"], target)
        proc = run_cli(*args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""
        assert listing(tmp_path) == {"s.hdf"}
        assert decoded_digest(target) == stack_hdf["hdf6_digest"]
    assert killed_mid_write >= 2
    print(f"in place: killed mid-write {killed_mid_write} times")


# --------------------------------------------------------------------------- SIGINT / SIGTERM


@pytest.mark.parametrize("where", ["outpath", "in_place"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_write_cleans_up(
    tmp_path: Path,
    movie: dict[str, Any],
    stack_hdf: dict[str, Any],
    sig: signal.Signals,
    where: str,
) -> None:
    """SIGINT/SIGTERM mid-write: exit 130/143, no temporary, previous output intact."""
    if where == "outpath":
        src = tmp_path / "m.mrc"
        link_movie(movie, src)
        out = tmp_path / "out"
        out.mkdir()
        target = out / "m.hdf"
        shutil.copyfile(movie["prev4"], target)
        args: tuple[object, ...] = ("--bits", "5", "--outpath", out, src)
        before_digest, watch = movie["prev4_digest"], out
    else:
        src = target = tmp_path / "s.hdf"
        shutil.copyfile(stack_hdf["hdf8"], target)
        args = ("--bits", "6", target)
        before_digest, watch = stack_hdf["hdf8_digest"], tmp_path
    src_sha = file_digest(src)
    before = listing(watch)
    with running(*args, cwd=tmp_path) as proc:
        assert wait_for(tmp_name(target), proc)
        # Freeze it mid-write (no timing assumption), queue the signal, then let it run:
        # the signal is delivered as it resumes, before the write can finish.
        proc.send_signal(signal.SIGSTOP)
        assert proc.poll() is None
        assert tmp_name(target).exists(), "the write finished before the signal"
        proc.send_signal(sig)
        proc.send_signal(signal.SIGCONT)
        rc, _, err = finish(proc)

    assert rc == 128 + int(sig), err
    assert listing(watch) == before
    assert temporaries(tmp_path) == []
    assert file_digest(src) == src_sha
    assert decoded_digest(target) == before_digest
    # one line, naming the file that was not written and the cause
    line = assert_clean_error(err, src.name, "interrupt", "signal")
    assert str(int(sig)) in line or sig.name in line


# --------------------------------------------------------------------------- disk full


def _limit_file_size(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG instead

    return preexec


DISK_FULL_WORDS = ("no space", "space left", "size limit", "too large", "disk full", "EFBIG")


@pytest.mark.parametrize("where", ["outpath", "in_place"])
def test_file_size_limit_fails_clearly(
    tmp_path: Path, movie: dict[str, Any], stack_hdf: dict[str, Any], where: str
) -> None:
    """RLIMIT_FSIZE (writes fail with EFBIG): a clear error naming the output, no
    temporary, the previous output intact, exit 1."""
    if where == "outpath":
        src = tmp_path / "m.mrc"
        link_movie(movie, src)
        out = tmp_path / "out"
        out.mkdir()
        target = out / "m.hdf"
        shutil.copyfile(movie["prev4"], target)
        args: tuple[object, ...] = ("--bits", "5", "--outpath", out, src)
        before_digest = movie["prev4_digest"]
    else:
        src = target = tmp_path / "s.hdf"
        shutil.copyfile(stack_hdf["hdf8"], target)
        args = ("--bits", "6", target)
        before_digest = stack_hdf["hdf8_digest"]
    src_sha = file_digest(src)
    before = {p.relative_to(tmp_path) for p in tmp_path.rglob("*")}

    proc = run_cli(*args, cwd=tmp_path, preexec_fn=_limit_file_size(1 << 20))

    assert proc.returncode == 1, proc.stderr
    assert {p.relative_to(tmp_path) for p in tmp_path.rglob("*")} == before
    assert temporaries(tmp_path) == []
    assert file_digest(src) == src_sha
    assert decoded_digest(target) == before_digest
    assert_clean_error(proc.stderr, target, *DISK_FULL_WORDS)


@pytest.mark.parametrize("how", ["cli", "library"])
def test_full_tmpfs_fails_clearly(
    tmp_path: Path, movie: dict[str, Any], mount_tmpfs: Callable[..., Path], how: str
) -> None:
    """ENOSPC on a 2 MB tmpfs: a clear error naming the output, no temporary, the
    previous (small) output intact, exit 1 / OutputError. (Whether the disk fills up in
    a chunk write only or also in the metadata flush on close depends on the input; the
    library case uses a 16-frame movie, where both happen.)"""
    full = mount_tmpfs("full", "2m")
    small = write_mrc(tmp_path / "small.mrc", small_image(1))
    compress_file(small, full / "m.hdf", bits=5)
    (tmp_path / "small.mrc").unlink()
    before_digest = decoded_digest(full / "m.hdf")
    src = tmp_path / "m.mrc"
    if how == "cli":
        link_movie(movie, src)
    else:
        rng = np.random.default_rng(20240501)
        write_mrc(src, rng.standard_normal((16, 1024, 1024), dtype=F32))
    src_sha = file_digest(src)

    if how == "cli":
        proc = run_cli("--bits", "5", "--outpath", full, src, cwd=tmp_path)
        assert proc.returncode == 1, proc.stderr
        err = proc.stderr
    else:
        with pytest.raises(Exception) as info:  # noqa: PT011 - the type is checked below
            compress_file(src, full / "m.hdf", bits=5)
        err = f"ERROR: {info.value}"
        assert isinstance(info.value, OutputError), repr(info.value)

    assert listing(full) == {"m.hdf"}
    assert decoded_digest(full / "m.hdf") == before_digest
    assert file_digest(src) == src_sha
    assert listing(tmp_path) == {"m.mrc", "full"}
    assert_clean_error(err, full / "m.hdf", *DISK_FULL_WORDS)


# --------------------------------------------------------------------------- bad output places


def _small_inputs(d: Path) -> dict[str, Any]:
    """a.mrc with a previous a.hdf (other content) beside it, and an in-place b.hdf."""
    img = small_image(2)
    write_mrc(d / "a.mrc", img)
    write_mrc(d / "prev.mrc", small_image(3))
    compress_file(d / "prev.mrc", d / "a.hdf", bits=5)
    write_mrc(d / "bsrc.mrc", small_image(4))
    compress_file(d / "bsrc.mrc", d / "b.hdf", bits=10)
    (d / "prev.mrc").unlink()
    (d / "bsrc.mrc").unlink()
    return {
        "a_sha": file_digest(d / "a.mrc"),
        "a_hdf": decoded_digest(d / "a.hdf"),
        "b_sha": file_digest(d / "b.hdf"),
        "b_hdf": decoded_digest(d / "b.hdf"),
    }


def _assert_small_inputs_intact(d: Path, state: dict[str, Any]) -> None:
    assert listing(d) == {"a.mrc", "a.hdf", "b.hdf"}
    assert file_digest(d / "a.mrc") == state["a_sha"]
    assert decoded_digest(d / "a.hdf") == state["a_hdf"]
    assert file_digest(d / "b.hdf") == state["b_sha"]
    assert decoded_digest(d / "b.hdf") == state["b_hdf"]


@pytest.mark.parametrize("case", ["beside", "in_place"])
def test_read_only_dir_chmod(tmp_path: Path, case: str) -> None:
    """A chmod 0555 directory (only meaningful when not root: root may write anyway)."""
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions; see test_read_only_mount")
    d = tmp_path / "ro"
    d.mkdir()
    state = _small_inputs(d)
    d.chmod(0o555)
    try:
        name = "a.mrc" if case == "beside" else "b.hdf"
        proc = run_cli("--bits", "6", d / name, cwd=tmp_path)
        assert proc.returncode == 1
        target = d / ("a.hdf" if case == "beside" else "b.hdf")
        assert_clean_error(proc.stderr, target, "not writable", "permission", "read-only")
        _assert_small_inputs_intact(d, state)
    finally:
        d.chmod(0o755)


@pytest.mark.parametrize("case", ["beside", "in_place", "outpath"])
def test_read_only_mount(tmp_path: Path, mount_tmpfs: Callable[..., Path], case: str) -> None:
    """A read-only file system fails for root too: an .mrc whose .hdf goes beside it,
    an .hdf recompressed in place, and --outpath pointing there."""
    d = mount_tmpfs("ro", "4m")
    state = _small_inputs(d)
    remount_readonly(d)
    if case == "outpath":
        other = write_mrc(tmp_path / "c.mrc", small_image(5))
        sha = file_digest(other)
        proc = run_cli("--bits", "6", "--outpath", d, other, cwd=tmp_path)
        assert proc.returncode == 2
        assert_clean_error(proc.stderr, d, "writable")
        assert file_digest(other) == sha
        assert listing(tmp_path) == {"ro", "c.mrc"}
    else:
        name = "a.mrc" if case == "beside" else "b.hdf"
        proc = run_cli("--bits", "6", d / name, cwd=tmp_path)
        assert proc.returncode == 1
        target = d / ("a.hdf" if case == "beside" else "b.hdf")
        assert_clean_error(proc.stderr, target, "not writable", "read-only")
    _assert_small_inputs_intact(d, state)


def test_missing_outpath(tmp_path: Path) -> None:
    src = write_mrc(tmp_path / "a.mrc", small_image(6))
    sha = file_digest(src)
    missing = tmp_path / "nothere"
    proc = run_cli("--bits", "5", "--outpath", missing, src, cwd=tmp_path)
    assert proc.returncode == 2
    assert_clean_error(proc.stderr, missing, "existing", "does not exist", "no such")
    assert listing(tmp_path) == {"a.mrc"}
    assert file_digest(src) == sha


def test_outpath_is_a_file(tmp_path: Path) -> None:
    src = write_mrc(tmp_path / "a.mrc", small_image(7))
    sha = file_digest(src)
    afile = tmp_path / "afile"
    afile.write_bytes(b"keep me\n")
    proc = run_cli("--bits", "5", "--outpath", afile, src, cwd=tmp_path)
    assert proc.returncode == 2
    assert_clean_error(proc.stderr, afile, "director")
    assert afile.read_bytes() == b"keep me\n"
    assert listing(tmp_path) == {"a.mrc", "afile"}
    assert file_digest(src) == sha


def test_output_path_is_a_directory(tmp_path: Path) -> None:
    """A directory named a.hdf beside a.mrc: a clear error; it and the rest of the batch
    are left alone / compressed."""
    src = write_mrc(tmp_path / "a.mrc", small_image(8))
    other_img = small_image(9)
    other = write_mrc(tmp_path / "b.mrc", other_img)
    sha = file_digest(src)
    (tmp_path / "a.hdf").mkdir()
    (tmp_path / "a.hdf" / "inside.txt").write_text("keep")
    proc = run_cli("--bits", "5", src, other, cwd=tmp_path)
    assert proc.returncode == 1
    assert_clean_error(proc.stderr, tmp_path / "a.hdf", "directory")
    assert SUMMARY.search(proc.stdout).groups() == ("1", "1", "0")
    assert listing(tmp_path) == {"a.mrc", "a.hdf", "b.mrc", "b.hdf"}
    assert listing(tmp_path / "a.hdf") == {"inside.txt"}
    assert (tmp_path / "a.hdf" / "inside.txt").read_text() == "keep"
    assert file_digest(src) == sha
    assert_matches_source(tmp_path / "b.hdf", [other_img], 5)


# --------------------------------------------------------------------------- concurrency


ANOTHER_WRITER = "another e2compress process is writing"


@pytest.mark.slow
@pytest.mark.parametrize("where", ["outpath", "in_place"])
def test_two_processes_on_the_same_output(
    tmp_path: Path, movie: dict[str, Any], stack_hdf: dict[str, Any], where: str
) -> None:
    """Two runs started together on one output: one wins and the other says another
    process is writing, or both succeed one after the other; the result is always a
    valid file and no temporary is left."""
    if where == "outpath":
        src = tmp_path / "m.mrc"
        link_movie(movie, src)
        out = tmp_path / "out"
        out.mkdir()
        target = out / "m.hdf"
        # --noise-fraction 0.2: 5 bits on Gaussian frames would warn (0.11 x the noise)
        args: tuple[object, ...] = ("--bits", "5", "--noise-fraction", "0.2", "--outpath", out, src)
        expected, rounds = movie["ref5_digest"], 2
    else:
        src = target = tmp_path / "s.hdf"
        args = ("--bits", "6", target)
        expected, rounds = stack_hdf["hdf6_digest"], 2
    outcomes = []
    for _ in range(rounds):
        if where == "in_place":
            shutil.copyfile(stack_hdf["hdf8"], target)
        with running(*args, cwd=tmp_path) as first, running(*args, cwd=tmp_path) as second:
            results = [finish(first), finish(second)]
        codes = sorted(rc for rc, _, _ in results)
        outcomes.append(tuple(codes))
        assert codes in ([0, 0], [0, 1]), results
        for rc, _, err in results:
            if rc == 1:
                assert_clean_error(err, target, ANOTHER_WRITER)
            else:
                assert err == ""
        assert temporaries(tmp_path) == []
        assert decoded_digest(target) == expected
    if where == "outpath":
        assert listing(out) == {"m.hdf"}
        assert file_digest(src) == movie["mrc_sha"]
    else:
        assert listing(tmp_path) == {"s.hdf"}
    print(f"race outcomes (sorted exit codes): {outcomes}")


# --------------------------------------------------------------------------- stale temporaries


@pytest.mark.parametrize("where", ["beside", "outpath", "in_place"])
def test_stale_temporary_is_replaced(tmp_path: Path, where: str) -> None:
    """A temporary left by a killed run (junk bytes, larger than the new output) is
    reused and gone after the next run, which succeeds."""
    img = small_image(10, (3, 64, 80))
    if where == "in_place":
        staging = write_mrc(tmp_path / "stage.mrc", img)
        compress_file(staging, tmp_path / "a.hdf", bits=10)
        staging.unlink()
        src = target = tmp_path / "a.hdf"
        img = eman_images(src)[0]  # what the in-place run reads
        args: tuple[object, ...] = ("--bits", "5", src)
    else:
        src = write_mrc(tmp_path / "a.mrc", img)
        target = tmp_path / "a.hdf"
        args = ("--bits", "5", src)
        if where == "outpath":
            (tmp_path / "out").mkdir()
            target = tmp_path / "out" / "a.hdf"
            args = ("--bits", "5", "--outpath", tmp_path / "out", src)
    before = listing(tmp_path)
    junk = tmp_name(target)
    junk.write_bytes(np.random.default_rng(11).bytes(1 << 20))
    sha = file_digest(src)

    proc = run_cli(*args, cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert temporaries(tmp_path) == []
    expected = before | {target.name} if where == "beside" else before
    assert listing(tmp_path) == expected
    if where == "outpath":
        assert listing(tmp_path / "out") == {"a.hdf"}
    if where != "in_place":
        assert file_digest(src) == sha
    assert_matches_source(target, [img], 5)


# --------------------------------------------------------------------------- --ppid


def test_ppid_death_stops_cleanly(tmp_path: Path, movie: dict[str, Any]) -> None:
    """--ppid of a process that dies mid-batch: the CLI stops before the end of the batch,
    exit 143, no temporary; files finished before the stop are complete, the rest are not
    written."""
    names = [f"m{k}.mrc" for k in range(8)]
    for name in names:  # eight names for one movie: a batch of a few seconds
        link_movie(movie, tmp_path / name)
    out = tmp_path / "out"
    out.mkdir()
    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        with running(
            *("--bits", "5", "--ppid", sleeper.pid, "--outpath", out),
            *(tmp_path / n for n in names),
            cwd=tmp_path,
        ) as proc:
            assert wait_for(tmp_name(out / "m0.hdf"), proc)
            sleeper.kill()
            sleeper.wait()  # reaped: a zombie would still answer kill(pid, 0)
            rc, _, err = finish(proc)
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
    assert rc == 143, err
    assert "Traceback" not in err
    assert temporaries(tmp_path) == []
    written = listing(out)
    assert len(written) < len(names), "the batch ran to the end: --ppid was not noticed"
    assert written <= {n.replace(".mrc", ".hdf") for n in names}
    for name in written:
        assert decoded_digest(out / name) == movie["ref5_digest"]
    assert listing(tmp_path) == {*names, "out"}
    assert file_digest(tmp_path / names[0]) == movie["mrc_sha"]


# --------------------------------------------------------------------------- --verify in place


def _in_place_hdf(d: Path) -> tuple[Path, str, str]:
    staging = write_mrc(d / "stage.mrc", small_image(12, (3, 96, 80)))
    compress_file(staging, d / "v.hdf", bits=10)
    staging.unlink()
    return d / "v.hdf", file_digest(d / "v.hdf"), decoded_digest(d / "v.hdf")


def _run_main(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_verify_failure_keeps_original(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify_output raising VerificationError: the in-place .hdf is untouched, exit 1."""
    hdf, sha, digest = _in_place_hdf(tmp_path)

    def mismatch(source: Any, path: Any, *args: Any, **kwargs: Any) -> None:
        raise VerificationError("image 0: decoded error 9 exceeds half a step (0.1)", path)

    monkeypatch.setattr(pipeline, "verify_output", mismatch)
    rc, _, err = _run_main(capsys, "--bits", "5", hdf)
    assert rc == 1
    assert_clean_error(err, hdf.name, "exceeds half a step")
    assert file_digest(hdf) == sha
    assert decoded_digest(hdf) == digest
    assert listing(tmp_path) == {"v.hdf"}


def test_verify_detects_a_corrupted_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real verifier, run on a temporary damaged after writing (one code moved far
    from its value), refuses it: the in-place .hdf is untouched, exit 1."""
    hdf, sha, digest = _in_place_hdf(tmp_path)
    real_verify = pipeline.verify_output
    damaged: list[Path] = []

    def corrupt_then_verify(source: Any, path: Any, *args: Any, **kwargs: Any) -> None:
        with h5py.File(path, "r+", locking=False) as f:  # the temp is flock()ed
            ds = f["MDF/images/0/image"]
            codes = ds[...]
            top = int(codes.max())
            idx = np.argwhere((codes >= 4) & (codes <= top - 4))[0]
            codes[tuple(idx)] = 0  # an in-range pixel now decodes >= 3.5 steps away
            ds[...] = codes
        damaged.append(Path(path))
        real_verify(source, path, *args, **kwargs)

    monkeypatch.setattr(pipeline, "verify_output", corrupt_then_verify)
    rc, _, err = _run_main(capsys, "--bits", "5", hdf)
    assert damaged == [tmp_name(hdf)], err
    assert rc == 1
    assert_clean_error(err, hdf.name, "exceeds half a step")
    assert file_digest(hdf) == sha
    assert decoded_digest(hdf) == digest
    assert listing(tmp_path) == {"v.hdf"}


# --------------------------------------------------------------------------- --skip-existing


@pytest.mark.slow
def test_skip_existing_restarts_killed_batch(tmp_path: Path) -> None:
    """A 3-file batch SIGKILLed as soon as its first output is complete; the same command
    with --skip-existing compresses only the missing ones (a torn copy counts as
    missing), and a third run skips all three."""
    sizes = {"a": 2, "b": 8, "c": 8}  # a finishes well before b (the CLI may run two at once)
    frames = {
        n: np.random.default_rng(30 + k).standard_normal((sizes[n], 1024, 1024), dtype=F32)
        for k, n in enumerate("abc")
    }
    srcs = [write_mrc(tmp_path / f"{n}.mrc", frames[n]) for n in "abc"]
    shas = [file_digest(s) for s in srcs]
    out = tmp_path / "out"
    out.mkdir()
    args = ("--bits", "5", "--outpath", out, *srcs)

    with running(*args, cwd=tmp_path) as proc:
        assert wait_for(out / "a.hdf", proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    left = listing(out)
    stale = {f".{n}.hdf{TMP_SUFFIX}" for n in "bc"}
    assert left <= {"a.hdf", "b.hdf", *stale}, left
    assert "a.hdf" in left
    assert "c.hdf" not in left
    assert_matches_source(out / "a.hdf", [frames["a"]], 5)
    complete = {n for n in "ab" if f"{n}.hdf" in left}
    stats = {n: os.stat(out / f"{n}.hdf") for n in complete}
    digests = {n: decoded_digest(out / f"{n}.hdf") for n in complete}
    # a torn copy of an output (not EMAN2-valid) must not count as done
    torn = (out / "a.hdf").read_bytes()
    (out / "c.hdf").write_bytes(torn[: len(torn) // 2])

    rerun = run_cli("-v", "--skip-existing", *args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    missing = 3 - len(complete)
    assert SUMMARY.search(rerun.stdout).groups() == (str(missing), "0", str(len(complete)))
    for n in complete:
        # not anchored at a line start: with two files at a time, the CLI's "Processing"
        # and "Skipping" lines can interleave
        assert re.search(rf"Skipping \S*{n}\.mrc: ", rerun.stdout)
        after = os.stat(out / f"{n}.hdf")
        assert (after.st_ino, after.st_mtime_ns) == (stats[n].st_ino, stats[n].st_mtime_ns)
        assert decoded_digest(out / f"{n}.hdf") == digests[n]
    assert listing(out) == {"a.hdf", "b.hdf", "c.hdf"}
    for n in "abc":
        assert_matches_source(out / f"{n}.hdf", [frames[n]], 5)

    again = run_cli("--skip-existing", *args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert SUMMARY.search(again.stdout).groups() == ("0", "0", "3")
    assert temporaries(tmp_path) == []
    assert [file_digest(s) for s in srcs] == shas
    assert listing(tmp_path) == {"a.mrc", "b.mrc", "c.mrc", "out"}


def test_in_place_replacement_keeps_mode_and_owner(tmp_path: Path) -> None:
    """A facility running as root over users' files must not take them over."""
    src = tmp_path / "owned.hdf"
    compress_file(DATA / "EMD-3197.map", src, bits=10)
    os.chmod(src, 0o640)
    if os.geteuid() == 0:
        os.chown(src, 12345, 23456)
    before = src.stat()
    compress_file(src, bits=5)
    after = src.stat()
    assert after.st_mode & 0o777 == 0o640
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert after.st_ino != before.st_ino  # it really was replaced
