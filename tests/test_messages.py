"""Library messages name parameters, not command-line flags (the CLI prints its own words:
see the CLI tests, which still see ``--force``, ``--recursive``, ``--bits auto``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from e2compress.batch import Inputs
from e2compress.errors import E2CompressError
from e2compress.export import export_file
from e2compress.options import Options
from e2compress.runner import Job, run_job
from helpers import write_mrc


def no_flag(text: str) -> None:
    assert " --" not in f" {text}", text


def test_inputs_name_the_parameter(tmp_path: Path) -> None:
    src = write_mrc(tmp_path / "a.mrc", np.ones((4, 4), np.float32))
    with pytest.raises(E2CompressError) as info:
        Inputs(recursive=[src]).check()
    assert str(info.value).startswith("recursive needs a readable directory")


def test_export_names_force(tmp_path: Path) -> None:
    src = write_mrc(tmp_path / "a.mrc", np.ones((4, 4), np.float32))
    (tmp_path / "b.mrc").write_bytes(b"x")
    with pytest.raises(E2CompressError) as info:
        export_file(src, tmp_path / "b.mrc")
    assert "force=True" in str(info.value)
    no_flag(str(info.value))


def test_auto_note_names_bits_auto(tmp_path: Path) -> None:
    data = np.random.default_rng(1).normal(10.0, 2.0, (32, 32)).astype(np.float32)
    src = write_mrc(tmp_path / "a.mrc", data)
    r = run_job(Job(str(src), str(src), str(tmp_path / "a.hdf"), Options(bits="auto")), threads=1)
    assert r.status == "done", r.message
    assert r.note.startswith(f"{src}: bits=auto chose ")
    no_flag(r.note)
