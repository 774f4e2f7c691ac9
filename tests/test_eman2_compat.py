"""Real EMAN2 reads what we write: every real file, at lossless and quantised settings,
decodes in EMAN2 to our values (within EMAN2's own float32 decode error) with the same
pixel size. Skips without a real EMAN2 build (``E2C_EMAN2``); the same files and values
are covered everywhere by the plain-h5py decodes in test_roundtrip and test_layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import e2compress
from helpers import eman2_home, eman2_read, real_file_params


@pytest.mark.parametrize("bits", [0, 5, 10, 16], ids=lambda b: f"bits{b}")
@pytest.mark.parametrize("path", real_file_params())
def test_eman2_reads_our_output(path: Path, bits: int, tmp_path: Path) -> None:
    eman2_home()
    out = tmp_path / "out.hdf"
    e2compress.compress_file(path, out, bits=bits, nooutliers=bits == 5)
    theirs, headers = eman2_read(out, tmp_path)
    ours = e2compress.read_images(out)
    assert len(headers) == len(ours)
    stack = (
        theirs.reshape(len(ours), *ours[0].shape)
        if len(ours) > 1
        else [theirs.reshape(ours[0].shape)]
    )
    with e2compress.open(out) as f:
        for i, (mine, eman) in enumerate(zip(ours, stack, strict=True)):
            rng = f.render_range(i)
            if rng is None:
                assert np.array_equal(mine, eman, equal_nan=True)
            else:
                # EMAN2 decodes in float32 with -ffast-math: ~5e-7 relative to the range
                scale = max(abs(rng.rmin), abs(rng.rmax), 1.0)
                assert float(np.max(np.abs(mine.astype(np.float64) - eman))) <= 2e-6 * scale
            ours_h = f.header(i)
            for key in ("apix_x", "apix_y", "apix_z"):
                assert float(headers[i][key]) == pytest.approx(float(ours_h[key]), abs=1e-4)
            assert (headers[i]["nx"], headers[i]["ny"], headers[i]["nz"]) == (
                ours_h["nx"],
                ours_h["ny"],
                ours_h["nz"],
            )
