"""The layers hold: ``common/`` imports nothing of the programs built on it, ``broker/`` and
``workers/`` never import each other, and no modules import each other in a circle.

Read from the source (an AST walk), every import counted — at the top, inside functions, and
under ``TYPE_CHECKING`` — except for cycles, where an import only for type checking is not
one (it never runs). ``common/cli.py`` names its subcommands' modules as strings (the
dispatch table of ``keepa-fleet``): that is not an import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "broker", "workers", "sim", "gateway", "web")
# The one import inside a function that closes a circle, and why it may: the storage
# factory loads the PostgreSQL backend (and its optional driver, psycopg) only for a
# postgresql:// URL; the backend subclasses the SQLite one.
LAZY_EDGES = {("common.storage", "common.storage_pg")}
# package -> the packages it must never import
FORBIDDEN = {
    "common": {"broker", "workers", "sim", "gateway", "web"},
    "broker": {"workers", "sim", "gateway", "web"},
    "workers": {"broker", "sim", "gateway", "web"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """(imported module, only for type checking) of every import in ``path``."""
    out: list[tuple[str, bool]] = []
    package = module_name(path) if path.name == "__init__.py" else module_name(path.parent)

    def visit(node: ast.AST, typing_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.body:
                    visit_stmt(stmt, True)
                for stmt in child.orelse:
                    visit_stmt(stmt, typing_only)
                continue
            visit_stmt(child, typing_only)

    def visit_stmt(node: ast.AST, typing_only: bool) -> None:
        if isinstance(node, ast.Import):
            out.extend((alias.name, typing_only) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, typing_only))
            for alias in node.names:  # ``from broker import states`` imports broker.states
                out.append((f"{mod}.{alias.name}", typing_only))
        visit(node, typing_only)

    visit(ast.parse(path.read_text(), str(path)), False)
    return out


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def graph() -> dict[str, list[tuple[str, bool]]]:
    modules = project_modules()
    return {
        name: [(m, t) for m, t in imports_of(path) if m in modules and m != name]
        for name, path in modules.items()
    }


def test_the_walk_sees_the_packages() -> None:
    g = graph()
    assert "broker.core" in g and "common.protocol" in g and "workers.link" in g
    assert ("common.protocol", False) in g["broker.core"]  # (a walk that sees nothing passes)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_never_imports_what_is_built_on_it(package: str) -> None:
    bad = [
        f"{name} imports {imported}"
        for name, imports in graph().items()
        if name.split(".")[0] == package
        for imported, _ in imports
        if imported.split(".")[0] in FORBIDDEN[package]
    ]
    assert bad == []


def find_cycle(g: dict[str, list[str]]) -> list[str] | None:
    """One import cycle of ``g`` (module -> modules it imports), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in g.get(node, []):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = walk(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(g):
        if start not in state:
            found = walk(start)
            if found:
                return found
    return None


def runtime_graph() -> dict[str, list[str]]:
    """Module -> the project modules it imports when it runs. A package's own modules
    import the package ``__init__`` first, which is no edge back to it."""
    out: dict[str, list[str]] = {}
    for name, imports in graph().items():
        out[name] = sorted(
            {
                m
                for m, typing_only in imports
                if not typing_only and not name.startswith(m + ".") and (name, m) not in LAZY_EDGES
            }
        )
    return out


def test_no_import_cycles() -> None:
    assert find_cycle(runtime_graph()) is None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": []}) is None
