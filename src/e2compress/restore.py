"""``e2compress restore``: rebuild the source file from an archive that kept its bytes.

The archive keeps every byte of the source that is not pixel data, and where the pixels
were (see :mod:`~e2compress.kept`). Restoring writes the kept bytes with the decoded
images put back in between, in the source's type and byte order (TIFF rows flipped back,
MINISWHITE negated back, MRC axes transposed back). When every value was stored
exactly the result is the source byte for byte, which the recorded SHA-256 proves;
otherwise (quantised values) the headers are identical and the pixels are the decoded
values, and the result says so.

Names stored in an archive are data, not paths: the file is written into the directory
it is given (or beside the archive) under the stored name only when that is a plain
file name; anything else (``../x``, ``/etc/x``, ``a/b``) is refused.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .atomic import AtomicOutput, check_output_dir, os_error
from .eman_hdf import EmanHdfFile, decode
from .errors import E2CompressError, InputError, OutputError
from .kept import ATTR, ENCODED, FLIP, GROUP, NEGATE, PERMUTED, PIECE_COLUMNS
from .quantize import F32, RenderRange, integer_step
from .read_mrc import axis_permutation
from .sources import strip_compression

PathLike = str | os.PathLike[str]
_STEP = 1 << 22  # bytes of kept data read at a time
_FLAGS = FLIP | NEGATE | PERMUTED | ENCODED

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

    def describe(self) -> str:
        """One line for the command line."""
        if self.byte_identical:
            return f"{self.path}: restored byte for byte ({self.size} bytes, SHA-256 {self.sha256})"
        if self.quantised:
            why = "values were quantised: headers identical, pixels are the decoded values"
        else:
            why = "differs from the source although no image was quantised"
        return f"{self.path}: restored, NOT byte-identical ({why}; SHA-256 {self.sha256})"


def _text(value: Any) -> str:
    raw = np.asarray(value).reshape(-1)[0]
    if isinstance(raw, bytes | np.bytes_):
        return bytes(raw).decode("utf-8", "surrogateescape")
    return str(raw)


def recorded_sha256(archive: PathLike) -> str | None:
    """The SHA-256 of the bytes ``restore`` must write (the source file; for a
    ``.gz``/``.bz2`` source, its decompressed bytes), as recorded; None if not recorded."""
    try:
        with h5py.File(archive, "r", locking=False) as f:
            value = f.attrs.get(ATTR + "restorable_sha256")
            return None if value is None else _text(value)
    except (OSError, ValueError, TypeError):
        return None


class _Archive:
    """The kept bytes and pixel layout of an archive, checked against each other."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.images = EmanHdfFile(path, threads=1)
        try:
            self._load()
        except E2CompressError:
            self.images.close()
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
            self.images.close()
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"damaged kept source bytes ({text})", path) from None

    def _fail(self, reason: str) -> InputError:
        return InputError(reason, self.path)

    def _load(self) -> None:
        f = self.images.h5file
        group = f.get(GROUP)
        if not isinstance(group, h5py.Group):
            raise self._fail(
                "keeps no source bytes (not made from an MRC or TIFF file, or by an "
                "e2compress that did not keep them); nothing to restore"
            )
        if "problem" in group.attrs:
            raise self._fail(f"cannot be restored: {_text(group.attrs['problem'])}")
        self.format = _text(group.attrs["format"])
        self.size = int(np.asarray(group.attrs["size"]).reshape(-1)[0])
        self.axes = tuple(int(a) for a in np.asarray(group.attrs["axes"]).reshape(-1))
        self.dtypes = [
            _dtype(_text(d), self.path)
            for d in np.asarray(group.attrs["dtypes"]).reshape(-1)
            if _text(d)
        ]
        kept = group["kept"]
        pieces = group["pieces"]
        if kept.ndim != 1 or kept.dtype != np.uint8:
            raise self._fail("kept source bytes have the wrong type")
        if pieces.ndim != 2 or pieces.shape[1] != len(PIECE_COLUMNS) or pieces.dtype.kind != "i":
            raise self._fail("pixel layout has the wrong shape")
        if pieces.shape[0] > 1 << 26:
            raise self._fail(f"pixel layout has too many runs ({pieces.shape[0]})")
        self.kept = kept
        self.pieces = np.asarray(pieces[()], dtype=np.int64)
        self.compression = _text(f.attrs.get(ATTR + "source_compression", b""))
        name = f.attrs.get(ATTR + "restorable_name")
        if name is None:
            name = f.attrs.get(ATTR + "source_name")
            self.name = None if name is None else strip_compression(_text(name))
        else:
            self.name = _text(name)
        exact = f.attrs.get(ATTR + "restorable")
        self.exact = exact is not None and bool(np.asarray(exact).reshape(-1)[0])
        recorded = f.attrs.get(ATTR + "restorable_sha256")
        self.recorded = None if recorded is None else _text(recorded)
        self._check()

    def _check(self) -> None:
        """Every number of the layout against the others and against the images."""
        p = self.pieces
        if self.size < 0:
            raise self._fail(f"invalid restorable size {self.size}")
        if len(self.axes) != 3:
            raise self._fail("invalid axis order")
        count = len(self.images)
        pos = 0
        for offset, nbytes, image, element, dtype, flags in p.tolist():
            if offset < pos or nbytes <= 0 or offset + nbytes > self.size:
                raise self._fail(
                    f"pixel run at byte {offset} ({nbytes} bytes) overlaps another or "
                    f"leaves the file ({self.size} bytes)"
                )
            if not 0 <= dtype < len(self.dtypes) or not 0 <= image < count or element < 0:
                raise self._fail(f"pixel run at byte {offset} names no stored image or type")
            if nbytes % self.dtypes[dtype].itemsize or flags & ~_FLAGS:
                raise self._fail(f"pixel run at byte {offset} is not whole values")
            pos = offset + nbytes
        total = int(p[:, 1].sum()) if len(p) else 0
        if self.kept.shape[0] != self.size - total:
            raise self._fail(
                f"holds {self.kept.shape[0]} kept bytes, its layout needs {self.size - total}"
            )
        if len(p) and bool(np.any(p[:, 5] & ENCODED)):
            raise self._fail(
                "cannot be restored byte for byte: the source's pixels were compressed "
                "(TIFF compression); use export to write the images"
            )
        values = sum(int(np.prod(self.images.shape(i))) for i in range(count))
        needed = sum(nb // self.dtypes[dt].itemsize for _, nb, _, _, dt, _ in p.tolist())
        if needed > values:
            raise self._fail(f"its layout needs {needed} values, the images hold {values}")

    def _shape3(self, index: int) -> tuple[int, int, int]:
        shape = self.images.shape(index)
        full = (1,) * (3 - len(shape)) + tuple(int(s) for s in shape)
        return full[0], full[1], full[2]

    @property
    def quantised(self) -> bool:
        return any(self.images.render_range(i) is not None for i in range(len(self.images)))

    def close(self) -> None:
        self.images.close()

    # ------------------------------------------------------------------ the bytes

    def chunks(self) -> Iterator[bytes | memoryview]:
        """The restored file, in order, a bounded piece at a time."""
        values = _Values(self)
        pos = 0
        kept_pos = 0
        for offset, nbytes, image, element, dtype, flags in self.pieces.tolist():
            if offset > pos:
                yield from self._kept(kept_pos, offset - pos)
                kept_pos += offset - pos
            yield from values.run(image, element, nbytes, self.dtypes[dtype], flags)
            pos = offset + nbytes
        if pos < self.size:
            yield from self._kept(kept_pos, self.size - pos)

    def _kept(self, start: int, length: int) -> Iterator[bytes]:
        for a in range(start, start + length, _STEP):
            b = min(a + _STEP, start + length)
            data = np.asarray(self.kept[a:b], dtype=np.uint8)
            if data.size != b - a:
                raise self._fail("kept source bytes are cut short")
            yield data.tobytes()


def _dtype(text: str, path: Path) -> np.dtype:
    try:
        dtype = np.dtype(text)
    except TypeError:
        raise InputError(f"invalid stored pixel type {text!r}", path) from None
    if dtype.kind not in "iuf" or dtype.itemsize > 8 or dtype.names is not None:
        raise InputError(f"invalid stored pixel type {text!r}", path)
    return dtype


class _Values:
    """The images as the source stored them: one section at a time, in the source's
    type and byte order, in file order (the last section kept for the next run)."""

    def __init__(self, archive: _Archive) -> None:
        self.archive = archive
        self._cache: tuple[tuple[int, int, str, int], np.ndarray] | None = None
        self._whole: dict[tuple[str, int], np.ndarray] = {}

    def run(
        self, image: int, element: int, nbytes: int, dtype: np.dtype, flags: int
    ) -> Iterator[memoryview]:
        n = nbytes // dtype.itemsize
        if flags & PERMUTED:
            whole = self._permuted(dtype, flags)
            if element + n > whole.size:
                raise self.archive._fail("pixel run is longer than the stored images")
            yield whole[element : element + n].data.cast("B")
            return
        count = len(self.archive.images)
        while n > 0:
            nz, ny, nx = self.archive._shape3(image)
            per = ny * nx
            if element >= nz * per:
                element -= nz * per
                image += 1
                if image >= count:
                    raise self.archive._fail("pixel run is longer than the stored images")
                continue
            z, off = divmod(element, per)
            section = self._section(image, z, dtype, flags)
            take = min(n, per - off)
            yield section[off : off + take].data.cast("B")
            element += take
            n -= take

    def _section(self, image: int, z: int, dtype: np.dtype, flags: int) -> np.ndarray:
        key = (image, z, dtype.str, flags)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        self._cache = None
        ds = self.archive.images.dataset(image)
        region: tuple[Any, ...] = (z,) if ds.ndim == 3 else ()
        codes = np.asarray(ds[region] if region else ds[()])
        _, ny, nx = self.archive._shape3(image)
        values = _convert(
            codes.reshape(ny, nx), self.archive.images.render_range(image), dtype, flags
        )
        flat = np.ascontiguousarray(values).reshape(-1)
        self._cache = (key, flat)
        return flat

    def _permuted(self, dtype: np.dtype, flags: int) -> np.ndarray:
        """All images transposed back to the file's axis order (MRC), flattened."""
        key = (dtype.str, flags)
        if key not in self._whole:
            perm = axis_permutation(
                (self.archive.axes[0], self.archive.axes[1], self.archive.axes[2])
            )
            if perm is None:
                raise self.archive._fail(f"invalid axis order {self.archive.axes}")
            images = self.archive.images
            parts = [
                _convert(np.asarray(images.dataset(i)[()]), images.render_range(i), dtype, 0)
                for i in range(len(images))
            ]
            data = np.stack(parts) if len(parts) > 1 else parts[0]
            if data.ndim == 2:
                data = data[np.newaxis]
            inverse = tuple(int(a) for a in np.argsort(perm))
            self._whole[key] = np.ascontiguousarray(data.transpose(inverse)).reshape(-1)
        return self._whole[key]


def _convert(codes: np.ndarray, rng: RenderRange | None, dtype: np.dtype, flags: int) -> np.ndarray:
    """Stored codes to values in ``dtype`` (rows flipped and negated per ``flags``)."""
    values: np.ndarray
    if rng is None:
        values = codes
    else:
        step = integer_step(rng)
        if step is not None and dtype.kind in "iu":  # exact in float64 at any magnitude
            values = float(F32(rng.rmin)) + codes.astype(np.float64) * step
        else:
            values = decode(codes, rng)
    if flags & FLIP:
        values = values[::-1]
    if flags & NEGATE:
        values = -values.astype(np.float64 if values.dtype.kind == "f" else np.int64)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if values.dtype.kind == "f":
            values = np.rint(values)
        values = np.clip(values, info.min, info.max)
    with np.errstate(over="ignore", invalid="ignore"):
        return values.astype(dtype)


# ---------------------------------------------------------------------- public API


def restored_sha256(archive: PathLike) -> str | None:
    """SHA-256 (hex) of the exact bytes :func:`restore_file` would write, computed
    streaming without writing a file; None when the archive cannot be restored byte
    for byte (quantised values, no kept bytes, or a result that differs from the
    recorded SHA-256).

    Args:
        archive: an EMAN2 HDF file written by e2compress.
    """
    try:
        arch = _Archive(Path(archive))
    except E2CompressError:
        return None
    try:
        digest = hashlib.sha256()
        for chunk in arch.chunks():
            digest.update(chunk)
        got = digest.hexdigest()
        return got if got == arch.recorded else None
    except E2CompressError:
        return None
    except (OSError, RuntimeError, ValueError, KeyError) as exc:  # damaged datasets
        del exc
        return None
    finally:
        arch.close()


def stored_name(name: str | None, archive: Path) -> str:
    """The file name to restore to: the stored source name when it is a plain name.

    Raises:
        InputError: no name is stored, or it is not a plain file name (a path, ``..``,
            a NUL): names in an archive are data, never paths.
    """
    if not name:
        raise InputError("records no source name; give the output file name", archive)
    if "/" in name or "\\" in name or "\0" in name or name in (".", "..") or name.strip() == "":
        raise InputError(
            f"records the source name {name!r}, which is not a plain file name; refused "
            "(give the output file name)",
            archive,
        )
    return name


def restore_file(
    archive: PathLike, out: PathLike | None = None, *, overwrite: bool = False
) -> RestoreResult:
    """Rebuild the source of ``archive``.

    Args:
        archive: an EMAN2 HDF file written by e2compress from an MRC or TIFF file.
        out: the file to write, or an existing directory to write the source's name
            into; default: the source's name beside the archive.
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
    arch = _Archive(path)
    try:
        target = _target(arch, path, out)
        if target.exists() or target.is_symlink():
            if target.is_dir():
                raise OutputError("output path is a directory", target)
            if _same(target, path):
                raise OutputError("output would replace the archive itself", target)
            if not overwrite:
                raise OutputError("output exists; not replaced (--force replaces it)", target)
        check_output_dir(target)
        digest = hashlib.sha256()
        size = 0
        with AtomicOutput(target) as tmp:
            try:
                with open(tmp.path, "wb") as fh:
                    for chunk in arch.chunks():
                        fh.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                got = digest.hexdigest()
                if got != arch.recorded and (arch.exact or not arch.quantised):
                    raise InputError(
                        f"the rebuilt file's SHA-256 {got} differs from the recorded "
                        f"{arch.recorded} although every value was stored exactly "
                        "(damaged archive?); nothing written",
                        path,
                    )
                tmp.commit()
            except OSError as exc:
                raise os_error(exc, target) from None
        return RestoreResult(target, got == arch.recorded, got, arch.recorded, size, arch.quantised)
    finally:
        arch.close()


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _target(arch: _Archive, archive: Path, out: PathLike | None) -> Path:
    if out is not None and not Path(out).is_dir():
        return Path(out)
    directory = Path(out) if out is not None else archive.parent
    return directory / stored_name(arch.name, archive)
