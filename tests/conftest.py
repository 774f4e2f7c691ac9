"""Shared test fixtures and collection hooks; the helpers are in helpers.py."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from helpers import EMAN2_WRITTEN, REAL


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not REAL.is_dir():
        skip = pytest.mark.skip(reason="../shared/data is not present beside the repo")
        for item in items:
            if "shared" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def ranges_json() -> dict[str, Any]:
    with open(EMAN2_WRITTEN / "ranges.json") as fh:
        return json.load(fh)


@pytest.fixture(autouse=True)
def _fresh_cli_state() -> Iterator[None]:
    """cli.main() must restore the signal handlers it installs; check it, then undo."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    handlers = {s: signal.getsignal(s) for s in sigs}
    yield
    left = {s: signal.getsignal(s) for s in sigs}
    for s, h in handlers.items():
        signal.signal(s, h)
    assert left == handlers, "a test left signal handlers installed"
