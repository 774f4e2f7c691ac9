"""Pixel size from TIFF metadata: the ImageJ description (unit, spacing) or resolution tags.

A TIFF stores a pixel size as a resolution (pixels per unit) in tags 282/283 with a unit
in tag 296 (inch or centimetre), or, as ImageJ and tifffile write it, with unit "none"
and the unit named in the ImageJ description (``unit=nm``, ``spacing=`` for z). Values
outside 0.01..1000 Angstrom (72 dpi screen defaults, for instance) mean "not set".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

# Angstrom per unit, as ImageJ and microscope software spell units.
UNIT_ANGSTROM = {
    "a": 1.0,
    "å": 1.0,
    "\u212b": 1.0,
    "angstrom": 1.0,
    "angstroms": 1.0,
    "pm": 0.01,
    "nm": 10.0,
    "nanometer": 10.0,
    "nanometers": 10.0,
    "um": 1e4,
    "µm": 1e4,
    "\u03bcm": 1e4,
    "micron": 1e4,
    "microns": 1e4,
    "micrometer": 1e4,
    "micrometers": 1e4,
    "mm": 1e7,
    "cm": 1e8,
    "m": 1e10,
}
_RESUNIT_ANGSTROM = {2: 2.54e8, 3: 1e8}  # inch, centimetre
APIX_RANGE = (0.01, 1000.0)  # as the MRC reader: outside it the header is not trusted


def _plausible(value: float) -> bool:
    return math.isfinite(value) and APIX_RANGE[0] < value < APIX_RANGE[1]


def _rational(value: Any) -> float | None:
    try:
        num, den = value
        return float(num) / float(den) if den else None
    except (TypeError, ValueError):
        return None


def tiff_apix(
    xres: Any,
    yres: Any,
    resolution_unit: int | None,
    imagej: Mapping[str, Any] | None = None,
) -> tuple[float, float, float] | None:
    """Pixel size (x, y, z) in Angstrom from TIFF resolution tags and ImageJ metadata.

    Args:
        xres: the XResolution tag's value (numerator, denominator), pixels per unit;
            None when absent.
        yres: the YResolution tag's value, likewise (None: as ``xres``).
        resolution_unit: the ResolutionUnit tag (1 none, 2 inch, 3 centimetre).
        imagej: the parsed ImageJ description (``unit``, ``spacing``), if any.

    Returns None when the file carries no usable pixel size. z is ImageJ's ``spacing``
    (a volume's section distance) when given, else the x pixel size.
    """
    unit = str((imagej or {}).get("unit", "")).strip().lower()
    factor = UNIT_ANGSTROM.get(unit)
    if factor is None and not unit:
        factor = _RESUNIT_ANGSTROM.get(int(resolution_unit or 0))
    if factor is None:
        return None
    x_per_unit, y_per_unit = _rational(xres), _rational(yres)
    if not x_per_unit or x_per_unit <= 0:
        return None
    if not y_per_unit or y_per_unit <= 0:
        y_per_unit = x_per_unit
    apix_x, apix_y = factor / x_per_unit, factor / y_per_unit
    spacing = (imagej or {}).get("spacing")
    apix_z = apix_x
    if isinstance(spacing, (int, float)) and not isinstance(spacing, bool) and spacing > 0:
        apix_z = float(spacing) * factor
    if not all(_plausible(v) for v in (apix_x, apix_y, apix_z)):
        return None
    return apix_x, apix_y, apix_z


def tiff_header_keys(tif: Any, page: Any) -> dict[str, Any]:
    """EMAN2 header keys a TIFF page carries beyond the pixels: ``apix_x/y/z`` (when the
    file sets a plausible pixel size) and ``TIFF.sampleformat`` (1 unsigned, 2 signed,
    3 float: what ``export`` restores)."""
    out: dict[str, Any] = {}
    tags = page.tags
    try:  # tifffile applies the TIFF default (1, unsigned) when the tag is absent
        out["TIFF.sampleformat"] = int(page.sampleformat)
    except (AttributeError, TypeError, ValueError):
        pass
    try:
        imagej = tif.imagej_metadata if tif.is_imagej else None
    except Exception:  # a damaged description is no pixel size, not an unreadable file
        imagej = None
    xres, yres, unit = tags.get(282), tags.get(283), tags.get(296)
    apix = tiff_apix(
        xres.value if xres is not None else None,
        yres.value if yres is not None else None,
        int(unit.value) if unit is not None else None,
        imagej,
    )
    if apix is not None:
        for axis, value in zip("xyz", apix, strict=True):
            out[f"apix_{axis}"] = np.float32(value)
    return out
