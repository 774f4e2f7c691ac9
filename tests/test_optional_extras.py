"""Without ncempy (the optional extras ``dm`` and ``ser``) a DM or SER file fails on one
line that names the extra to install. Runs with or without ncempy installed."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from e2compress import InputError, open_source
from helpers import write_dm, write_ser


@pytest.mark.parametrize(("name", "extra"), [("x.dm4", "dm"), ("x.dm3", "dm"), ("x.ser", "ser")])
def test_missing_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, extra: str
) -> None:
    path = tmp_path / name
    data = np.zeros((4, 4), np.float32)
    if name.endswith(".ser"):
        write_ser(path, data[None])
    else:
        write_dm(path, data, int(name[-1]))
    real_import = builtins.__import__

    def no_ncempy(module: str, *args: Any, **kwargs: Any) -> Any:
        if module.startswith("ncempy"):
            raise ImportError(module)
        return real_import(module, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ncempy)
    with pytest.raises(InputError) as exc:
        open_source(path)
    message = str(exc.value)
    assert "\n" not in message
    assert str(path) in message
    assert f"e2compress[{extra}]" in message
