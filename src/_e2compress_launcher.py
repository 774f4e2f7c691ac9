"""Console-script shim for ``e2compress`` and ``e2compress.py``.

The ``e2compress.py`` script lands in the environment's ``bin/``, which Python puts
first on ``sys.path`` when a script runs, so ``import e2compress`` would import the
script instead of the package. This module drops that directory first.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    """Run the e2compress command line with the script directory off ``sys.path``."""
    script_dir = os.path.dirname(os.path.abspath(sys.argv[0]))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != script_dir]
    from e2compress.cli import entry

    entry()
