"""Integer counts and a per-pixel gain from a gain-normalised movie (pure numpy, no I/O).

A gain-normalised counting movie (K2/K3 from EPU, many public data sets) stores every
pixel as ``float32(count) * gain``, a float32 product of a whole count and its pixel's
gain. Its counts and one gain image hold the movie exactly, and compress far better.

The gain is estimated as relion_convert_to_tiff does: a pixel's smallest positive value
over all frames is one count times its gain. A pixel that never saw a single count
(only 0, 2, 3, ... counts) has a smallest value of k gains: its three smallest distinct
values are used to find the gain they are all whole multiples of. Nothing here is
trusted: :func:`to_counts` checks every pixel of every frame exactly (the product
recomputed in float32 from the stored integer equals the source's bits), and refuses
any pixel that does not fit. A pixel that is 0 in every frame gets gain 1.0
(:data:`UNEXPOSED_GAIN`): any gain gives back its zeros.
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

F32 = np.float32
U32 = np.uint32
UNEXPOSED_GAIN = 1.0  # the gain of a pixel that is 0 in every frame
MAX_COUNT = 65535  # counts are stored as uint8 or uint16
_NONE = np.uint32(0xFFFFFFFF)  # "no value yet" in the smallest-values tracker
_NOT_FINITE_OR_NEGATIVE = np.uint32(0x7F800000)  # float32 bits at or above: inf, NaN, sign set
_MAX_DIVISOR = 64  # the most counts a pixel's smallest value is searched for
_ULPS = (0, -1, 1, -2, 2)  # float32 neighbours of a divided value tried as the gain
_SPAN = 1 << 16  # pixels processed at a time
_BANDS = 8  # bands of a frame shared between threads


class NotCounts(ValueError):
    """A value is not a whole count times its pixel's gain (the message says where)."""


def where(flat: int, nx: int) -> str:
    """``pixel (y, x)`` of a flat index into a (ny, nx) frame."""
    y, x = divmod(int(flat), nx)
    return f"pixel (y={y}, x={x})"


def _insert(
    u: np.ndarray, m1: np.ndarray, m2: np.ndarray, m3: np.ndarray, vmax: np.ndarray
) -> None:
    """Insert the values (float32 bits) ``u`` into the trackers, in place."""
    np.maximum(vmax, u, out=vmax)
    w = u - U32(1)  # 0 wraps to _NONE: never inserted
    # only a value below the third smallest that is not the first or second changes them
    idx = np.flatnonzero((w < m3) & (w != m1) & (w != m2))
    if idx.size:
        v, a, b = w[idx], m1[idx], m2[idx]
        lt2 = v < b
        m3[idx] = np.where(lt2, b, v)
        m2[idx] = np.where(v < a, a, np.minimum(b, v))
        m1[idx] = np.minimum(a, v)


