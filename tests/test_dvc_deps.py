"""dvc.yaml declares what each stage runs and reads, so `dvc status` never calls stale results current.

- deps: every stage lists exactly the fsds modules its script imports, directly or not (read
  from the import statements by :mod:`fsds.imports`, nothing is run);
- params: every params.yaml key a stage's code reads is declared for it (found by running the
  stages on a tiny dataset with the config recording each value read);
- the package has no import cycle, and its ``__init__.py`` files run nothing.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import importlib
import shlex
import sys
from pathlib import Path
from typing import Any, Mapping

import yaml

import fsds.config as config_module
from fsds.config import PROFILE_KEYS
from fsds.imports import import_closure, import_cycles, imported_modules, module_file
from fsds.pipeline import plan as plan_module
from tests.conftest import REPO
from tests.params import params_with

DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())


def stage_body(stage: Mapping[str, Any]) -> Mapping[str, Any]:
    return stage.get("do", stage)  # foreach stages keep their body under `do`


def stage_script(stage: Mapping[str, Any]) -> Path:
    """``python -m stages.train ...`` -> ``stages/train.py``."""
    args = shlex.split(stage_body(stage)["cmd"])
    assert args[:2] == ["python", "-m"], f"stage command {args} should be `python -m stages.<name>`"
    return REPO / (args[2].replace(".", "/") + ".py")


def module_deps_problems(spec: Mapping[str, Any], root: Path = REPO) -> dict[str, dict[str, list[str]]]:
    """For each stage whose fsds deps differ from its script's import closure: what is missing and what is extra."""
    problems = {}
    for name, stage in spec["stages"].items():
        script = stage_script(stage)
        deps = {d for d in stage_body(stage).get("deps", []) if d.startswith(("fsds/", "stages/"))}
        runs = {str(module_file(m, root).relative_to(root)) for m in import_closure(script, root)}
        runs.add(str(script.relative_to(root)))
        missing, extra = sorted(runs - deps), sorted(deps - runs)
        if missing or extra:
            problems[name] = {"missing": missing, "extra": extra}
    return problems


def test_every_stage_depends_on_exactly_the_modules_it_runs():
    assert module_deps_problems(DVC_YAML) == {}


def test_the_dependency_check_fails_when_dvc_yaml_misses_a_module():
    spec = copy.deepcopy(DVC_YAML)
    deps = spec["stages"]["train"]["do"]["deps"]
    deps.remove("fsds/method/unet.py")  # the U-Net that AlbuNet's stage does not name but imports
    spec["stages"]["predict"]["do"]["deps"].append("fsds/pipeline/report.py")  # a module predict never runs
    problems = module_deps_problems(spec)
    assert problems == {"train": {"missing": ["fsds/method/unet.py"], "extra": []},
                        "predict": {"missing": [], "extra": ["fsds/pipeline/report.py"]}}


def test_the_closure_follows_imports_through_other_modules():
    closure = import_closure(REPO / "stages" / "predict.py")
    assert "fsds.pipeline.predict" in closure  # imported by the script
    assert "fsds.method.unet" in closure  # checkpoint -> networks -> unet
    assert "fsds.pipeline.train" not in closure


def test_the_package_has_no_import_cycle():
    assert import_cycles() == []


# The layers of the README's architecture section, lowest first; a module imports only from its
# own layer and the ones below (the top-level modules config, errors, io and imports are the floor).
LAYERS = ("data", "method", "evaluation", "engine", "deploy", "pipeline")


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) + 1 if len(parts) > 2 else 0


def test_modules_import_only_from_their_layer_and_below():
    upward = []
    for path in sorted((REPO / "fsds").rglob("*.py")):
        if path.name == "__init__.py":
            continue
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        upward += [f"{module} -> {dep}" for dep in sorted(imported_modules(path, REPO)) if layer(dep) > layer(module)]
    assert upward == []
    assert {p.name for p in (REPO / "fsds").iterdir() if p.is_dir() and p.name != "__pycache__"} == set(LAYERS)


