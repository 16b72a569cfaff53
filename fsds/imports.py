"""Which fsds modules a module runs, read from its import statements (nothing is imported).

DVC re-runs a stage when one of its ``deps`` changes, so each stage of ``dvc.yaml`` lists the
source files of every fsds module its script imports, directly or through other fsds modules;
``tests/test_dvc_deps.py`` checks that with :func:`import_closure`. A killed training resumes
only from a snapshot taken under the same training code (:mod:`fsds.engine.resume` hashes the
closure of :mod:`fsds.engine.training`).

Every import counts, at the top of a module or inside a function. Package ``__init__.py`` files
hold only a docstring (the test checks it), so they run nothing and are left out.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = "fsds"
ROOT = Path(__file__).resolve().parent.parent  # the folder holding the fsds package


def module_file(module: str, root: Path = ROOT) -> Path | None:
    """The source file of ``module`` (``fsds.engine.training`` -> ``fsds/engine/training.py``), or
    None for a package or a name that is no module."""
    path = root.joinpath(*module.split(".")).with_suffix(".py")
    return path if path.is_file() else None


def imported_modules(path: Path, root: Path) -> set[str]:
    """The fsds modules that the file at ``path`` imports (``from fsds.x import y`` is ``fsds.x``,
    or ``fsds.x.y`` when ``y`` is itself a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if (name == PACKAGE or name.startswith(PACKAGE + ".")) and module_file(name, root) is not None:
                found.add(name)
    return found


@cache
def _closure(start: str, root: Path) -> frozenset[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        path = Path(todo.pop())
        for module in imported_modules(path, root):
            if module not in seen:
                seen.add(module)
                todo.append(str(module_file(module, root)))
    return frozenset(seen)


def import_closure(path: str | Path, root: Path = ROOT) -> set[str]:
    """Every fsds module that running the file at ``path`` imports, directly or not (itself excluded
    unless something imports it back)."""
    return set(_closure(str(Path(path).resolve()), root))


def module_closure(module: str, root: Path = ROOT) -> set[str]:
    """``module`` and every fsds module it imports, directly or not."""
    path = module_file(module, root)
    if path is None:
        raise ValueError(f"{module} is not a module of {root}")
    return {module} | import_closure(path, root)


def import_cycles(root: Path = ROOT) -> list[list[str]]:
    """Cycles in the import graph of the fsds package: each is a list of modules, the first
    importing the second and so on back to the first. Empty when the layers are respected."""
    graph = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        if path.name != "__init__.py":
            graph[".".join(path.relative_to(root).with_suffix("").parts)] = sorted(imported_modules(path, root))
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:  # depth-first search; a back edge closes a cycle
        state[node] = "open"
        stack.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node)
    return cycles
