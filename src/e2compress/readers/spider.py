"""SPIDER input (``.spi``): single 2-D/3-D images and stacks, float32 in either byte order.

No maintained Python library reads SPIDER (EMAN2, SPIDER and Xmipp each carry their
own C++ reader), so this is a small numpy reader of the layout EMAN2's
``spiderio.cpp`` reads. The header is float32 words (1-based as in the SPIDER
documentation): 1 ``nslice``, 2 ``nrow``, 5 ``iform`` (1 image, 3 volume), 12 ``nsam``,
13 ``labrec``, 22 ``labbyt`` (header bytes = ``labrec * lenbyt``), 23 ``lenbyt``, 24
``istack`` (0 single image, > 0 stack), 26 ``maxim`` (images in a stack), 38 the pixel
size in Angstrom. A stack is an overall header followed by, for each image, a header
of the same length and the pixels. The byte order is the one in which these words
are whole numbers and ``labbyt == labrec * lenbyt``.

Sizes first: the file must hold exactly the bytes the overall header says, and every
image header of a stack must give the same dimensions, before any pixel is read.
Rows are read as stored (EMAN2 does not flip SPIDER rows). Fourier-space (``iform``
< 0) and indexed stacks (``istack`` < 0) are refused, as EMAN2 refuses the latter.

The pixel size (word 38, written by SPIDER since 2010) becomes ``apix_x/y/z`` when it
lies in 0.01-1000 Angstrom; EMAN2 ignores it (its value is 1.0 for every SPIDER file).

Opened with ``keep``, every header (``labbyt`` bytes each) is kept and the file is
hashed from the reads: one pixel run per image (:mod:`~e2compress.kept`), so
``restore`` rebuilds the file byte for byte from float32 values stored exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .base import reason
from .runs import RunKept

MIN_HEADER = 1024  # every SPIDER header holds at least 256 words
APIX_RANGE = (0.01, 1000.0)
_REAL_FORMS = (1, 3)
_SCAN = 1024  # image headers checked per batch at open
# EMAN2's SPIDER.* header keys: name -> 0-based word (integers are stored as floats)
_INT_KEYS = {
    "nslice": 0,
    "type": 4,
    "angvalid": 13,
    "headrec": 12,
    "headlen": 21,
    "reclen": 22,
    "istack": 23,
    "imgnum": 26,
    "Kangle": 30,
}
_FLOAT_KEYS = {"irec": 2, "dx": 17, "dy": 18, "dz": 19}


def _whole(v: float) -> bool:
    return bool(np.isfinite(v)) and float(v).is_integer()


class SpiderSource(RunKept):
    """A SPIDER image or stack (see the module docstring).

    Args:
        path: the file.
        keep: keep the header bytes and hash the file (see :meth:`kept`).

    Raises:
        InputError: not a SPIDER header, an unsupported kind (Fourier, indexed stack),
            or sizes that disagree with the file.
    """

    kind = "spider"

    def __init__(self, path: Path, *, keep: bool = False) -> None:
        self._open(path)
        try:
            self._parse()
            if keep:  # every header is kept; one pixel run per image
                dtype = self._order + "f4"
                runs = [
                    (self._pixel_offset(i), self._image_bytes, i, 0, dtype, 0)
                    for i in range(self._count)
                ]
                self._keep_runs(runs)
        except BaseException:
            self.close()
            raise

    def _read(self, size: int, offset: int) -> bytes:
        """``_pread``, failing with one line naming the file."""
        try:
            return self._pread(size, offset)
        except OSError as exc:
            raise InputError(f"cannot read SPIDER file: {reason(exc)}", self.path) from None

    def _parse(self) -> None:
        size = self._size
        first = self._read(MIN_HEADER, 0)
        if len(first) < MIN_HEADER:
            raise InputError(f"file is too short for a SPIDER header ({size} bytes)", self.path)
        self._order, words = self._header_words(first)
        nslice, nrow, iform, nsam = (int(words[i]) for i in (0, 1, 4, 11))
        labbyt, istack, maxim = int(words[21]), int(words[23]), words[25]
        if iform not in _REAL_FORMS:
            what = "Fourier-space " if iform < 0 else ""
            raise InputError(f"unsupported {what}SPIDER image (iform {iform})", self.path)
        if istack < 0:
            raise InputError("indexed SPIDER stacks (istack < 0) are not supported", self.path)
        if min(nslice, nrow, nsam) < 1:
            raise InputError(
                f"invalid SPIDER dimensions nsam={nsam} nrow={nrow} nslice={nslice}", self.path
            )
        self._shape = (nslice, nrow, nsam)
        self._labbyt = labbyt
        self._image_bytes = nslice * nrow * nsam * 4
        self._stack = istack > 0
        if self._stack:
            if not _whole(maxim) or maxim < 1:
                raise InputError(f"SPIDER stack holds no images (maxim {maxim})", self.path)
            self._count = int(maxim)
            expected = labbyt + self._count * (labbyt + self._image_bytes)
        else:
            self._count = 1
            expected = labbyt + self._image_bytes
        if size != expected:
            what = "truncated" if size < expected else "longer than its header says"
            images = f"{self._count} images of " if self._stack else ""
            raise InputError(
                f"SPIDER file is {what}: {images}{nsam}x{nrow}x{nslice} with "
                f"{labbyt}-byte headers need {expected} bytes, file has {size}",
                self.path,
            )
        if self._stack:
            self._check_stack()

    def _pixel_offset(self, index: int) -> int:
        """Byte offset of image ``index``'s first pixel."""
        return self._image_offset(index) + self._labbyt

    def _header_words(self, first: bytes) -> tuple[str, np.ndarray]:
        for order in ("<", ">"):
            words = np.frombuffer(first, order + "f4")
            sizes = [words[i] for i in (0, 1, 4, 11, 12, 21, 22)]
            if not all(_whole(v) and abs(v) < 2**31 for v in sizes):
                continue
            labrec, labbyt, lenbyt = (int(words[i]) for i in (12, 21, 22))
            if labbyt == labrec * lenbyt and labbyt >= MIN_HEADER and _whole(words[23]):
                return order, words
        raise InputError("not a SPIDER file (header sizes are not consistent)", self.path)

    def _image_offset(self, index: int) -> int:
        """Byte offset of image ``index``'s header (stack) or of the only header."""
        if not self._stack:
            return 0
        return self._labbyt + index * (self._labbyt + self._image_bytes)

    def _check_stack(self) -> None:
        """Every image header must give the stack's dimensions; also notes which header
        words are the same in every image (for :meth:`shared_keys`)."""
        nslice, nrow, nsam = self._shape
        first: bytes | None = None
        same = np.ones(MIN_HEADER // 4, dtype=bool)
        for index in range(self._count):
            raw = self._read(MIN_HEADER, self._image_offset(index))
            if len(raw) != MIN_HEADER:
                raise InputError("SPIDER file ended while reading image headers", self.path)
            words = np.frombuffer(raw, self._order + "f4")
            got = (words[0], words[1], words[11])
            if got != (nslice, nrow, nsam):
                dims = "x".join(f"{v:g}" for v in (got[2], got[1], got[0]))
                raise InputError(
                    f"SPIDER image {index} is {dims}, the stack's is {nsam}x{nrow}x{nslice}",
                    self.path,
                )
            first = raw if first is None else first
            same &= np.frombuffer(raw, "u4") == np.frombuffer(first, "u4")
        self._same_words = same

    def shared_keys(self) -> frozenset[str]:
        """Keys whose header words are the same in every image (stored once for a stack)."""
        keys = self.header(0)
        if not self._stack:
            return frozenset(keys)
        words: dict[str, tuple[int, ...]] = {
            **{f"SPIDER.{k}": (w,) for k, w in {**_INT_KEYS, **_FLOAT_KEYS}.items()},
            **{f"SPIDER.{k}": (13, w) for k, w in (("phi", 14), ("theta", 15), ("gamma", 16))},
            **{
                f"SPIDER.{k}": (30, 31 + i)
                for i, k in enumerate(("phi1", "theta1", "psi1", "phi2", "theta2", "psi2"))
            },
            "SPIDER.maxim": (23, 25),
            "SPIDER.scale": (20,),
            "SPIDER.date": (211, 212, 213),
            "SPIDER.time": (213, 214, 215),
            "SPIDER.title": tuple(range(215, 256)),
            **{f"apix_{axis}": (37,) for axis in "xyz"},
        }
        same = self._same_words
        return frozenset(k for k in keys if k in words and all(same[w] for w in words[k]))

    def __len__(self) -> int:
        return self._count

    def shape(self, index: int) -> tuple[int, int, int]:
        """(nz, ny, nx), the same for every image of a stack (checked when opened)."""
        return self._shape

    def read(self, index: int, z: int, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` of section ``z`` of image ``index``, as float32.

        Raises:
            InputError: the pixels cannot be read (a read failed or the file ended).
        """
        _, ny, nx = self._shape
        start = self._pixel_offset(index) + (z * ny + y0) * nx * 4
        size = (y1 - y0) * nx * 4
        buf = self._read_run(size, start, "SPIDER")
        return np.frombuffer(buf, self._order + "f4").reshape(y1 - y0, nx).astype(np.float32)

    def header(self, index: int) -> dict[str, Any]:
        """Image ``index``'s ``SPIDER.*`` keys (angles, scale, date, title) and ``apix_*``
        (when plausible).

        Raises:
            InputError: its header cannot be read or ended early.
        """
        raw = self._read(MIN_HEADER, self._image_offset(index))
        if len(raw) != MIN_HEADER:
            raise InputError("SPIDER file ended while reading a header", self.path)
        words = np.frombuffer(raw, self._order + "f4")
        out: dict[str, Any] = {}
        for key, word in _INT_KEYS.items():
            if _whole(words[word]) and abs(words[word]) < 2**31:
                out[f"SPIDER.{key}"] = int(words[word])
        for key, word in _FLOAT_KEYS.items():
            out[f"SPIDER.{key}"] = np.float32(words[word])
        if words[13] != 0:
            for key, word in (("phi", 14), ("theta", 15), ("gamma", 16)):
                out[f"SPIDER.{key}"] = np.float32(words[word])
        if words[23] > 0 and _whole(words[25]):  # an overall header (EMAN2's rule)
            out["SPIDER.maxim"] = int(words[25])
        kangle = out.get("SPIDER.Kangle", 0)
        if kangle in (1, 2):
            names = ("phi1", "theta1", "psi1", "phi2", "theta2", "psi2")[: 3 * kangle]
            for k, key in enumerate(names):
                out[f"SPIDER.{key}"] = np.float32(words[31 + k])
        if words[20] > 0:
            out["SPIDER.scale"] = np.float32(words[20])
        out["SPIDER.date"] = _text(raw[844:855])
        out["SPIDER.time"] = _text(raw[855:863])
        out["SPIDER.title"] = _text(raw[863:1023])
        apix = float(words[37])
        if np.isfinite(apix) and APIX_RANGE[0] < apix < APIX_RANGE[1]:
            for axis in "xyz":
                out[f"apix_{axis}"] = np.float32(apix)
        return out


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace").rstrip()
