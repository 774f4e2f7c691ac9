"""What to store: one validated, picklable description of a compression's settings.

The CLI maps its flags onto :class:`Options`; the library validates it once, and its
messages name the parameters (``bits``, ``value_range`` ...), not command-line flags.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import E2CompressError
from .fidelity import DEFAULT_NOISE_FRACTION
from .quantize import storage_dtype

FIELD_NAMES = {
    f: f
    for f in (
        "bits",
        "level",
        "value_range",
        "sigrange",
        "nooutliers",
        "chunk_rows",
        "noise_fraction",
        "apix",
        "eer_grouping",
        "checksum",
        "counts",
    )
}
AUTO_BITS = -1  # ``bits="auto"``: the fewest bits that pass the noise rule, per image
DEFAULT_CHUNK_ROWS = 64  # measured: larger chunks gain little; 8 (EMAN2's) costs ratio and time


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _pair_ok(pair: object) -> bool:
    return (
        isinstance(pair, tuple)
        and len(pair) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)
    )


@dataclass(frozen=True, kw_only=True)
class Options:
    """What to store: bits, deflate level and the range option (at most one).

    Built with keywords only (``Options(bits=5, level=4)``); :meth:`validate` checks the
    values. ``dataclasses.replace(options, bits=6)`` changes one field.

    Attributes:
        bits: 0 (lossless float32), 2..16 bits per stored value, or ``"auto"`` (stored
            as AUTO_BITS, -1): per image the fewest bits whose quantisation noise stays
            within ``noise_fraction`` of the image's noise (see :mod:`e2compress.fidelity`).
        level: deflate level 0..9 (size and time only, never the values).
        value_range: keep values in [min, max] (``--range``).
        sigrange: keep mean - a*sigma .. mean + b*sigma (``--sigrange``).
        nooutliers: EMAN2's histogram clamp of the extreme tails (``--nooutliers``).
        shuffle: HDF5 shuffle filter; None chooses it for multi-byte storage.
        chunk_rows: rows per HDF5 chunk.
        store_level: record the deflate level in each image header, as EMAN2 does
            when ``--compresslevel`` is given.
        noise_fraction: the most quantisation noise (RMS) allowed, as a fraction of the
            image's noise: what ``bits="auto"`` keeps to and what the quality warning
            checks.
        apix: pixel size in Angstrom written for every image (x, y and z), overriding
            what the input's header says (``--apix``); None keeps the input's.
        eer_grouping: EER frames summed into each stored image (1: every frame is an
            image, as EMAN2 reads EER); no effect on other inputs.
        checksum: end every chunk with HDF5's Fletcher-32 checksum, which every HDF5
            reader verifies on read (see :mod:`e2compress.checksum`).
        counts: store a gain-normalised float32 movie exactly as its integer counts
            plus its gain image (see :mod:`e2compress.counts`); ``bits`` is then
            that of the counts (8 or 16) and no range option applies.
    """

    bits: int = 10
    level: int = 1
    value_range: tuple[float, float] | None = None
    sigrange: tuple[float, float] | None = None
    nooutliers: bool = False
    shuffle: bool | None = None
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    store_level: bool = False
    noise_fraction: float = DEFAULT_NOISE_FRACTION
    apix: float | None = None
    eer_grouping: int = 1
    checksum: bool = True
    counts: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.bits, str) and self.bits == "auto":
            object.__setattr__(self, "bits", AUTO_BITS)

    def validate(self, names: Mapping[str, str] | None = None) -> Options:
        """Return ``self`` if the settings are possible.

        Args:
            names: how to name each field in messages (the CLI passes its flags).

        Raises:
            E2CompressError: a value is out of range or of the wrong type, or more
                than one range option is given.
        """
        n = dict(FIELD_NAMES)
        n.update(names or {})
        if not _is_int(self.bits) or (self.bits not in (0, AUTO_BITS) and not 2 <= self.bits <= 16):
            raise E2CompressError(
                f"{n['bits']} must be 0 (lossless float), an integer 2..16 or auto, "
                f"not {self.bits!r}"
            )
        fraction = self.noise_fraction
        if (
            not isinstance(fraction, (int, float))
            or isinstance(fraction, bool)
            or not (math.isfinite(fraction) and 0 < fraction <= 10)
        ):
            raise E2CompressError(
                f"{n['noise_fraction']} must be a number > 0 and <= 10, not {fraction!r}"
            )
        if not _is_int(self.level) or not 0 <= self.level <= 9:
            raise E2CompressError(f"{n['level']} must be an integer 0..9, not {self.level!r}")
        chosen = [self.value_range is not None, self.sigrange is not None, bool(self.nooutliers)]
        if sum(chosen) > 1:
            raise E2CompressError(
                f"give only one of {n['nooutliers']}, {n['value_range']} and {n['sigrange']}"
            )
        if self.value_range is not None:
            if not _pair_ok(self.value_range):
                raise E2CompressError(
                    f"{n['value_range']} must be two numbers, not {self.value_range!r}"
                )
            lo, hi = self.value_range
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
                raise E2CompressError(f"{n['value_range']} needs finite min < max, not {lo},{hi}")
        if self.sigrange is not None:
            if not _pair_ok(self.sigrange):
                raise E2CompressError(f"{n['sigrange']} must be two numbers, not {self.sigrange!r}")
            a, b = self.sigrange
            if not (a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)):
                raise E2CompressError(f"{n['sigrange']} needs two positive numbers, not {a},{b}")
        apix = self.apix
        if apix is not None and (
            not isinstance(apix, (int, float))
            or isinstance(apix, bool)
            or not (math.isfinite(apix) and apix > 0)
        ):
            raise E2CompressError(f"{n['apix']} must be a positive number, not {apix!r}")
        if not _is_int(self.eer_grouping) or self.eer_grouping < 1:
            raise E2CompressError(
                f"{n['eer_grouping']} must be an integer >= 1, not {self.eer_grouping!r}"
            )
        if not isinstance(self.checksum, bool):
            raise E2CompressError(f"{n['checksum']} must be True or False, not {self.checksum!r}")
        if not isinstance(self.counts, bool):
            raise E2CompressError(f"{n['counts']} must be True or False, not {self.counts!r}")
        if self.counts and any(chosen):
            raise E2CompressError(
                f"{n['counts']} stores every value exactly: give none of {n['nooutliers']}, "
                f"{n['value_range']} and {n['sigrange']}"
            )
        if not _is_int(self.chunk_rows) or self.chunk_rows < 1:
            raise E2CompressError(
                f"{n['chunk_rows']} must be an integer >= 1, not {self.chunk_rows!r}"
            )
        return self

    @property
    def auto(self) -> bool:
        """Bits are chosen per image by the noise rule."""
        return self.bits == AUTO_BITS

    def shuffle_for(self, bits: int) -> bool:
        """Whether an image stored with ``bits`` gets the shuffle filter: it pays for
        multi-byte storage (float32, uint16), never for uint8."""
        if self.shuffle is not None:
            return self.shuffle
        return bits != AUTO_BITS and storage_dtype(bits).itemsize > 1
