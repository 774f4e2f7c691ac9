"""Shared test fixtures: paths to the read-only shared data (``../shared`` from the repo)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
REAL = SHARED / "data" / "real"
EMAN2_WRITTEN = SHARED / "data" / "eman2_written"
REAL_FILES = sorted(
    p for p in REAL.glob("*") if p.is_file() and p.name not in ("MANIFEST.md", "SHA256SUMS")
)


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
