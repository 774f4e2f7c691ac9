"""The documentation against the code it describes: parameters, options, defaults, sizes.

The docs site itself (links, anchors, pages in the nav) is checked by ``mkdocs build
--strict`` in CI; these tests catch prose that drifts from the code.
"""

from __future__ import annotations

import argparse
import inspect
import re

import pytest

import e2compress
from e2compress import cli, commands
from e2compress.options import DEFAULT_CHUNK_ROWS, Options
from helpers import REPO

DOCS = REPO / "docs"


def _text(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def _slug(heading: str) -> str:
    """The anchor GitHub and MkDocs give a heading."""
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", heading).strip().lower())


def _long_options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--")}


def test_readme_is_short_and_keeps_the_ci_test_command() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode()) <= 8 * 1024
    assert "\n.venv/bin/python -m pytest -q\n" in readme  # .ci/run runs this command
    for page, anchor in re.findall(r"\]\((docs/[^)#]+)(?:#([^)]+))?\)", readme):
        assert (REPO / page).is_file(), page
        if anchor:
            headings = re.findall(r"^#+ (.+)$", (REPO / page).read_text(encoding="utf-8"), re.M)
            assert anchor in {_slug(h) for h in headings}, (page, anchor)


def test_api_page_documents_every_compress_file_parameter() -> None:
    """The parameter table of docs/api.md names exactly compress_file's parameters."""
    api = _text("api.md")
    documented = re.findall(r"^\| `(\w+)` \|", api, flags=re.MULTILINE)
    actual = list(inspect.signature(e2compress.compress_file).parameters)
    assert documented == actual
    signature = api.split("```python\ncompress_file(", 1)[1].split(")\n```", 1)[0]
    names = [part.split("=")[0].strip() for part in signature.split(",")]
    assert [n for n in names if n != "*"] == actual


def test_api_page_gives_the_write_images_signature() -> None:
    signature = _text("api.md").split("```python\nwrite_images(", 1)[1].split(")\n```", 1)[0]
    names = [part.split("=")[0].strip() for part in signature.split(",")]
    actual = list(inspect.signature(e2compress.write_images).parameters)
    assert [n for n in names if n != "*"] == actual


def test_api_page_documents_every_option_field() -> None:
    api = _text("api.md")
    for name in inspect.signature(Options).parameters:
        assert f"`{name}`" in api, name


def test_format_page_gives_the_chunk_rows_the_code_writes() -> None:
    rows = DEFAULT_CHUNK_ROWS
    assert f"Chunks ({rows}, nx) / (1, {rows}, nx) (fewer rows when ny < {rows}" in _text(
        "format.md"
    )


@pytest.mark.parametrize("watch", [False, True])
def test_every_command_line_option_is_documented(watch: bool) -> None:
    docs = "".join(p.read_text(encoding="utf-8") for p in DOCS.glob("*.md"))
    missing = sorted(o for o in _long_options(cli.build_parser(watch)) if o not in docs)
    assert missing == []


def test_every_subcommand_option_is_documented() -> None:
    docs = "".join(p.read_text(encoding="utf-8") for p in DOCS.glob("*.md"))
    subparsers = [
        a for a in commands.build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    ]
    assert subparsers
    for name, parser in subparsers[0].choices.items():
        assert f"e2compress {name}" in docs, name
        missing = sorted(o for o in _long_options(parser) if o not in docs)
        assert missing == [], name
