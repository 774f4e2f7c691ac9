"""What a compression did: per file and per image, for the CLI, logs and batch reports."""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import overload


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


class ImageReports(Sequence[ImageReport]):
    """Many :class:`ImageReport` in compact columns (28 bytes an image instead of about
    300 as objects: a 100,000-image stack's reports take 3 MB, not 30), built again on
    access. ``rmin``/``rmax`` must be float32 values (the stored limits are)."""

    def __init__(self, reports: Iterable[ImageReport] = ()) -> None:
        self._index = array("i")  # EMAN2 counts images in an int32
        self._bits = array("b")
        self._rmin = array("f")  # the stored float32 limits, exactly
        self._rmax = array("f")
        self._mapped = array("b")  # 0: rmin/rmax are None
        self._truncated = array("q")
        self._shape = array("I")  # positions in self._shapes
        self._rule = array("I")  # positions in self._rules
        self._shapes: list[tuple[int, ...]] = []  # the distinct values
        self._rules: list[str] = []
        self._positions: dict[tuple[int, ...] | str, int] = {}
        for rep in reports:
            self.append(rep)

    def append(self, rep: ImageReport) -> None:
        """Add one report."""
        self._index.append(rep.index)
        self._bits.append(rep.bits)
        mapped = rep.rmin is not None and rep.rmax is not None
        self._mapped.append(int(mapped))
        self._rmin.append(rep.rmin if rep.rmin is not None else 0.0)
        self._rmax.append(rep.rmax if rep.rmax is not None else 0.0)
        self._truncated.append(rep.truncated)
        shape = tuple(rep.shape)
        if shape not in self._positions:
            self._positions[shape] = len(self._shapes)
            self._shapes.append(shape)
        if rep.rule not in self._positions:
            self._positions[rep.rule] = len(self._rules)
            self._rules.append(rep.rule)
        self._shape.append(self._positions[shape])
        self._rule.append(self._positions[rep.rule])

    def __len__(self) -> int:
        return len(self._index)

    @overload
    def __getitem__(self, i: int) -> ImageReport: ...

    @overload
    def __getitem__(self, i: slice) -> list[ImageReport]: ...

    def __getitem__(self, i: int | slice) -> ImageReport | list[ImageReport]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"image report {i} out of range ({len(self)})")
        mapped = bool(self._mapped[i])
        return ImageReport(
            self._index[i],
            self._shapes[self._shape[i]],
            self._bits[i],
            self._rmin[i] if mapped else None,
            self._rmax[i] if mapped else None,
            self._truncated[i],
            self._rules[self._rule[i]],
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ImageReports({list(self)!r})"


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
    images: Sequence[ImageReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # one line each, naming the file

    @property
    def ratio(self) -> float:
        """Input file size over output file size."""
        return self.bytes_in / self.bytes_out if self.bytes_out else 0.0

    @property
    def truncated(self) -> int:
        """Clamped pixels over all images."""
        return sum(im.truncated for im in self.images)