def test_package_init_files_run_nothing():
    """The closure leaves ``__init__.py`` out, which is right only while they hold just a docstring."""
    for init in sorted((REPO / "fsds").rglob("__init__.py")):
        body = ast.parse(init.read_text()).body
        statements = [n for n in body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        allowed = [n for n in statements if isinstance(n, ast.Assign) and init.parent.name == "fsds"]  # __version__
        assert statements == allowed, f"{init.relative_to(REPO)} runs code; keep package __init__ files to a docstring"


# --- params -------------------------------------------------------------------------------

NOT_RESULTS = ("mlflow",)  # where results are logged, not what they are: changing it must not re-run a stage


class ReadRecorder:
    """Records the dotted params.yaml key of every config value read while it is active."""

    def __init__(self, cfg: config_module.Config) -> None:
        self.paths: dict[int, str] = {}
        self.read: set[str] = set()
        self._walk(cfg, "")

    def _walk(self, obj: Any, path: str) -> None:
        if dataclasses.is_dataclass(obj):
            self.paths[id(obj)] = path
            for f in dataclasses.fields(obj):
                self._walk(object.__getattribute__(obj, f.name), f"{path}.{f.name}".lstrip("."))
        elif isinstance(obj, Mapping):
            for key, value in obj.items():
                self._walk(value, f"{path}.{key}")

    def install(self, monkeypatch) -> None:
        recorder = self
        for cls in vars(config_module).values():
            if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
                continue
            names = {f.name for f in dataclasses.fields(cls)}

            def getattribute(obj, name, names=names):
                value = object.__getattribute__(obj, name)
                path = recorder.paths.get(id(obj))
                if path is not None and name in names and not (dataclasses.is_dataclass(value) or isinstance(value, Mapping)):
                    recorder.read.add(f"{path}.{name}".lstrip("."))
                return value

            monkeypatch.setattr(cls, "__getattribute__", getattribute, raising=False)


def uncovered(read: set[str], declared: list[str], profile: str) -> list[str]:
    """The keys read that no declared param covers (a declared ``train`` covers ``train.augment``; the
    train keys a profile sets need ``profile`` and that profile's key)."""
    def covered(key: str) -> bool:
        return any(key == d or key.startswith(d + ".") for d in declared)

    out = []
    for key in sorted(read):
        if key.split(".")[0] in NOT_RESULTS:
            continue
        if key in {f"train.{k}" for k in PROFILE_KEYS}:  # they come from the chosen profile
            ok = covered("profile") and covered(f"profiles.{profile}.{key.split('.')[1]}")
        else:
            ok = covered(key)
        if not ok:
            out.append(key)
    return out


TINY = {
    "data": {"categories": ["fabric"], "synthetic": {"n_train_good": 4, "n_test_good": 2, "n_per_defect": 3, "size": 64}},
    "split": {"calibration_normals": 1},  # of 4
    "train": {"image_size": 32, "iterations": 2, "eval_every": 1, "eval_images": 2, "checkpoint_every": 1},
    "methods": ["B_NBR_CaP"],
    "mlflow": {"enabled": False},
}


def test_every_stage_declares_the_params_it_reads(tmp_path, monkeypatch):
    """Run each stage's ``main()`` in order on a tiny dataset and compare what it read with dvc.yaml."""
    raw = params_with(TINY)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    item = raw["methods"][0]
    substitutions = {"${item}": item, "${profile}": raw["profile"]}
    missing = {}
    for name, stage in DVC_YAML["stages"].items():
        body = stage_body(stage)
        cmd, declared = body["cmd"], list(body.get("params", []))
        for old, new in substitutions.items():
            cmd = cmd.replace(old, new)
            declared = [d.replace(old, new) for d in declared]
        args = shlex.split(cmd)
        module = importlib.import_module(args[2])
        recorders = []

        def recording_load(*a, _load=config_module.load_config, **kw):
            cfg = _load(*a, **kw)
            recorders.append(ReadRecorder(cfg))
            recorders[-1].install(monkeypatch)
            return cfg

        with monkeypatch.context() as m:
            # a stage loads params.yaml itself or through fsds.pipeline.plan.load (which checks it too)
            for loader in (module, plan_module):
                if hasattr(loader, "load_config"):
                    m.setattr(loader, "load_config", recording_load)
            m.setattr(sys, "argv", [args[2], *args[3:]])
            module.main()
        (recorder,) = recorders
        assert recorder.read, f"stage {name} read no params: is the recorder working?"
        gaps = uncovered(recorder.read, declared, raw["profile"])
        if gaps:
            missing[name] = gaps
    assert missing == {}, f"stages read params that dvc.yaml does not declare for them: {missing}"


def test_the_params_check_sees_an_undeclared_read():
    assert uncovered({"train.augment", "metrics.threshold", "mlflow.experiment"}, ["train"], "fast") == ["metrics.threshold"]
    assert uncovered({"train.lr"}, ["train"], "fast") == ["train.lr"]
    assert uncovered({"train.lr"}, ["profile", "profiles.fast"], "fast") == []
    assert uncovered({"train.image_size"}, ["train"], "fast") == ["train.image_size"]
    assert uncovered({"train.image_size"}, ["profile", "profiles.fast"], "fast") == []
