"""``python -m e2compress``."""

from .cli import entry

entry()
