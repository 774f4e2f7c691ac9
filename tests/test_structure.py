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


ARCHITECTURE = PACKAGE.parents[1] / "docs" / "architecture.md"
NEVER_IN_PURE = {"h5py", "mrcfile", "tifffile", "imagecodecs", "ncempy"}
# (module, call) the "never" rules allow: restoring the SIGINT handler that importing
# dask-jobqueue replaces
ALLOWED_CALLS = {("e2compress.cluster", "signal.signal")}


def parts_table(text: str) -> dict[str, tuple[set[str], set[str]]]:
    """docs/architecture.md's table: part -> (its modules, the parts it may import)."""
    rows: dict[str, tuple[set[str], set[str]]] = {}
    section = text.split("## Parts", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        cells = [c.strip().replace("\\", "") for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("Part", "") or set(cells[0]) <= {"-"}:
            continue
        part, modules, may = cells
        rows[part] = (
            {m.strip() for m in modules.split(",")},
            {p.strip() for p in may.split(",")},
        )
    return rows


def _short(name: str) -> str:
    return "e2compress" if name == "e2compress" else name.removeprefix("e2compress.")


def _parts() -> tuple[dict[str, str], dict[str, set[str]]]:
    table = parts_table(ARCHITECTURE.read_text(encoding="utf-8"))
    part_of: dict[str, str] = {}
    for part, (modules, _) in table.items():
        for module in modules:
            assert module not in part_of, f"{module} is in two parts of architecture.md"
            part_of[module] = part
    allowed = {
        part: set(table) if may == {"every part"} else may for part, (_, may) in table.items()
    }
    return part_of, allowed


def test_architecture_names_every_module_once() -> None:
    part_of, _ = _parts()
    modules = {_short(name) for name in module_names(PACKAGE)}
    assert sorted(modules - set(part_of)) == [], "modules missing from docs/architecture.md"
    assert sorted(set(part_of) - modules) == [], "architecture.md names modules that are gone"


def wrong_imports(
    graph: dict[str, set[str]], part_of: dict[str, str], allowed: dict[str, set[str]]
) -> list[str]:
    """Each import from a module into a part its own part may not import."""
    return sorted(
        f"{_short(a)} ({part_of[_short(a)]}) imports {_short(b)} ({part_of[_short(b)]})"
        for a, targets in graph.items()
        for b in targets
        if _short(a) in part_of and part_of[_short(b)] not in allowed[part_of[_short(a)]]
    )


def test_imports_follow_the_architecture() -> None:
    part_of, allowed = _parts()
    assert wrong_imports(import_graph(PACKAGE), part_of, allowed) == []


def _calls(tree: ast.AST) -> set[str]:
    """Dotted names of the functions ``tree`` calls (``open``, ``sys.exit``, ...)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func, parts = node.func, []
            while isinstance(func, ast.Attribute):
                parts.append(func.attr)
                func = func.value
            if isinstance(func, ast.Name):
                found.add(".".join([func.id, *reversed(parts)]))
    return found


def test_what_each_part_never_does() -> None:
    """pure: no I/O libraries, no open(); no part but cli prints, exits, parses
    arguments or installs signal handlers."""
    part_of, _ = _parts()
    broken = []
    for name, path in module_names(PACKAGE).items():
        part = part_of.get(_short(name))
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {
            alias.name.split(".")[0]
            for node in _imports(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            (node.module or "").split(".")[0]
            for node in _imports(tree)
            if isinstance(node, ast.ImportFrom) and not node.level
        }
        calls = _calls(tree)
        if part == "pure":
            broken += [f"{name} imports {m}" for m in sorted(imported & NEVER_IN_PURE)]
            broken += [f"{name} calls open()" for c in calls if c in ("open", "io.open")]
        if part != "cli":
            broken += [f"{name} imports argparse" for m in imported if m == "argparse"]
            broken += [
                f"{name} calls {c}"
                for c in sorted(calls)
                if c in ("print", "sys.exit", "exit", "signal.signal")
                and (name, c) not in ALLOWED_CALLS
            ]
    assert broken == []


def test_the_architecture_rules_can_fail() -> None:
    """The table parser reads the rows, and a lower part importing a higher one is
    caught."""
    text = (
        "## Parts\n\n| Part | Modules | May import |\n|---|---|---|\n"
        "| low | x, y | low |\n| high | z | low, high |\n\n## Next\n| q | r | s |\n"
    )
    table = parts_table(text)
    assert table == {"low": ({"x", "y"}, {"low"}), "high": ({"z"}, {"low", "high"})}
    part_of = {"x": "low", "y": "low", "z": "high"}
    allowed = {part: may for part, (_, may) in table.items()}
    graph = {"e2compress.x": {"e2compress.y"}, "e2compress.z": {"e2compress.x"}}
    assert wrong_imports(graph, part_of, allowed) == []
    graph["e2compress.y"] = {"e2compress.z"}
    assert wrong_imports(graph, part_of, allowed) == ["y (low) imports z (high)"]
