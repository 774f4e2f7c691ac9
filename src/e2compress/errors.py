"""Exceptions that carry a user-facing, one-line message."""

from __future__ import annotations

import os


class E2CompressError(Exception):
    """A problem with one input, output or option, reported without a traceback."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        self.path = os.fspath(path) if path is not None else None
        super().__init__(f"{self.path}: {message}" if self.path else message)


class InputError(E2CompressError):
    """The input file cannot be read as an image file of a supported kind."""


class OutputError(E2CompressError):
    """The output cannot be written (permissions, space, a concurrent writer)."""


class VerificationError(E2CompressError):
    """The written file does not decode to the source within the quantisation bound."""


class Interrupted(BaseException):
    """SIGINT/SIGTERM (or the --ppid parent dying) asked the run to stop."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by signal {signum}")
