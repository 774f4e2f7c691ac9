"""Atomic output: a locked temporary file that replaces the target only when complete."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from .errors import E2CompressError, OutputError

TMP_SUFFIX = ".e2compress.tmp"


class AtomicOutput:
    """A locked temporary file beside ``target`` that replaces it only on commit.

    The temporary name is deterministic, so a file left by a killed run is found and
    reused by the next run on the same output; ``flock`` tells a live writer from a
    dead one.
    """

    def __init__(self, target: Path) -> None:
        self.target = target
        self.path = target.parent / f".{target.name}{TMP_SUFFIX}"
        self.stale = False
        self._fd: int | None = None

    def __enter__(self) -> AtomicOutput:
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputError(
                    f"cannot create a file in {self.target.parent}: {exc.strerror or exc}",
                    self.target,
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise OutputError(
                    "another e2compress process is writing this output", self.target
                ) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.stale = os.fstat(fd).st_size > 0
                self._fd = fd
                return self
            os.close(fd)  # lost a race with a writer that just renamed it; retry
        raise OutputError("could not lock the temporary output file", self.target)

    def commit(self, before_replace: Callable[[], None] | None = None) -> None:
        """Flush the temporary file to disk and rename it onto the target.

        ``before_replace`` runs just before the rename; if it raises, nothing is
        replaced (the temporary is removed on exit).
        """
        assert self._fd is not None
        os.fsync(self._fd)
        if self.target.exists():  # a replaced file keeps its permissions and owner
            try:
                shutil.copymode(self.target, self.path)
                old = self.target.stat()
                if (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
                    os.chown(self.path, old.st_uid, old.st_gid)
            except OSError:
                pass
        if before_replace is not None:
            before_replace()
        os.replace(self.path, self.target)
        try:
            dirfd = os.open(self.target.parent, os.O_RDONLY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __exit__(self, *exc: object) -> None:
        if self._fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None


def check_output_dir(target: Path) -> None:
    """Raise OutputError unless ``target`` can be created in an existing, writable directory."""
    parent = target.parent
    if not parent.exists():
        raise OutputError(f"output directory {parent} does not exist", target)
    if not parent.is_dir():
        raise OutputError(f"output directory {parent} is not a directory", target)
    if target.is_dir():
        raise OutputError("output path is a directory", target)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {parent} is not writable", target)


def resolve_target(target: Path) -> Path:
    """The file an output path names: a symbolic link is followed to its target.

    The target is replaced and the link kept (as ``cp`` writes through a link).

    Raises:
        OutputError: the link is dangling or loops.
    """
    if not target.is_symlink():
        return target
    real = Path(os.path.realpath(target))
    if not real.exists():
        raise OutputError(
            "output is a symbolic link to a missing file; not writing through it", target
        )
    return real


def write_protected(st: os.stat_result) -> bool:
    """True when the mode bits deny this user writing the file (root counts as its owner).

    The mode bits, not ``os.access``: root may write anything, yet ``chmod a-w`` on a
    file says "keep it" to root as well.
    """
    uid = os.geteuid()
    if uid in (0, st.st_uid):
        return not st.st_mode & stat.S_IWUSR
    if st.st_gid == os.getegid() or st.st_gid in os.getgroups():
        return not st.st_mode & stat.S_IWGRP
    return not st.st_mode & stat.S_IWOTH


_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def check_replaceable(target: Path, *, force: bool = False) -> list[str]:
    """Refuse to replace an existing ``target`` (a resolved path) that is not ours to replace.

    Refused: anything but a regular file; a non-empty file that is not HDF5 (another
    kind of file, never a previous output); unless ``force``: a write-protected file
    and a file with several hard links (replacing one name would leave the others
    holding the old content). Returns the warnings for what ``force`` let through.

    Raises:
        OutputError: the target must not be replaced.
    """
    try:
        st = target.stat()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise OutputError(f"cannot examine the existing output: {exc.strerror}", target) from None
    if not stat.S_ISREG(st.st_mode):
        raise OutputError("output exists and is not a regular file; not replaced", target)
    if st.st_size > 0:
        try:
            with open(target, "rb") as fh:
                magic = fh.read(len(_HDF5_MAGIC))
        except OSError as exc:
            raise OutputError(
                f"cannot read the existing output to see what it is: {exc.strerror}", target
            ) from None
        if magic != _HDF5_MAGIC:
            raise OutputError(
                "output exists and is not an HDF5 file (another kind of file); not replaced",
                target,
            )
    problems = []
    if write_protected(st):
        problems.append(f"is write-protected (mode {stat.S_IMODE(st.st_mode):04o})")
    if st.st_nlink > 1:
        problems.append(
            f"has {st.st_nlink} hard links (the other names would keep the old content)"
        )
    if problems and not force:
        raise OutputError(
            f"output {' and '.join(problems)}; not replaced (force=True replaces it)",
            target,
        )
    return [f"{target}: {p}; replaced because forced" for p in problems if "hard links" in p]


def os_error(exc: OSError | RuntimeError, target: Path) -> E2CompressError:
    """A failed write (from the OS or from h5py) as a one-line OutputError."""
    text = str(exc)
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC or "No space" in text or "errno = 28" in text:
        return OutputError("no space left on device while writing", target)
    if code == errno.EFBIG or "File too large" in text or "errno = 27" in text:
        return OutputError("file size limit exceeded while writing (File too large)", target)
    if code == errno.EDQUOT or "quota" in text.lower():
        return OutputError("disk quota exceeded while writing", target)
    first = text.splitlines()[0] if text else repr(exc)
    return OutputError(f"write failed: {first}", target)
