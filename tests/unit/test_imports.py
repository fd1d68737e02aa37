"""The package contracts hold by construction: the import-linter allow-list names every part of
trainer the launcher and cluster may not reach, and no two modules import each other (directly or
around a longer cycle). Reads the import graph with grimp, as import-linter does; no processes."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import tomllib
from pathlib import Path

import grimp

from tests.conftest import REPO_ROOT

PROJECT_PACKAGES = ("launcher", "cluster", "trainer", "tests")
ALLOWED_TO_LAUNCHER_AND_CLUSTER = {"trainer.config", "trainer.formats", "trainer.protocols"}


def test_the_allow_list_contract_names_every_other_part_of_trainer() -> None:
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    contract = next(
        c
        for c in config["tool"]["importlinter"]["contracts"]
        if c["type"] == "forbidden" and set(c["source_modules"]) == {"launcher", "cluster"}
    )
    children = {f"trainer.{m.name}" for m in pkgutil.iter_modules([str(REPO_ROOT / "trainer")])}
    assert children >= ALLOWED_TO_LAUNCHER_AND_CLUSTER
    forbidden_trainer = {m for m in contract["forbidden_modules"] if m.startswith("trainer.")}
    assert forbidden_trainer == children - ALLOWED_TO_LAUNCHER_AND_CLUSTER
    assert contract["allow_indirect_imports"] is False


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of size > 1 (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_strongly_connected_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_around_a_cycle() -> None:
    graph = grimp.build_graph("launcher", "cluster", "trainer")
    ours = {m for m in graph.modules if m.split(".")[0] in ("launcher", "cluster", "trainer")}
    edges = {m: graph.find_modules_directly_imported_by(m) & ours for m in ours}
    cycles = strongly_connected(edges)
    assert cycles == [], f"import cycles: {cycles}"


def _project_imports(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, name) of every import of project code in a file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in PROJECT_PACKAGES:
                found += [(node.lineno, node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [
                (node.lineno, alias.name, None)
                for alias in node.names
                if alias.name.split(".")[0] in PROJECT_PACKAGES
            ]
    return found


def test_every_import_of_project_code_resolves_even_inside_functions() -> None:
    """Imports inside functions (spawned ranks, subprocess helpers, benchmarks) are not run by
    the unit tests; a module moved or a name renamed must still fail here, not in CI's slow half."""
    broken = []
    for path in sorted((REPO_ROOT).glob("*/**/*.py")):
        if path.parts[len(REPO_ROOT.parts)] not in ("tests", "benchmarks", *PROJECT_PACKAGES):
            continue
        for line, module, name in _project_imports(path):
            where = f"{path.relative_to(REPO_ROOT)}:{line}"
            try:
                imported = importlib.import_module(module)
            except ImportError as exc:
                broken.append(f"{where}: {module} ({exc})")
                continue
            if name is not None and name != "*" and not hasattr(imported, name):
                try:
                    importlib.import_module(f"{module}.{name}")
                except ImportError:
                    broken.append(f"{where}: {module} has no {name}")
    assert broken == [], "\n".join(broken)
