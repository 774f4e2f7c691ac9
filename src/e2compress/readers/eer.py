"""Thermo Fisher EER input (Falcon 4/4i electron-event movies): tifffile finds the frames,
imagecodecs decodes them.

An EER file is a TIFF whose every page is one detector frame, stored as one strip of
run-length coded electron events (compression 65000: 8-bit runs, 65001: 7-bit runs,
65002: run and sub-pixel bit sizes in tags 65007-65009). Each frame decodes to counts on
the sensor grid (4096 x 4096 on a Falcon); a pixel holds at most one event a frame, so
single frames are 0/1.

Images. By default each frame is one image, as EMAN2 reads EER (about 1,000 mostly
empty images per movie; see docs/counting_inputs.md for what that costs). With ``grouping`` N,
each image is the sum of N consecutive frames (frames 0..N-1, N..2N-1, ...), integer
counts as RELION renders EER fractions; when the frame count is not a multiple of N
the last image sums the remaining frames (RELION drops them; an archive must not).
Values are stored as uint8 (uint16 when N > 255), exactly. Rows are in file order, not
flipped (EMAN2's EER reader does not flip them either, unlike its TIFF reader). Frames
are decoded at the sensor's resolution (no super-resolution), as EMAN2 does by default.

Header. The acquisition metadata (XML in tag 65001 of the first page) becomes
``EER.<name>`` keys in EMAN2's spelling (``sensorPixelSize.width`` ->
``EER.sensor_pixel_size.width``, values as text) and ``EER.compression``; the pixel size
is ``sensorPixelSize`` in metres times 1e10 (1.0 when it is 0 or absent), as in EMAN2.
With grouping, ``EER.grouping``, ``EER.first_frame`` and ``EER.frames`` say which frames
each image sums.

Decoding. imagecodecs' ``eer_decode`` reads a code only when at least one bit follows
it: a strip that ends exactly where its last event's code ends (possible when the
frame's last pixel has an event) would lose that event. Two zero bytes are appended to
each strip before decoding; a well-formed stream stops at the frame's end before
reading them (EMAN2's reader reads past the strip's end in the same way).

Integrity. The TIFF structure is checked as for any TIFF (the IFD chain must end
properly, every strip must lie inside the file); every page must be an EER frame of one
strip and of the first frame's size; the number of frames must equal the metadata's
``numberOfFrames`` when it is given. EER has no checksum: damage inside a strip that
keeps the stream decodable gives a wrong frame, which no reader can detect.

Restoring. An EER file cannot be rebuilt from its images (:data:`NOT_RESTORABLE`):
opened with ``keep``, :meth:`EerSource.kept` records only that reason, which
``restore`` and source deletion give when they refuse it.
"""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..kept import Kept, Layout, pieces_array
from .base import reason
from .tiff import TiffSource

# compression -> (run-length bits, horizontal sub-pixel bits, vertical sub-pixel bits)
EER_CODINGS = {65000: (8, 2, 2), 65001: (7, 2, 2)}
EER_VARIABLE = 65002  # bit sizes in tags 65007, 65008, 65009 (default 7, 2, 2)
ACQUISITION_TAG = 65001
# imagecodecs reads a code only when at least one more bit follows it, so a strip that
# ends exactly after its last event's code would lose that event; two zero bytes (a run
# of 0, never read once the runs have reached the frame's end) keep it
_PAD = b"\0\0"


@dataclass(frozen=True)
class _Strip:
    """Where one frame's coded events are and how they are coded."""

    offset: int
    size: int
    coding: tuple[int, int, int]


def snake_case(name: str) -> str:
    """EMAN2's spelling of an EER metadata name: ``sensorPixelSize.width`` ->
    ``sensor_pixel_size.width`` (an underscore before each capital that follows a
    non-capital, capitals lowered)."""
    out = []
    for i, ch in enumerate(name):
        if ch.isupper():
            if i > 0 and not name[i - 1].isupper():
                out.append("_")
            out.append(ch.lower())
        else:
            out.append(ch)
    return "".join(out)


def parse_metadata(raw: bytes) -> dict[str, str]:
    """The ``<item name="...">value</item>`` entries of an EER metadata block, as text.

    Raises:
        ValueError: the block is not well-formed XML.
    """
    start = raw.find(b"<metadata")
    if start < 0:
        raise ValueError("no <metadata> element")
    root = ET.fromstring(raw[start:].rstrip(b"\0 \r\n\t"))
    out: dict[str, str] = {}
    for item in root:
        name = item.attrib.get("name")
        if name:
            out[name] = item.text or ""
    return out


NOT_RESTORABLE = (
    "EER stores each electron event with its sub-pixel position bits, run-length coded; "
    "the images hold event counts on the sensor grid, so those bits are gone and the "
    "file cannot be rebuilt from them"
)


