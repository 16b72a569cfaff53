"""The installed package holds only what a user runs: the measurement lab (``lab/``) stays out of it."""

from __future__ import annotations

import ast
import importlib.util

from tests.conftest import REPO

LAB = "lab"


def lab_imports(path) -> list[str]:
    """The modules of the lab that the file at ``path`` imports (every import statement, anywhere in it)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [name for name in names if name == LAB or name.startswith(LAB + ".")]
    return found


def test_the_package_never_imports_the_lab():
    found = {str(path.relative_to(REPO)): lab_imports(path) for path in sorted((REPO / "fsds").rglob("*.py"))}
    assert {path: names for path, names in found.items() if names} == {}


def test_the_lab_check_sees_an_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\nimport laboratory\n\ndef f():\n    from lab.bench import main\n    import lab\n")
    assert lab_imports(module) == ["lab.bench", "lab"]


def test_the_experiments_package_is_gone():
    assert importlib.util.find_spec("fsds.experiments") is None
