"""MRC axis orders (mapc, mapr, maps) that are not an order of 1, 2, 3 are read as stored
(1, 2, 3) with a warning that says so, never silently."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from helpers import eman_decode, run_cli, write_mrc

F32 = np.float32


def with_axes(path: Path, axes: tuple[int, int, int]) -> Path:
    with open(path, "r+b") as fh:
        fh.seek(64)  # mapc, mapr, maps: words 17-19
        fh.write(struct.pack("<3i", *axes))
    return path


@pytest.mark.parametrize("axes", [(1, 1, 3), (9, 9, 9), (0, 1, 2), (-1, 2, 3)])
def test_an_invalid_axis_order_is_read_as_stored_and_said(
    axes: tuple[int, int, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = np.arange(3 * 4 * 5, dtype=F32).reshape(3, 4, 5)
    src = with_axes(write_mrc(tmp_path / "v.mrc", data), axes)
    rc, _, err = run_cli(capsys, "--bits", "8", src)
    assert rc == 0
    assert err == (
        f"WARNING: {src}: axis order mapc, mapr, maps = {axes} is not an order of 1, 2, 3; "
        "read as 1, 2, 3 (x, y, z as stored)\n"
    )
    ((values, mapping),) = eman_decode(tmp_path / "v.hdf")
    assert mapping is not None
    assert np.array_equal(values.reshape(data.shape), data)  # integers, exact at 8 bits


def test_an_unset_axis_order_is_the_standard_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = np.arange(4 * 5, dtype=F32).reshape(4, 5)
    src = with_axes(write_mrc(tmp_path / "v.mrc", data), (0, 0, 0))
    rc, _, err = run_cli(capsys, "--bits", "8", src)
    assert (rc, err) == (0, "")
