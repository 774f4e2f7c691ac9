"""The package's shape (issue 15): no module over about 500 lines, no import cycles.

Imports are read with ``ast``, never by importing: module-level and function-level
imports count (a function-level import is still a dependency, only a later one); imports
under ``if TYPE_CHECKING:`` do not (they never run). A package's ``__init__`` is a node
of its own; the implicit import of a parent package that every submodule import makes
is not an edge (else every module would be in one cycle with ``e2compress/__init__``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "e2compress"
MAX_LINES = 520


def module_names(root: Path) -> dict[str, Path]:
    """Dotted name of every module of the package at ``root`` (``pkg.sub.mod``; a
    package's ``__init__.py`` is named after the package)."""
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree`` (in functions too), except the bodies of
    ``if TYPE_CHECKING:`` blocks."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """For each module of the package at ``root``: the package's modules it imports."""
    modules = module_names(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        # the package a relative import is relative to
        here = name.split(".") if is_package else name.split(".")[:-1]
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = here[: len(here) - (node.level - 1)]
                    module = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    module = node.module or ""
                # ``from pkg import sub``: the submodule when there is one
                targets = [
                    f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module
                    for alias in node.names
                ]
            for target in targets:
                # ``import pkg.sub.mod`` names the longest module that exists
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:
        nonlocal counter
        # iterative depth-first search: (node, iterator over its successors)
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return sorted(found)


def test_no_module_over_the_line_limit() -> None:
    long = {
        path.relative_to(PACKAGE).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for path in PACKAGE.rglob("*.py")
    }
    over = sorted(f"{name}: {n} lines" for name, n in long.items() if n > MAX_LINES)
    assert not over, f"modules over {MAX_LINES} lines: {', '.join(over)}"


def test_no_import_cycles() -> None:
    graph = import_graph(PACKAGE)
    assert graph.get("e2compress.pipeline")  # the parser found the package's imports
    found = cycles(graph)
    assert not found, "import cycles among: " + "; ".join(" <-> ".join(c) for c in found)


def _package(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        path = pkg / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return pkg


@pytest.mark.parametrize(
    "files",
    [
        # module level, both ways
        {"a.py": "from .b import x\n", "b.py": "from . import a\nx = 1\n"},
        # a function-level import closes the cycle
        {"a.py": "from .b import x\n", "b.py": "x = 1\ndef f():\n    from .a import y\n"},
        # through a subpackage, a parent-relative import and an absolute one
        {
            "a.py": "import pkg.sub.c\n",
            "sub/__init__.py": "",
            "sub/c.py": "from ..b import x\n",
            "b.py": "from pkg import a\nx = 1\n",
        },
        # a package's __init__ that imports a module importing it back
        {"__init__.py": "from .a import x\n", "a.py": "from . import y\nx = 1\n"},
    ],
    ids=["module-level", "function-level", "subpackage", "init"],
)
def test_checker_finds_a_cycle(tmp_path: Path, files: dict[str, str]) -> None:
    found = cycles(import_graph(_package(tmp_path, files)))
    assert len(found) == 1
    assert "pkg.a" in found[0]


def test_checker_ignores_type_checking_imports(tmp_path: Path) -> None:
    pkg = _package(
        tmp_path,
        {
            "a.py": "from .b import x\n",
            "b.py": (
                "from typing import TYPE_CHECKING\nimport typing\nx = 1\n"
                "if TYPE_CHECKING:\n    from .a import y\n"
                "if typing.TYPE_CHECKING:\n    from . import a\nelse:\n    from . import c\n"
            ),
            "c.py": "",
        },
    )
    graph = import_graph(pkg)
    assert graph["pkg.b"] == {"pkg.c"}  # the else branch runs
    assert graph["pkg.a"] == {"pkg.b"}
    assert cycles(graph) == []


def test_checker_reports_every_member_of_a_longer_cycle(tmp_path: Path) -> None:
    pkg = _package(
        tmp_path,
        {
            "a.py": "from . import b\n",
            "b.py": "from . import c\n",
            "c.py": "def f():\n    import pkg.a\n",
            "d.py": "from . import a\n",  # depends on the cycle, is not in it
        },
    )
    assert cycles(import_graph(pkg)) == [["pkg.a", "pkg.b", "pkg.c"]]
