"""The installed package holds only what a user runs: the measurement lab (``lab/``) stays out of it."""

from __future__ import annotations

import ast
import importlib.util
import re

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


# Below the pipeline nothing reads params.yaml's Config: fsds.pipeline.plan resolves it into plain values.
PLAIN_VALUE_LAYERS = ("method", "engine", "deploy")


def test_the_engine_method_and_deploy_never_read_the_config():
    from fsds.imports import imported_modules

    readers = [str(path.relative_to(REPO)) for layer in PLAIN_VALUE_LAYERS
               for path in sorted((REPO / "fsds" / layer).glob("*.py"))
               if "fsds.config" in imported_modules(path, REPO)]
    assert readers == []


def architecture_section() -> str:
    readme = (REPO / "README.md").read_text()
    start = readme.index("## Architecture")
    return readme[start:readme.index("\n## ", start + 1) if "\n## " in readme[start + 1:] else len(readme)]


def test_the_readme_architecture_names_every_folder_and_module():
    """The README's map is the newcomer's: a module or folder it does not name is one it hides."""
    section = architecture_section()
    names = {p.name + "/" for p in (REPO / "fsds").iterdir() if p.is_dir() and p.name != "__pycache__"}
    names |= {p.stem for p in (REPO / "fsds").rglob("*.py") if p.name != "__init__.py"}
    names |= {p.name + "/" for p in REPO.iterdir() if p.name in ("stages", "lab", "tests", "reports")}
    assert sorted(name for name in names if not re.search(rf"(?<!\w){re.escape(name)}(?!\w)", section)) == []
