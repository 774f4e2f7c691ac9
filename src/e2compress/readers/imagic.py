"""IMAGIC-5 input: a ``.hed`` header file (1024 bytes per image) beside a ``.img`` data file.

No maintained Python library reads IMAGIC (EMAN2, SPIDER, Xmipp and RELION each carry
their own C++ reader), so this is a small numpy reader of the layout EMAN2's
``imagicio2.cpp`` reads and writes. Header words (int32, 1-based as in the IMAGIC
documentation): 2 ``count`` (images - 1, first header), 4 ``headrec`` (1; it also tells
the byte order), 13 lines ``ny``, 14 pixels per line ``nx``, 15 type (``REAL`` float32,
``INTG`` int16), 61 ``izlp`` (sections of a 3-D image), 69 ``realtype`` (the machine
stamp that marks the IMAGIC-5 layout), 123-125 the pixel size in Angstrom.

Sizes first: ``.hed`` must hold exactly ``count + 1`` headers and ``.img`` exactly their
pixels, and every image's header must give the first image's dimensions (IMAGIC's
data file has no per-image offsets), before any pixel is read.

Rows are stored top line first, so they are flipped to EMAN2's bottom-up order. EMAN2
2.99 flips them with nx and ny exchanged, which garbles non-square images (EMAN2
writes them correctly): for those our values are the ones EMAN2 wrote, not the ones
its reader returns.

Opened with ``keep``, the ``.hed`` file is kept whole and the ``.img`` file (pixels
only) is one pixel run with rows flipped back: the pair is restored as two files (see
:mod:`~e2compress.kept`), each with its own SHA-256 (the ``.img``'s from the reads).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..hashing import OrderedHasher, parts_digest, read_exact
from ..kept import FLIP, KEPT_LIMIT, Kept, Layout, pieces_array
from .base import ImageSource, reason

HEADER_BYTES = 1024
MACHINE_STAMPS = (16777216, 33686018, 67372036)  # VAX/VMS, little-endian, big-endian
TYPES: dict[bytes, np.dtype] = {b"REAL": np.dtype(np.float32), b"INTG": np.dtype(np.int16)}
_SCAN = 4096  # headers checked per read at open
# EMAN2's IMAGIC.* header keys: name -> 0-based word, "i" int32 or "f" float32
_KEYS: dict[str, tuple[int, str]] = {
    "imgnum": (0, "i"),
    "count": (1, "i"),
    "error": (2, "i"),
    "month": (4, "i"),
    "day": (5, "i"),
    "year": (6, "i"),
    "hour": (7, "i"),
    "minute": (8, "i"),
    "sec": (9, "i"),
    "rsize": (10, "i"),
    "izold": (11, "i"),
    "ixold": (15, "i"),
    "iyold": (16, "i"),
    "complex": (23, "i"),
    "defocus1": (24, "f"),
    "defocus2": (25, "f"),
    "defangle": (26, "f"),
    "sinostart": (27, "f"),
    "sinoend": (28, "f"),
    "ccc3d": (49, "f"),
    "ref3d": (50, "i"),
    "mident": (51, "i"),
    "ezshift": (52, "i"),
    "ealpha": (53, "i"),
    "ebeta": (54, "i"),
    "egamma": (55, "i"),
    "nalisum": (58, "i"),
    "pgroup": (59, "i"),
    "i4lp": (61, "i"),
    "alpha": (64, "f"),
    "beta": (65, "f"),
    "gamma": (66, "f"),
    "imavers": (67, "i"),
    "realtype": (68, "i"),
    "angle": (99, "f"),
    "voltage": (100, "f"),
    "spaberr": (101, "i"),
    "pcoher": (102, "i"),
    "ccc": (103, "f"),
    "errar": (104, "f"),
    "err3d": (105, "f"),
    "ref": (106, "i"),
    "locold": (108, "f"),
    "repqual": (109, "f"),
    "zshift": (110, "f"),
    "xshift": (111, "f"),
    "yshift": (112, "f"),
    "numcls": (113, "f"),
    "ovqual": (114, "f"),
    "eangle": (115, "f"),
    "exshift": (116, "f"),
    "eyshift": (117, "f"),
    "cmtotvar": (118, "f"),
    "informat": (119, "f"),
    "numeigen": (120, "i"),
    "niactive": (121, "i"),
    "alpha2": (125, "f"),
    "beta2": (126, "f"),
    "gamma2": (127, "f"),
    "nmetric": (128, "f"),
    "actmsa": (129, "f"),
}
APIX_RANGE = (0.01, 1000.0)


def imagic_pair(path: Path) -> tuple[Path, Path]:
    """The ``(.hed, .img)`` paths of the IMAGIC pair ``path`` belongs to (same case)."""
    suffix = path.suffix
    hed = ".HED" if suffix.isupper() else ".hed"
    img = ".IMG" if suffix.isupper() else ".img"
    return path.with_suffix(hed), path.with_suffix(img)


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


class ImagicSource(ImageSource):
    """An IMAGIC ``.hed``/``.img`` pair (see the module docstring), opened by either name.

    Raises:
        InputError: a missing or unreadable half, not IMAGIC-5, an unsupported type
            (``PACK``, ``COMP``), or sizes that disagree with the files.
    """

    kind = "imagic"

    def __init__(self, path: Path, *, keep: bool = False) -> None:
        self.path = path
        self._hed_path, self._img_path = imagic_pair(path)
        self._hed_fd: int | None = None
        self._keep = keep
        self._hasher: OrderedHasher | None = None
        self._hed_bytes: bytes | None = None
        self._hed_sha256 = ""
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open_half(self, p: Path) -> int:
        if not p.exists():
            raise InputError(f"IMAGIC {p.suffix} file {p.name} is missing", self.path)
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError as exc:
            raise InputError(f"cannot open {p.name}: {reason(exc)}", self.path) from None
        return fd

    def _open(self) -> None:
        self._hed_fd = self._open_half(self._hed_path)
        self._fd = self._open_half(self._img_path)
        hed_size = os.fstat(self._hed_fd).st_size
        img_size = os.fstat(self._fd).st_size
        if hed_size < HEADER_BYTES:
            raise InputError(f"IMAGIC header file is too short ({hed_size} bytes)", self.path)
        first = self._pread_hed(HEADER_BYTES, 0)
        self._order = self._byte_order(first)
        words = np.frombuffer(first, self._order + "i4")
        kind = first[56:60]
        if kind not in TYPES:
            text = kind.decode("ascii", "replace")
            msg = f"unsupported IMAGIC type {text!r} (REAL and INTG are read)"
            raise InputError(msg, self.path)
        self._dtype = np.dtype(self._order + TYPES[kind].str[1:])
        count = int(words[1]) + 1
        ny, nx, nz = int(words[12]), int(words[13]), int(words[60]) or 1
        if count < 1 or min(nx, ny, nz) < 1:
            raise InputError(f"invalid IMAGIC header: {count} images of {nx}x{ny}x{nz}", self.path)
        if hed_size != count * HEADER_BYTES:
            what = "truncated" if hed_size < count * HEADER_BYTES else "longer than its count"
            raise InputError(
                f"IMAGIC header file is {what}: count says {count} images "
                f"({count * HEADER_BYTES} bytes), {self._hed_path.name} has {hed_size}",
                self.path,
            )
        self._shape = (nz, ny, nx)
        self._image_bytes = nx * ny * nz * self._dtype.itemsize
        expected = count * self._image_bytes
        if img_size != expected:
            what = "truncated" if img_size < expected else "longer than its header says"
            raise InputError(
                f"IMAGIC data file is {what}: {count} images of {nx}x{ny}x{nz} "
                f"{kind.decode()} need {expected} bytes, {self._img_path.name} has {img_size}",
                self.path,
            )
        self._count = count
        self._sizes = (hed_size, img_size)
        self._check_dimensions()
        if self._keep:
            self._hasher = OrderedHasher(img_size)
            if hed_size <= KEPT_LIMIT:
                try:
                    self._hed_bytes = read_exact(self._pread_hed, hed_size, 0)
                except OSError as exc:
                    raise InputError(
                        f"cannot read IMAGIC header: {reason(exc)}", self.path
                    ) from None
                self._hed_sha256 = hashlib.sha256(self._hed_bytes).hexdigest()

    def _pread_hed(self, size: int, offset: int) -> bytes:
        """``size`` bytes of the ``.hed`` file at ``offset`` (OSError once closed)."""
        if self._hed_fd is None:
            raise OSError("file is closed")
        return os.pread(self._hed_fd, size, offset)

    def _hed_bytes_at(self, size: int, offset: int) -> bytes:
        """:meth:`_pread_hed`, failing with one line naming the file."""
        try:
            return self._pread_hed(size, offset)
        except OSError as exc:
            raise InputError(f"cannot read IMAGIC header: {reason(exc)}", self.path) from None

    def kept(self) -> Kept | None:
        """The ``.hed`` bytes, the ``.img`` as one pixel run (rows flipped back) and the
        SHA-256 of each file (see the module docstring); None when opened without
        ``keep``.

        Raises:
            InputError: the files cannot be read to their end.
        """
        if not self._keep or self._hasher is None:
            return None
        hed_size, img_size = self._sizes
        try:
            img_sha = self._hasher.finish(self._pread)
        except OSError as exc:
            raise InputError(
                f"cannot read {self._img_path.name}: {reason(exc)}", self.path
            ) from None
        hed, img = self._hed_path.name, self._img_path.name
        parts = [(hed, hed_size, self._hed_sha256), (img, img_size, img_sha)]
        pieces = pieces_array([(hed_size, img_size, 0, 0, 0, FLIP)])
        layout = Layout("imagic", hed_size + img_size, pieces, [self._dtype.str], parts=parts)
        if self._hed_bytes is None:
            problem = f"its header file ({hed_size} bytes) is too large to keep"
            layout = Layout("imagic", hed_size + img_size, pieces_array([]), [], problem=problem)
        digest = parts_digest([(hed, self._hed_sha256), (img, img_sha)])
        return Kept(layout, self._hed_bytes or b"", digest, None, hed)

    def _byte_order(self, first: bytes) -> str:
        """``<`` or ``>``: the order in which ``headrec`` is 1 and the stamp is IMAGIC-5's."""
        for order in ("<", ">"):
            words = np.frombuffer(first, order + "i4")
            if int(words[3]) == 1 and int(words[68]) in MACHINE_STAMPS:
                return order
        raise InputError("not an IMAGIC-5 header (headrec or machine stamp wrong)", self.path)

    def _check_dimensions(self) -> None:
        """Every image's header must give the first image's nx, ny, nz; also notes which
        header words are the same in every image (for :meth:`shared_keys`)."""
        nz, ny, nx = self._shape
        first: np.ndarray | None = None
        same = np.ones(256, dtype=bool)
        for start in range(0, self._count, _SCAN):
            n = min(_SCAN, self._count - start)
            raw = self._hed_bytes_at(n * HEADER_BYTES, start * HEADER_BYTES)
            if len(raw) != n * HEADER_BYTES:
                raise InputError("IMAGIC header file ended while reading", self.path)
            words = np.frombuffer(raw, self._order + "i4").reshape(n, 256)
            dims = np.stack([words[:, 13], words[:, 12], np.maximum(words[:, 60], 1)], axis=1)
            bad = np.flatnonzero((dims != (nx, ny, nz)).any(axis=1))
            if bad.size:
                k = int(bad[0])
                got = "x".join(str(int(v)) for v in dims[k])
                raise InputError(
                    f"IMAGIC image {start + k} is {got}, image 0 is {nx}x{ny}x{nz}", self.path
                )
            first = words[0].copy() if first is None else first
            same &= (words == first).all(axis=0)
        self._same_words = same

    def __len__(self) -> int:
        return self._count

    def shape(self, index: int) -> tuple[int, int, int]:
        """(nz, ny, nx), the same for every image (checked when opened)."""
        return self._shape

    def dtype(self, index: int) -> np.dtype:
        """The file's pixel type, in native byte order."""
        native: np.dtype = self._dtype.newbyteorder("=")
        return native

    def read(self, index: int, z: int, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` of section ``z`` of image ``index``, counted from the last
        stored row, as EMAN2 reads IMAGIC.

        Raises:
            InputError: the ``.img`` file cannot be read or ended early.
        """
        _, ny, nx = self._shape
        row = nx * self._dtype.itemsize
        start = index * self._image_bytes + (z * ny + ny - y1) * row  # rows are stored top first
        size = (y1 - y0) * row
        try:
            buf = self._pread(size, start)
        except OSError as exc:
            raise InputError(f"cannot read IMAGIC pixels: {reason(exc)}", self.path) from None
        if len(buf) != size:
            raise InputError("IMAGIC data file ended while reading pixels", self.path)
        if self._hasher is not None:
            self._hasher.feed(start, buf)
        rows = np.frombuffer(buf, self._dtype).reshape(y1 - y0, nx)[::-1]
        return rows.astype(self.dtype(index))

    def shared_keys(self) -> frozenset[str]:
        """Keys whose header words are the same in every image (stored once for a stack)."""
        same = self._same_words
        words: dict[str, tuple[int, ...]] = {f"IMAGIC.{k}": (w,) for k, (w, _) in _KEYS.items()}
        words |= {
            "IMAGIC.classno": (106,),
            "IMAGIC.type": (14,),
            "IMAGIC.label": tuple(range(29, 49)),
            "IMAGIC.history": tuple(range(199, 256)),
            "orientation_convention": (),
            "apix_x": (122, 123, 124),
            "apix_y": (122, 123, 124),
            "apix_z": (122, 123, 124),
        }
        for key in ("alpha", "beta", "gamma"):
            words[f"euler_{key}"] = words[f"IMAGIC.{key}"]
        for k, key in enumerate(("alpha2", "beta2", "gamma2"), 1):
            words[f"IMAGIC.{key}"] = words[f"IMAGIC.fabosa{k}"] = (104, 124 + k)
        return frozenset(key for key, ws in words.items() if all(same[w] for w in ws))

    def header(self, index: int) -> dict[str, Any]:
        """Image ``index``'s ``IMAGIC.*`` keys, Euler angles and ``apix_*`` (when
        plausible), as EMAN2 reads them.

        Raises:
            InputError: the ``.hed`` file cannot be read or ended early.
        """
        raw = self._hed_bytes_at(HEADER_BYTES, index * HEADER_BYTES)
        if len(raw) != HEADER_BYTES:
            raise InputError("IMAGIC header file ended while reading", self.path)
        ints = np.frombuffer(raw, self._order + "i4")
        floats = np.frombuffer(raw, self._order + "f4")
        out: dict[str, Any] = {}
        for key, (word, kind) in _KEYS.items():
            out[f"IMAGIC.{key}"] = int(ints[word]) if kind == "i" else np.float32(floats[word])
        out["IMAGIC.classno"] = out["IMAGIC.ref"]  # as EMAN2 reads it
        out["IMAGIC.type"] = raw[56:60].decode("ascii", "replace")
        out["IMAGIC.label"] = _text(raw[116:196])
        out["IMAGIC.history"] = _text(raw[796:1024])
        if out["IMAGIC.errar"] == -1.0:  # FABOSA files reuse alpha2..gamma2
            for k, key in enumerate(("alpha2", "beta2", "gamma2"), 1):
                out[f"IMAGIC.fabosa{k}"] = out.pop(f"IMAGIC.{key}")
        for key in ("alpha", "beta", "gamma"):
            out[f"euler_{key}"] = out[f"IMAGIC.{key}"]
        out["orientation_convention"] = "IMAGIC"
        resol = [float(floats[w]) for w in (122, 123, 124)]
        if all(np.isfinite(v) and APIX_RANGE[0] < v < APIX_RANGE[1] for v in resol):
            for axis, value in zip("xyz", resol, strict=True):
                out[f"apix_{axis}"] = np.float32(value)
        return out

    def close(self) -> None:
        """Close both files (``.img`` and ``.hed``); calling it again does nothing."""
        super().close()
        fd, self._hed_fd = self._hed_fd, None
        if fd is not None:
            os.close(fd)
