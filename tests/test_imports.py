"""The package's import structure (issue 17): commands depend on the core, never the reverse
(nothing outside buildsys/cli/ imports it), and no modules import each other in a loop.

Every import statement counts, wherever it stands: at the top, inside a function, or under
TYPE_CHECKING, so a cycle cannot be hidden by moving an import into a function. Read with ast;
nothing of the package is imported."""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
# where each top-level package name is on disk (steps/ installs as buildsys.steps)
ROOTS = {"buildsys": REPO / "buildsys", "buildsys.steps": REPO / "steps"}
# the console script (and `python -m buildsys`) hand the command line to the CLI: they stand above it
ENTRY_POINTS = frozenset({"buildsys.launcher", "buildsys.__main__"})


def modules(roots: Mapping[str, Path]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file below the roots."""
    found: dict[str, Path] = {}
    for prefix, root in roots.items():
        for path in sorted(root.rglob("*.py")):
            parts = [p for p in path.relative_to(root).with_suffix("").parts if p != "__init__"]
            found[".".join([prefix, *parts])] = path
    return found


def imported_names(name: str, path: Path) -> Iterator[str]:
    """The dotted names one module's import statements name (anywhere in the file)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph(roots: Mapping[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of the roots it imports (the longest module a dotted name names)."""
    known = modules(roots)
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for target in imported_names(name, path):
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                graph[name].add(target)
    return graph


def cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One loop of imports, first module repeated at the end, or None."""
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        return list(exc.args[1])
    return None


GRAPH = import_graph(ROOTS)


def test_nothing_outside_cli_imports_cli() -> None:
    def cli(module: str) -> bool:
        return module == "buildsys.cli" or module.startswith("buildsys.cli.")

    offenders = sorted(
        f"{importer} imports {target}"
        for importer, targets in GRAPH.items()
        for target in targets
        if cli(target) and not cli(importer) and importer not in ENTRY_POINTS
    )
    assert offenders == []
    # the scan sees imports inside functions: the launcher imports the CLI only after the fast path
    assert "buildsys.cli" in GRAPH["buildsys.launcher"]


def test_no_import_cycle_among_the_modules() -> None:
    assert len(GRAPH) > 100 and "buildsys.steps.git" in GRAPH
    assert cycle(GRAPH) is None


def test_a_cycle_through_an_import_inside_a_function_is_found(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from pkg.b import f\n")
    (tmp_path / "pkg" / "b.py").write_text("def f():\n    from . import a\n")
    (tmp_path / "pkg" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import x\n")
    graph = import_graph({"pkg": tmp_path / "pkg"})
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.a"}}
    found = cycle(graph)
    assert found is not None and set(found) == {"pkg.a", "pkg.b"}
