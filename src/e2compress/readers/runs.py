"""A reader base for files whose pixels are runs at offsets the header gives (DM, SER,
SPIDER): the other bytes are kept and the file hashed by a
:class:`~e2compress.kept.RunKeeper`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError
from ..hashing import RunKeeper
from ..kept import Kept
from .base import ImageSource, reason


class RunKept(ImageSource):
    """An :class:`ImageSource` reading one file with ``pread`` whose pixels are runs at
    known offsets; :meth:`_keep_runs` keeps the rest (opened with ``keep``)."""

    _keeper: RunKeeper | None = None
    _size: int

    def _open(self, path: Path) -> None:
        """Open ``path`` for the preads and record its size (one line on failure)."""
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDONLY)
            self._size = os.fstat(self._fd).st_size
        except OSError as exc:
            self.close()
            raise InputError(f"cannot open: {reason(exc)}", path) from None

    def _keep_runs(self, runs: Sequence[tuple[int, int, int, int, str, int]]) -> None:
        """Keep the bytes outside ``runs`` (:class:`~e2compress.kept.RunKeeper`'s
        rows) and start the file's hash with them.

        Raises:
            InputError: those bytes cannot be read.
        """
        try:
            keeper = RunKeeper(self.kind, self._size, runs, self._pread, self.path.name)
        except OSError as exc:
            raise InputError(f"cannot read: {reason(exc)}", self.path) from None
        self._keeper, self._hasher = keeper, keeper.hasher

    def _read_run(self, size: int, offset: int, what: str) -> bytes:
        """``size`` pixel bytes at ``offset`` (hashed when keeping), or one line."""
        try:
            buf = self._pread(size, offset)
        except OSError as exc:
            raise InputError(f"cannot read {what} pixels: {reason(exc)}", self.path) from None
        if len(buf) != size:
            raise InputError(f"{what} file ended while reading pixels", self.path)
        if self._hasher is not None:
            self._hasher.feed(offset, buf)
        return buf

    def kept(self) -> Kept | None:
        """The bytes outside the pixels, the pixel runs and the file's SHA-256; None
        when opened without ``keep``.

        Raises:
            InputError: the file cannot be read to its end.
        """
        if self._keeper is None:
            return None
        try:
            return self._keeper.finish()
        except OSError as exc:
            raise InputError(f"cannot read: {reason(exc)}", self.path) from None
