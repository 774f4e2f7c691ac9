"""Console-script shim for ``e2compress`` and ``e2compress.py`` (EMAN2's command name).

The ``e2compress.py`` script lands in the environment's ``bin/``. Python puts a
script's own directory first on ``sys.path``, so in any program started from that
``bin/`` (``dask worker``, ``pytest``, this script itself) ``import e2compress`` finds
the script instead of the package. The script only does ``from _e2compress_launcher
import run``; that lookup (:func:`__getattr__`) notices when the importing module is
such a shadow and puts the real package in its place in ``sys.modules``, which the
import system then hands to whoever asked for ``e2compress``.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from types import ModuleType

PACKAGE = "e2compress"


def _same_dir(entry: str, directory: str) -> bool:
    return os.path.abspath(entry or os.curdir) == directory


def unshadow() -> ModuleType | None:
    """If the module being imported as ``e2compress`` is a console script (a plain
    module, not the package), import the package with the script's directory off
    ``sys.path`` and put it in its place; returns the package, or None when there was
    nothing to do."""
    shadow = sys.modules.get(PACKAGE)
    origin = getattr(shadow, "__file__", None)
    if shadow is None or hasattr(shadow, "__path__") or not origin:
        return None
    script_dir = os.path.dirname(os.path.abspath(origin))
    saved = list(sys.path)
    sys.path[:] = [p for p in saved if not _same_dir(p, script_dir)]
    del sys.modules[PACKAGE]
    try:
        package = importlib.import_module(PACKAGE)
    except BaseException:
        sys.modules[PACKAGE] = shadow
        raise
    finally:
        sys.path[:] = saved
    return package


def main() -> None:
    """Run the e2compress command line with the script directory off ``sys.path``."""
    script_dir = os.path.dirname(os.path.abspath(sys.argv[0]))
    sys.path[:] = [p for p in sys.path if not _same_dir(p, script_dir)]
    from e2compress.cli import entry

    entry()


def __getattr__(name: str) -> Callable[[], None]:
    """``run`` (= :func:`main`) for the console scripts, unshadowing the package first.

    ``run`` is not a module attribute, so every ``from _e2compress_launcher import run``
    comes here, and an import of a script as ``e2compress`` is caught even when this
    module was imported before.
    """
    if name == "run":
        unshadow()
        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