class GainEstimator:
    """Streams over the frames once: each pixel's three smallest distinct positive
    values and its largest value, as float32 bits. Memory: four uint32 images.

    Args:
        shape: (ny, nx) of every frame.
    """

    def __init__(self, shape: tuple[int, int]) -> None:
        self.shape = shape
        n = shape[0] * shape[1]
        self.m1 = np.full(n, _NONE, dtype=U32)
        self.m2 = np.full(n, _NONE, dtype=U32)
        self.m3 = np.full(n, _NONE, dtype=U32)
        self.vmax = np.zeros(n, dtype=U32)
        self.frames = 0

    def add(self, frame: np.ndarray, label: str, pool: Executor | None = None) -> None:
        """Take one frame (float32, ``shape``).

        Args:
            frame: the frame's values.
            label: how to name the frame in a message (``frame 3``).
            pool: threads to share the work with (bands of rows; numpy releases the GIL).

        Raises:
            NotCounts: a value is negative (-0.0 included), infinite or NaN.
        """
        if frame.dtype != F32 or frame.shape != self.shape:
            raise NotCounts(f"{label}: not a float32 frame of {self.shape}")
        u = np.ascontiguousarray(frame).view(U32).reshape(-1)
        band = -(-u.size // _BANDS // _SPAN) * _SPAN or _SPAN
        starts = range(0, u.size, band)
        if pool is None:
            firsts = [self._band(u, a, min(a + band, u.size)) for a in starts]
        else:
            firsts = list(pool.map(lambda a: self._band(u, a, min(a + band, u.size)), starts))
        bad = [f for f in firsts if f >= 0]
        if bad:
            first = min(bad)
            value = frame.flat[first]
            what = "NaN" if np.isnan(value) else "infinite" if np.isinf(value) else "negative"
            raise NotCounts(
                f"{label}, {where(first, self.shape[1])}: value {value} is {what}, not a "
                "count times a gain"
            )
        self.frames += 1

    def _band(self, u: np.ndarray, start: int, stop: int) -> int:
        """Insert ``u[start:stop]`` in cache-sized pieces (numpy's temporaries stay
        small); the first bad pixel's index (-1: none; then nothing was inserted)."""
        for a in range(start, stop, _SPAN):
            b = min(a + _SPAN, stop)
            bad = u[a:b] >= _NOT_FINITE_OR_NEGATIVE
            if bad.any():
                return a + int(np.argmax(bad))
        for a in range(start, stop, _SPAN):
            b = min(a + _SPAN, stop)
            _insert(u[a:b], self.m1[a:b], self.m2[a:b], self.m3[a:b], self.vmax[a:b])
        return -1

    def result(self) -> Gain:
        """The gain image, and the largest count any pixel holds (estimated; the exact
        check is :func:`to_counts`)."""
        n = self.m1.size
        gain = np.empty(n, dtype=F32)
        largest, at = 0, 0
        for a in range(0, n, _SPAN):
            b = min(a + _SPAN, n)
            m = [(t[a:b] + U32(1)).view(F32) for t in (self.m1, self.m2, self.m3)]  # _NONE -> 0
            gain[a:b] = estimate_gain(*m)
            most = np.rint(self.vmax[a:b].view(F32) / gain[a:b].astype(np.float64))
            k = int(np.argmax(most))
            if most[k] > largest:
                largest, at = int(most[k]), a + k
        return Gain(gain.reshape(self.shape), largest, at)


@dataclass(frozen=True)
class Gain:
    """A movie's gain image and its largest count (at flat pixel ``at``)."""

    image: np.ndarray  # float32 (ny, nx)
    largest: int
    at: int

    def dtype(self) -> np.dtype:
        """The smallest unsigned type that holds the counts.

        Raises:
            NotCounts: a count exceeds :data:`MAX_COUNT`.
        """
        if self.largest > MAX_COUNT:
            raise NotCounts(
                f"{where(self.at, self.image.shape[1])}: {self.largest} counts, more than "
                f"{MAX_COUNT} (uint16) holds"
            )
        return np.dtype(np.uint8 if self.largest < 256 else np.uint16)


def _fits(value: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Where ``value`` (float32, > 0 or 0 for "none") is float32(c) * ``gain`` for a
    whole c in 1..MAX_COUNT, recomputed (0 always fits)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        c = np.rint(value.astype(np.float64) / gain.astype(np.float64))
        ok = (c >= 1) & (c <= MAX_COUNT) & (gain > 0)
        back = c.astype(F32) * gain
    fit: np.ndarray = (value == 0) | (ok & (back.view(U32) == value.view(U32)))
    return fit


def estimate_gain(m1: np.ndarray, m2: np.ndarray, m3: np.ndarray) -> np.ndarray:
    """Per pixel, the gain its smallest distinct positive values are whole multiples of.

    Args:
        m1: float32, each pixel's smallest positive value (0: none).
        m2: float32, its second smallest distinct positive value (0: none).
        m3: float32, its third smallest distinct positive value (0: none).

    Returns:
        float32 gains: ``m1`` where the others are whole multiples of it; else
        ``m1 / k`` for the smallest k (up to 64, the nearest float32 values tried) that
        fits all three; ``m1`` where none does (:func:`to_counts` then refuses the
        pixel); :data:`UNEXPOSED_GAIN` where a pixel has no positive value.
    """
    gain = m1.astype(F32, copy=True)
    gain[m1 == 0] = F32(UNEXPOSED_GAIN)
    todo = np.flatnonzero(~(_fits(m2, gain) & _fits(m3, gain)))
    for k in range(2, _MAX_DIVISOR + 1):
        if not todo.size:
            break
        a, b, c = m1[todo], m2[todo], m3[todo]
        base = (a / F32(k)).astype(F32).view(U32)
        found = np.zeros(todo.size, dtype=bool)
        for step in _ULPS:
            cand = (base.astype(np.int64) + step).astype(U32).view(F32)
            ok = ~found & _fits(a, cand) & _fits(b, cand) & _fits(c, cand)
            gain[todo[ok]] = cand[ok]
            found |= ok
        todo = todo[~found]
    return gain


def to_counts(
    values: np.ndarray,
    gain: np.ndarray,
    dtype: np.dtype,
    label: str,
    row0: int = 0,
    inverse: np.ndarray | None = None,
) -> np.ndarray:
    """The counts of rows of a frame, checked exactly.

    Args:
        values: float32 rows (r, nx) of a frame.
        gain: the gain rows (r, nx) of the same pixels.
        dtype: uint8 or uint16, the counts' type.
        label: how to name the frame in a message.
        row0: the frame row of ``values[0]`` (for the message).
        inverse: ``1 / gain`` (float32), to multiply instead of divide (faster; a count
            it rounds wrongly is refused by the check, never stored).

    Raises:
        NotCounts: some value is not ``float32(count) * gain`` with the count in
            ``dtype`` (compared as bits: -0.0 and NaN never pass).
    """
    if values.dtype != F32:
        raise NotCounts(f"{label}: values are {values.dtype}, not float32")
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = values * inverse if inverse is not None else values / gain
        counts: np.ndarray = np.rint(ratio, out=ratio).astype(dtype)
        back = counts.astype(F32) * gain
    bad = back.view(U32) != values.view(U32)
    if bad.any():
        flat = int(np.argmax(bad))
        y, x = divmod(flat, values.shape[1])
        raise NotCounts(
            f"{label}, pixel (y={row0 + y}, x={x}): value {values.flat[flat]} is not a "
            f"whole count ({np.iinfo(dtype).max} at most) times its gain {gain.flat[flat]}"
        )
    return counts


def from_counts(counts: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """The movie's values: ``float32(count) * gain`` (float32 multiply)."""
    values: np.ndarray = np.asarray(counts).astype(F32) * np.asarray(gain, dtype=F32)
    return values
