"""``e2compress restore``: rebuild the source file from an archive that kept its bytes.

The archive keeps every byte of the source that is not pixel data, and where the pixels
were (see :mod:`~e2compress.kept`). Restoring writes the kept bytes with the decoded
images put back in between, in the source's type and byte order (TIFF rows flipped back,
MINISWHITE negated back, MRC axes transposed back: :mod:`~e2compress.rebuild` makes the
bytes; this module writes and checks them). When every value was stored
exactly the result is the source byte for byte, which the recorded SHA-256 proves;
otherwise (quantised values) the headers are identical and the pixels are the decoded
values, and the result says so. A source of several files (an IMAGIC pair) is written
as its files, side by side, each checked against its own recorded SHA-256.

Names stored in an archive are data, not paths: the file is written into the directory
it is given (or beside the archive) under the stored name only when that is a plain
file name; anything else (``../x``, ``/etc/x``, ``a/b``) is refused.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from .atomic import AtomicOutput, check_output_dir, os_error
from .errors import E2CompressError, InputError, OutputError
from .kept import recorded_sha256
from .rebuild import STEP, KeptSource, stored_name

PathLike = str | os.PathLike[str]

__all__ = ["RestoreResult", "recorded_sha256", "restore_file", "restored_sha256"]


@dataclass(frozen=True)
class RestoreResult:
    """What :func:`restore_file` wrote."""

    path: Path  # the file written
    byte_identical: bool  # its SHA-256 equals the recorded one
    sha256: str  # of the file written
    recorded_sha256: str | None  # of the source's restorable bytes, as recorded
    size: int  # bytes written
    quantised: bool  # some images were stored quantised: their pixels are decoded values
    reencoded: bool = False  # compressed TIFF strips were encoded again
    compression: str = ""  # of the original input ("gzip", "bzip2"): restored decompressed
    note: str = ""  # what the archive recorded it could restore (``restore_note``)
    others: tuple[Path, ...] = ()  # the other files of a source of several (IMAGIC .img)

    def describe(self) -> str:
        """One line for the command line."""
        if self.others and self.byte_identical:
            names = " and ".join(str(p) for p in (self.path, *self.others))
            return f"{names}: restored byte for byte ({self.size} bytes, each file's SHA-256 equal)"
        if self.byte_identical:
            what = f"the decompressed {self.compression} source, " if self.compression else ""
            return (
                f"{self.path}: restored byte for byte ({what}{self.size} bytes, "
                f"SHA-256 {self.sha256})"
            )
        if self.quantised:
            why = "values were quantised: headers identical, pixels are the decoded values"
        elif self.reencoded:
            why = "compressed TIFF strips encoded again: tags and pixels identical"
        else:
            why = self.note or "differs from the recorded SHA-256"
        return f"{self.path}: restored, NOT byte-identical ({why}; SHA-256 {self.sha256})"


def restored_sha256(archive: PathLike) -> str | None:
    """SHA-256 (hex) of the exact bytes :func:`restore_file` would write, computed
    streaming without writing a file; None when the archive cannot be restored byte
    for byte (values quantised off whole-number levels, which is known without
    decoding; no kept bytes; or a result that differs from the recorded SHA-256).

    Args:
        archive: an EMAN2 HDF file written by e2compress.
    """
    try:
        arch = KeptSource(Path(archive))
    except E2CompressError:
        return None
    try:
        if not arch.could_be_exact():
            return None
        count = len(arch.bounds())
        digests = [hashlib.sha256() for _ in range(count)]
        pos = [0] * count
        for k, offset, chunk in arch.split():
            if offset != pos[k]:  # strips moved: not the source's bytes
                return None
            digests[k].update(chunk)
            pos[k] += len(chunk)
        got = arch.combined([d.hexdigest() for d in digests])
        return got if got == arch.recorded else None
    except (E2CompressError, OSError, RuntimeError, ValueError, KeyError):  # damaged
        return None
    finally:
        arch.close()


def restore_file(
    archive: PathLike, out: PathLike | None = None, *, overwrite: bool = False
) -> RestoreResult:
    """Rebuild the source of ``archive``.

    Args:
        archive: an EMAN2 HDF file written by e2compress from an MRC, TIFF, SPIDER,
            IMAGIC, DM3/DM4 or SER file.
        out: the file to write, or an existing directory to write the source's name
            into; default: the source's name beside the archive. A source of several
            files (an IMAGIC pair) is written under its files' names; a file name
            ``out`` gives them its stem (``out.hed`` and ``out.img``).
        overwrite: replace an existing file.

    Returns:
        A :class:`RestoreResult`; ``byte_identical`` is True only when the SHA-256 of
        what was written equals the recorded one.

    Raises:
        InputError: the archive keeps no source bytes, is damaged, or names its source
            with something that is not a plain file name (and ``out`` is no file name).
        OutputError: the output exists (without ``overwrite``) or cannot be written;
            nothing is left behind.
    """
    path = Path(archive)
    if not path.is_file():
        raise InputError("no such file", path)
    arch = KeptSource(path)
    try:
        targets = _targets(arch, path, out)
        target = targets[0]
        if len(set(targets)) != len(targets):
            raise OutputError("the source's files would be written to one name", target)
        for each in targets:
            if each.exists() or each.is_symlink():
                if each.is_dir():
                    raise OutputError("output path is a directory", each)
                if _same(each, path):
                    raise OutputError("output would replace the archive itself", each)
                if not overwrite:
                    raise OutputError("output exists; kept (overwrite=True replaces it)", each)
        check_output_dir(target)
        free = _free_bytes(target.parent)
        if free is not None and arch.size > free:
            raise OutputError(
                f"restoring needs {arch.size} bytes, {target.parent} has {free} free", target
            )
        with ExitStack() as stack:
            tmps = [stack.enter_context(AtomicOutput(each)) for each in targets]
            try:
                got, size = _write(arch, [tmp.path for tmp in tmps])
                if got != arch.recorded and arch.exact:
                    raise InputError(
                        f"the rebuilt file's SHA-256 {got} differs from the recorded "
                        f"{arch.recorded} although every value was stored exactly "
                        "(damaged archive?); nothing written",
                        path,
                    )
                for tmp in tmps:
                    tmp.commit()
            except OSError as exc:
                raise os_error(exc, target) from None
        return RestoreResult(
            target,
            got == arch.recorded,
            got,
            arch.recorded,
            size,
            arch.quantised,
            arch.has_encoded,
            arch.compression,
            arch.note,
            tuple(targets[1:]),
        )
    finally:
        arch.close()


def _write(arch: KeptSource, paths: list[Path]) -> tuple[str, int]:
    """Write the restored file (each file of a source of several) to ``paths``; the
    digest to compare with the recorded one, and the bytes written. Each file is hashed
    as written when it is written in order, else read back once (strips moved)."""
    digests = [hashlib.sha256() for _ in paths]
    pos = [0] * len(paths)
    in_order = [True] * len(paths)
    fds: list[int] = []
    try:
        for each in paths:
            fds.append(os.open(each, os.O_WRONLY | os.O_TRUNC))
        for k, offset, view in arch.split():
            done = 0
            while done < len(view):
                done += os.pwrite(fds[k], view[done:], offset + done)
            if in_order[k] and offset == pos[k]:
                digests[k].update(view)
                pos[k] += len(view)
            else:
                in_order[k] = False
        size = sum(os.fstat(fd).st_size for fd in fds)
    finally:
        for fd in fds:
            os.close(fd)
    for k, each in enumerate(paths):
        if not in_order[k]:
            digests[k] = hashlib.sha256()
            with open(each, "rb") as fh:
                while block := fh.read(STEP):
                    digests[k].update(block)
    return arch.combined([d.hexdigest() for d in digests]), size


def _free_bytes(directory: Path) -> int | None:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _targets(arch: KeptSource, archive: Path, out: PathLike | None) -> list[Path]:
    """The file to write, or each file of a source of several (an ``out`` that is a
    file name then names them all: its stem with each stored file's suffix)."""
    if out is not None and os.fspath(out).endswith(os.sep) and not Path(out).is_dir():
        raise OutputError(f"no such directory: {os.fspath(out)}", archive)
    if arch.parts:
        names = [stored_name(name, archive) for name, _, _ in arch.parts]
        if out is not None and not Path(out).is_dir():
            return [Path(out).with_suffix(Path(name).suffix) for name in names]
        directory = Path(out) if out is not None else archive.parent
        return [directory / name for name in names]
    if out is not None and not Path(out).is_dir():
        return [Path(out)]
    directory = Path(out) if out is not None else archive.parent
    return [directory / stored_name(arch.name, archive)]
