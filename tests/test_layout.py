"""The package's layout rules (ARCHITECTURE.md): which folder may import which, no cycles."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import REPO

PACKAGE = REPO / "src" / "admmcompress"

#: folder (or top-level module) -> what it may import from the package besides itself
ALLOWED: dict[str, set[str]] = {
    "registry": set(),
    "_version": set(),
    "constraints": {"registry"},
    "core": {"constraints", "registry"},
    "structure": set(),
    "models": {"registry"},
    "data": {"registry"},
    "formats": {"core", "constraints", "structure", "models", "registry"},
    "train": {"core", "constraints", "data", "registry"},
    "recipe": {"core", "constraints", "data", "models", "registry"},
    "run": {
        "_version",
        "constraints",
        "core",
        "data",
        "formats",
        "models",
        "recipe",
        "registry",
        "structure",
        "train",
    },
    "inference": set(),
    "integrations": {"core", "constraints", "registry"},
}
#: the library a user's own loop imports: nothing of the CLI, the schema, data or models
CORE = ("constraints", "core")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> Iterator[str]:
    """Every admmcompress module ``path`` imports, at any depth, outside TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("admmcompress"):
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            else:
                target = node.module or ""
            if not target.startswith("admmcompress"):
                continue
            yield target
            for alias in node.names:  # "from . import inputs" imports a module
                candidate = f"{target}.{alias.name}"
                if _path_of(candidate) is not None:
                    yield candidate


def _path_of(module: str) -> Path | None:
    rel = Path(*module.split(".")[1:])
    for p in (PACKAGE / rel / "__init__.py", PACKAGE / rel.with_suffix(".py")):
        if p.is_file():
            return p
    return None


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(package)"


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_folder_imports_only_what_it_may(module: str) -> None:
    room = _room(module)
    if room not in ALLOWED:  # __init__, __main__, cli: the top, free to import anything
        return
    bad = sorted(
        {t for t in _imports(MODULES[module]) if _room(t) != room and _room(t) not in ALLOWED[room]}
    )
    assert not bad, f"{module} ({room}/) may not import {bad}; see ARCHITECTURE.md"


def test_the_core_imports_no_cli_schema_data_or_models() -> None:
    for module, path in MODULES.items():
        if _room(module) in CORE:
            reached = {_room(t) for t in _imports(path)}
            assert reached <= {*CORE, "registry"}, (module, reached)


def test_no_import_cycles() -> None:
    graph = {m: {t for t in _imports(p) if t in MODULES and t != m} for m, p in MODULES.items()}
    # a package's __init__ re-exporting its own modules is not a cycle of the design
    done: set[str] = set()
    stack: list[str] = []

    def visit(m: str) -> None:
        if m in stack:
            cycle = [*stack[stack.index(m) :], m]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if m in done:
            return
        stack.append(m)
        for t in sorted(graph[m]):
            if not (m.startswith(t + ".") and MODULES[t].name == "__init__.py"):
                visit(t)
        stack.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)


def test_every_module_of_a_role_folder_says_what_it_holds() -> None:
    for module, path in MODULES.items():
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc, f"{module} has no docstring"