class EerSource(TiffSource):
    """An EER movie read as the module docstring says.

    Args:
        path: the file.
        grouping: frames summed into each image (1: every frame is an image).
        keep: record why the file cannot be restored (see :meth:`kept`).

    Raises:
        InputError: not a well-formed EER file (see the module docstring), or
            ``grouping`` is not a positive integer.
    """

    kind = "eer"

    def __init__(self, path: Path, grouping: int = 1, *, keep: bool = False) -> None:
        if isinstance(grouping, bool) or not isinstance(grouping, int) or grouping < 1:
            raise InputError(f"eer_grouping must be a positive integer, not {grouping!r}", path)
        self._grouping = grouping
        self._strips: list[_Strip] = []
        self._meta: dict[str, str] = {}
        self._compression = 0
        self._frame_shape = (0, 0)
        self._electrons: dict[int, int] = {}
        self._eer_lock = threading.Lock()
        self._eer_cache: tuple[int, np.ndarray] | None = None
        self._keep_reason = keep
        super().__init__(path)

    def kept(self) -> Kept | None:
        """Only why the file cannot be restored (:data:`NOT_RESTORABLE`): no bytes, no
        SHA-256 (the file is not read again to hash it); None without ``keep``.

        Raises:
            InputError: the file cannot be examined.
        """
        if not self._keep_reason:
            return None
        try:
            size = self.path.stat().st_size
        except OSError as exc:
            raise InputError(f"cannot read: {reason(exc)}", self.path) from None
        layout = Layout("eer", size, pieces_array([]), [], problem=NOT_RESTORABLE)
        return Kept(layout, b"", "", None, self.path.name)

    # ------------------------------------------------------------------ structure

    def _find_frames(self) -> list[Any]:
        tif = self._tif
        try:
            pages = list(tif.pages)
        except Exception as exc:  # tifffile raises many types on damaged files
            raise InputError(f"cannot read EER file: {reason(exc)}", self.path) from None
        if not pages:
            raise InputError("EER file has no frames", self.path)
        for k, page in enumerate(pages):
            self._check_ifd(k, page, last=k == len(pages) - 1)
        try:
            self._strips = [self._strip(k, page) for k, page in enumerate(pages)]
            self._meta = self._metadata(pages[0])
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"cannot read EER file: {reason(exc)}", self.path) from None
        declared = self._meta.get("numberOfFrames")
        if declared is not None and declared.strip() != str(len(pages)):
            raise InputError(
                f"EER file has {len(pages)} frames, but its metadata says "
                f"numberOfFrames={declared.strip()}",
                self.path,
            )
        self._compression = int(pages[0].compression)
        return pages

    def _strip(self, k: int, page: Any) -> _Strip:
        compression = int(page.compression)
        if compression == EER_VARIABLE:
            tags = page.tags
            coding = tuple(
                int(tags.valueof(code, dflt)) for code, dflt in ((65007, 7), (65008, 2), (65009, 2))
            )
        elif compression in EER_CODINGS:
            coding = EER_CODINGS[compression]
        else:
            raise InputError(
                f"EER page {k} is not an EER frame (TIFF compression {compression})", self.path
            )
        shape = tuple(int(n) for n in page.shape[:2]) if len(page.shape) >= 2 else ()
        if len(shape) != 2 or min(shape) < 1 or len(page.shape) != 2:
            raise InputError(f"EER page {k} has an invalid size {page.shape}", self.path)
        if k == 0:
            self._frame_shape = (shape[0], shape[1])
        elif shape != self._frame_shape:
            raise InputError(
                f"EER page {k} is {shape[1]} x {shape[0]}, frame 0 is "
                f"{self._frame_shape[1]} x {self._frame_shape[0]}",
                self.path,
            )
        if len(page.dataoffsets) != 1:
            raise InputError(
                f"EER page {k} has {len(page.dataoffsets)} strips (expected one)", self.path
            )
        self._check_segments(k, page)
        run, horz, vert = coding
        return _Strip(int(page.dataoffsets[0]), int(page.databytecounts[0]), (run, horz, vert))

    def _metadata(self, page: Any) -> dict[str, str]:
        tag = page.tags.get(ACQUISITION_TAG)
        if tag is None:
            return {}
        raw = tag.value
        if not isinstance(raw, bytes):
            raise InputError("EER acquisition metadata (tag 65001) is not XML", self.path)
        try:
            return parse_metadata(raw)
        except (ValueError, ET.ParseError) as exc:
            raise InputError(
                f"EER acquisition metadata (tag 65001) is damaged: {reason(exc)}", self.path
            ) from None

    # ------------------------------------------------------------------ pixels

    @property
    def frames(self) -> int:
        """Frames in the file (before grouping)."""
        return len(self._strips)

    def _group(self, index: int) -> range:
        if not 0 <= index < len(self):
            raise IndexError(f"image {index} out of range ({len(self)})")
        first = index * self._grouping
        return range(first, min(first + self._grouping, self.frames))

    def __len__(self) -> int:
        return -(-self.frames // self._grouping)

    def shape(self, index: int) -> tuple[int, int, int]:
        """(1, ny, nx): the frame size."""
        ny, nx = self._frame_shape
        return 1, ny, nx

    def dtype(self, index: int) -> np.dtype:
        """uint8, or uint16 when more than 255 frames are summed into an image."""
        return np.dtype(np.uint8 if self._grouping <= 255 else np.uint16)

    def decode_frame(self, frame: int) -> np.ndarray:
        """Frame ``frame`` decoded by imagecodecs: a bool (ny, nx) array of events.

        Raises:
            InputError: the strip cannot be read or decoded.
        """
        import imagecodecs

        strip = self._strips[frame]
        try:
            buf = self._pread(strip.size, strip.offset)
        except OSError as exc:
            raise InputError(f"cannot read EER frame {frame}: {reason(exc)}", self.path) from None
        if len(buf) != strip.size:
            raise InputError(f"file ended while reading EER frame {frame}", self.path)
        try:  # the padding: see the module docstring
            decoded = imagecodecs.eer_decode(buf + _PAD, self._frame_shape, *strip.coding)
        except Exception as exc:  # imagecodecs raises EerError/ValueError on bad streams
            raise InputError(f"cannot decode EER frame {frame}: {reason(exc)}", self.path) from None
        return np.asarray(decoded)

    def _summed(self, index: int) -> np.ndarray:
        with self._eer_lock:
            if self._eer_cache is None or self._eer_cache[0] != index:
                self._eer_cache = None  # free the previous image first
                out = np.zeros(self._frame_shape, dtype=self.dtype(index))
                for frame in self._group(index):
                    np.add(out, self.decode_frame(frame), out=out, casting="unsafe")
                self._electrons[index] = int(out.sum(dtype=np.int64))
                self._eer_cache = (index, out)
            return self._eer_cache[1]

    def read(self, index: int, z: int, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` of image ``index``: the events of its frames summed (the image is
        decoded whole and kept until another is read).

        Raises:
            InputError: a frame cannot be read or decoded.
        """
        return self._summed(index)[y0:y1]

    # ------------------------------------------------------------------ header

    def header(self, index: int) -> dict[str, Any]:
        """The acquisition metadata as ``EER.*`` keys, the compression, ``apix_*`` from the
        sensor pixel size (1 when absent) and, when grouping, image ``index``'s frames."""
        out: dict[str, Any] = {f"EER.{snake_case(k)}": v for k, v in self._meta.items()}
        out["EER.compression"] = self._compression
        for axis, name in (("x", "width"), ("y", "height")):
            text = self._meta.get(f"sensorPixelSize.{name}")
            metres = np.float32(_atof(text)) if text is not None else np.float32(0)
            out[f"apix_{axis}"] = np.float32(metres * np.float32(1e10)) if metres else np.float32(1)
        out["apix_z"] = out["apix_x"]
        if self._grouping > 1:
            frames = self._group(index)
            out["EER.grouping"] = self._grouping
            out["EER.first_frame"] = frames.start
            out["EER.frames"] = len(frames)
        return out

    def shared_keys(self) -> frozenset[str]:
        """Every key but the image's frames (``EER.first_frame``, ``EER.frames``)."""
        return frozenset(self.header(0)) - {"EER.first_frame", "EER.frames"}

    def notes(self) -> list[str]:
        """The dose (electrons per pixel) of the images decoded so far, on one line
        naming the file; nothing before any image was decoded."""
        if not self._electrons:
            return []
        ny, nx = self._frame_shape
        per_px = np.array([self._electrons[i] for i in sorted(self._electrons)]) / (ny * nx)
        what = (
            f"{self.frames} EER frames summed {self._grouping} at a time into {len(self)} "
            + ("image" if len(self) == 1 else "images")
            if self._grouping > 1
            else f"{self.frames} EER frames, one image each"
        )
        if self._grouping > 1 and self.frames % self._grouping:
            what += f" (the last sums {self.frames % self._grouping})"
        low, high = per_px.min(), per_px.max()
        dose = f"dose per image {per_px.mean():.4g} e/px (min {low:.4g}, max {high:.4g})"
        apix = float(self.header(0)["apix_x"])
        if apix != 1.0:
            dose += f", {per_px.mean() / apix**2:.4g} e/A^2 at {apix:.4g} A/px"
        return [f"{self.path}: {what}; {dose}"]

    def close(self) -> None:
        """Drop the decoded image and close the file."""
        self._eer_cache = None
        super().close()


def _atof(text: str) -> float:
    """C's atof: the longest leading number of ``text``, 0.0 when there is none."""
    text = text.strip()
    for end in range(len(text), 0, -1):
        try:
            return float(text[:end])
        except ValueError:
            continue
    return 0.0
