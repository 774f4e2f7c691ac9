"""What a compression did: per file and per image, for the CLI, logs and batch reports."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ImageReport:
    """How one image was stored."""

    index: int
    shape: tuple[int, ...]
    bits: int
    rmin: float | None
    rmax: float | None
    truncated: int
    rule: str


@dataclass
class CompressReport:
    """The outcome of compressing one file."""

    source: str
    output: str
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    engine: str = ""
    verified: bool = False
    images: list[ImageReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # one line each, naming the file

    @property
    def ratio(self) -> float:
        """Input file size over output file size."""
        return self.bytes_in / self.bytes_out if self.bytes_out else 0.0

    @property
    def truncated(self) -> int:
        """Clamped pixels over all images."""
        return sum(im.truncated for im in self.images)
