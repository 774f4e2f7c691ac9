"""Deleting a source once its archive is proven to hold it (``--delete-input``).

:func:`delete_source` deletes a source file only when all of these hold, checked in
this order (the first that fails keeps the file and says why):

1. the archive was verified against the source pixel by pixel in this run
   (``verified``; the caller runs the compression with verification on);
2. the source is a regular file, not a symbolic link (see below), and is not the
   archive itself (an ``.hdf`` compressed in place);
3. the archive is in place and durable: a regular file, flushed, its directory
   flushed (so the rename that put it there survives a crash);
4. the archive keeps the source's header bytes (``e2compress restore`` can rebuild
   them) and records the SHA-256 of the source bytes it was made from;
5. the source is unchanged: its SHA-256 now, computed from one open descriptor, equals
   the recorded one (so it is the very bytes that were read and verified);
6. where the archive says it can be restored byte for byte, the SHA-256 of the bytes
   ``restore`` would write, computed without writing a file, equals the source's (for
   a ``.gz``/``.bz2`` source: the SHA-256 of its decompressed bytes, as recorded from
   the same read);
7. a manifest line (JSON) naming the source (path, size, SHA-256), the archive (path,
   SHA-256), the bits, whether the values are exact or within half a step, the
   SHA-256 of what ``restore`` writes (exact archives) and the time is appended and
   flushed to disk;
8. the source's name still refers to the file that was hashed (device, inode, size,
   modification and change times).

Only then is the name removed (and its directory flushed). A process killed at any
point leaves either the source, or the source gone with its archive complete and its
manifest line on disk; a manifest line whose source still exists means the process
stopped between the line and the removal (or step 8 failed), and nothing was lost.

A source of several files (an IMAGIC ``.hed``/``.img`` pair, named by either file) is
deleted whole or not at all: both files must be regular files beside each other, each
with the SHA-256 the archive records for it (steps 5-6 for each, step 6 against the
digest of both), a manifest line is written for each, and only then are both removed.

Links: a symbolic link is never deleted, nor its target (deleting the link frees no
space; deleting the target through it could break other names): name the target
itself. A file with several hard links loses only the name given, like ``rm``; its
data stays under the other names, so no space is freed, and the manifest line and the
message say so (``other_links``).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .audit import recorded_source_sha256
from .provenance import read_record

PathLike = str | os.PathLike[str]
MANIFEST_NAME = "e2compress-deleted.jsonl"
_HASH_STEP = 1 << 22
_KEPT_GROUP = "e2compress/source"  # see e2compress.kept
_ATTR = "e2compress."
EXACT, HALF_STEP = "exact", "within half a step"


@dataclass(frozen=True)
class Deletion:
    """What :func:`delete_source` did with one source."""

    source: str
    deleted: bool
    message: str  # one line: what was deleted, or why the file was kept
    record: dict[str, Any] | None = None  # the manifest line written, if any


class Manifest:
    """An append-only JSON-lines file; each line is written with one ``write`` on a
    descriptor opened for appending, then flushed to disk (``fsync``), so a line is
    whole or absent whatever stops the process, and several processes may share it.

    Raises:
        OSError: the file cannot be opened for appending.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(self._fd).st_size
            if size:  # a line cut short (by a power loss) must not swallow the next one
                with open(self.path, "rb") as fh:
                    fh.seek(size - 1)
                    if fh.read(1) != b"\n":
                        self._write(b"\n")
            if created:
                _fsync_dir(self.path.parent)
        except BaseException:
            os.close(self._fd)
            raise

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        os.fsync(self._fd)

    def append(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line and flush it to disk."""
        self._write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))

    def close(self) -> None:
        """Close the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_manifest(path: PathLike) -> list[dict[str, Any]]:
    """Every whole line of a manifest (a line cut short at the end is left out)."""
    out = []
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break
            try:
                out.append(json.loads(raw))
            except ValueError:
                continue
    return out


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_fd(fd: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while True:
        block = os.pread(fd, _HASH_STEP, offset)
        if not block:
            return digest.hexdigest()
        digest.update(block)
        offset += len(block)


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _delete_parts(
    src: Path,
    out: Path,
    out_sha: str,
    claims: _Claims,
    manifest: Manifest,
    bits: int | str | None,
) -> Deletion:
    """Delete every file of a source of several (the module docstring), or none."""
    from .hashing import parts_digest

    names = claims.parts

    def keep(reason: str, record: dict[str, Any] | None = None) -> Deletion:
        return Deletion(str(src), False, f"{src}: not deleted: {reason}", record)

    what = " and ".join(names)
    if (
        src.name not in names
        or len(set(names)) != len(names)
        or len(names) != len(claims.part_sha256)
    ):
        return keep(f"{out} was made from the files {what}, not from it")
    if claims.restorable_sha256 is None:
        return keep(f"{out} records no SHA-256 of the source it was made from")
    paths = [src.parent / name for name in names]
    fds: list[int] = []
    befores: list[os.stat_result] = []
    shas: list[str] = []
    try:
        for path, recorded in zip(paths, claims.part_sha256, strict=True):
            try:
                lst = os.lstat(path)
                if not stat.S_ISREG(lst.st_mode):
                    return keep(f"{path.name} (of the same source) is not a regular file")
                fds.append(os.open(path, os.O_RDONLY | os.O_NOFOLLOW))
                befores.append(os.fstat(fds[-1]))
                shas.append(_sha256_fd(fds[-1]))
            except OSError as exc:
                return keep(f"{path.name} cannot be read ({exc.strerror or exc})")
            if shas[-1] != recorded:
                return keep(f"{path.name} changed since it was compressed (its SHA-256 differs)")
        if parts_digest(list(zip(names, shas, strict=True))) != claims.restorable_sha256:
            return keep(f"{out} records the SHA-256 of its files inconsistently")
        restored = None
        if claims.exact:
            restored = _restored_sha256(out)
            if restored != claims.restorable_sha256:
                return keep(
                    f"{out} says it restores {what} byte for byte, but the bytes it restores "
                    "do not have their SHA-256"
                )
        try:
            afters = [os.fstat(fd) for fd in fds]
        except OSError as exc:
            return keep(f"cannot be examined ({exc.strerror or exc})")
    finally:
        for fd in fds:
            os.close(fd)
    if [_identity(a) for a in afters] != [_identity(b) for b in befores]:
        return keep("it changed while it was being checked")
    lines = [  # restored_sha256: of both files (hashing.parts_digest)
        _manifest_line(path, before, sha, out, out_sha, bits, claims.exact, restored, paths)
        for path, before, sha in zip(paths, befores, shas, strict=True)
    ]
    line = lines[paths.index(src.parent / src.name)]
    try:
        for each in lines:
            manifest.append(each)
    except OSError as exc:
        return keep(f"the manifest line cannot be written ({exc.strerror or exc})")
    for path, before in zip(paths, befores, strict=True):
        try:
            now = os.lstat(path)
        except OSError as exc:
            return keep(f"{path.name} cannot be examined ({exc.strerror or exc})", line)
        if stat.S_ISLNK(now.st_mode) or _identity(now) != _identity(before):
            return keep(f"{path.name} changed while it was being checked", line)
    gone: list[str] = []
    for path in paths:
        try:
            os.unlink(path)
        except OSError as exc:
            done = f" ({' and '.join(gone)} deleted)" if gone else ""
            return Deletion(
                str(src),
                bool(gone),
                f"{src}: {path.name} cannot be deleted ({exc.strerror or exc}){done}",
                line,
            )
        gone.append(path.name)
    try:
        _fsync_dir(src.parent)
    except OSError:
        pass  # the names are gone; flushing their removal is not a safety matter
    links = sum(b.st_nlink - 1 for b in befores)
    freed = f"; {links} other hard links keep data (less space freed)" if links else ""
    return Deletion(str(src), True, f"{src}: deleted with {what} (in {manifest.path}){freed}", line)


def _manifest_line(
    source: Path,
    before: os.stat_result,
    sha: str,
    out: Path,
    out_sha: str,
    bits: int | str | None,
    exact: bool,
    restored: str | None,
    files: list[Path] | None = None,
) -> dict[str, Any]:
    """The manifest line of one deleted file (``files``: all the files of its source,
    when there are several)."""
    line: dict[str, Any] = {
        "source": os.path.abspath(source),
        "source_size": before.st_size,
        "source_sha256": sha,
    }
    if files is not None:
        line["source_files"] = [os.path.abspath(p) for p in files]
    line.update(
        {
            "output": os.path.abspath(out),
            "output_sha256": out_sha,
            "bits": bits,
            "values": EXACT if exact else HALF_STEP,
            "restore": "byte for byte" if exact else "headers exact, pixels decoded",
            "restored_sha256": restored,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "other_links": before.st_nlink - 1,
        }
    )
    return line


def _text(value: Any) -> str:
    raw = np.asarray(value).reshape(-1)[0]
    if isinstance(raw, bytes | np.bytes_):
        return bytes(raw).decode("utf-8", "surrogateescape")
    return str(raw)


@dataclass(frozen=True)
class _Claims:
    """What the archive says of its source and of restoring it."""

    header_kept: bool
    problem: str | None
    exact: bool
    compression: str
    restorable_sha256: str | None
    parts: tuple[str, ...] = ()  # the files of a source of several (an IMAGIC pair)
    part_sha256: tuple[str, ...] = ()  # of each of them


def _claims(archive: Path) -> _Claims:
    with h5py.File(archive, "r", locking=False) as f:
        group = f.get(_KEPT_GROUP)
        kept = isinstance(group, h5py.Group)
        problem = _text(group.attrs["problem"]) if kept and "problem" in group.attrs else None
        a = f.attrs
        exact = bool(int(np.asarray(a.get(_ATTR + "restorable", 0)).reshape(-1)[0]))
        compression = _text(a.get(_ATTR + "source_compression", b""))
        recorded = a.get(_ATTR + "restorable_sha256")
        parts: tuple[str, ...] = ()
        hashes: tuple[str, ...] = ()
        if kept and "parts" in group.attrs:
            parts = tuple(_text(v) for v in np.asarray(group.attrs["parts"]).reshape(-1))
            hashes = tuple(_text(v) for v in np.asarray(group.attrs["part_sha256"]).reshape(-1))
        return _Claims(
            kept,
            problem,
            exact,
            compression,
            None if recorded is None else _text(recorded),
            parts,
            hashes,
        )


def _restored_sha256(archive: Path) -> str | None:
    from .restore import restored_sha256

    return restored_sha256(archive)


def delete_source(
    source: PathLike,
    archive: PathLike,
    manifest: Manifest,
    *,
    verified: bool,
    bits: int | str | None = None,
) -> Deletion:
    """Delete ``source`` if ``archive`` is proven to hold it (see the module docstring).

    Args:
        source: the input file that was compressed.
        archive: its output.
        manifest: where the line for a deleted file is appended first.
        verified: the archive was verified against the source pixel by pixel.
        bits: the stored bits (for the manifest), e.g. 5 or ``"7-9"``.

    Returns:
        A :class:`Deletion`; ``deleted`` False with the reason when any condition fails.
        Never raises for a problem with the files (it keeps the source instead).
    """
    src, out = Path(source), Path(archive)

    def keep(reason: str, record: dict[str, Any] | None = None) -> Deletion:
        return Deletion(str(src), False, f"{src}: not deleted: {reason}", record)

    if not verified:
        return keep("its output was not verified against it in this run")
    try:
        lst = os.lstat(src)
    except OSError as exc:
        return keep(f"cannot be examined ({exc.strerror or exc})")
    if stat.S_ISLNK(lst.st_mode):
        return keep(
            f"it is a symbolic link (to {os.readlink(src)}); neither the link nor its "
            "target is deleted: name the target itself"
        )
    if not stat.S_ISREG(lst.st_mode):
        return keep("not a regular file")
    try:
        ost = os.stat(out)
        if not stat.S_ISREG(ost.st_mode) or ost.st_size == 0:
            return keep(f"its output {out} is not a complete regular file")
        if (ost.st_dev, ost.st_ino) == (lst.st_dev, lst.st_ino):
            return keep("the output replaced it in place; there is nothing else to delete")
        fd = os.open(out, os.O_RDONLY)
        try:
            os.fsync(fd)
            out_sha = _sha256_fd(fd)
        finally:
            os.close(fd)
        _fsync_dir(out.parent)
    except OSError as exc:
        return keep(f"its output {out} cannot be made durable ({exc.strerror or exc})")
    try:
        claims = _claims(out)
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
        return keep(f"its output {out} cannot be read ({exc})")
    if not claims.header_kept:
        return keep(f"{out} does not keep its header bytes (it could not be restored)")
    if claims.problem is not None:
        return keep(f"its header bytes cannot be restored ({claims.problem})")
    if claims.parts:
        return _delete_parts(src, out, out_sha, claims, manifest, bits)
    recorded = recorded_source_sha256(out)
    if recorded is None:
        return keep(f"{out} records no SHA-256 of the source it was made from")
    record = read_record(out)
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        return keep(f"cannot be opened ({exc.strerror or exc})")
    try:
        before = os.fstat(fd)
        if record is not None and (record.source_size, record.source_mtime_ns) != (
            before.st_size,
            before.st_mtime_ns,
        ):
            return keep("it changed since it was compressed (size or modification time)")
        src_sha = _sha256_fd(fd)
        if src_sha != recorded:
            return keep("it changed since it was compressed (its SHA-256 differs)")
        restored = None
        if claims.exact:
            restored = _restored_sha256(out)
            wanted = claims.restorable_sha256 if claims.compression else src_sha
            if restored is None or restored != wanted:
                return keep(
                    f"{out} says it restores the source byte for byte, but the bytes it "
                    "restores do not have the source's SHA-256"
                )
        after = os.fstat(fd)
    except OSError as exc:
        return keep(f"cannot be read ({exc.strerror or exc})")
    finally:
        os.close(fd)
    if _identity(after) != _identity(before):
        return keep("it changed while it was being checked")
    others = before.st_nlink - 1
    # restored_sha256: for a .gz/.bz2 source, of its decompressed bytes
    line = _manifest_line(src, before, src_sha, out, out_sha, bits, claims.exact, restored)
    try:
        manifest.append(line)
    except OSError as exc:
        return keep(f"the manifest line cannot be written ({exc.strerror or exc})")
    try:
        now = os.lstat(src)
    except OSError as exc:
        return keep(f"cannot be examined ({exc.strerror or exc})", line)
    if stat.S_ISLNK(now.st_mode) or _identity(now) != _identity(before):
        return keep("it changed while it was being checked", line)
    try:
        os.unlink(src)
    except OSError as exc:
        return keep(f"cannot be deleted ({exc.strerror or exc})", line)
    try:
        _fsync_dir(src.parent)
    except OSError:
        pass  # the name is gone; flushing its removal is not a safety matter
    freed = ""
    if others:
        links = "1 other hard link keeps" if others == 1 else f"{others} other hard links keep"
        freed = f"; {links} its data (no space freed)"
    return Deletion(str(src), True, f"{src}: deleted (in {manifest.path}){freed}", line)
