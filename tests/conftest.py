"""Shared fixtures: a small synthetic dataset written once per test session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from fsds.data.datasets import index_dataset
from fsds.data.split import k_shot_split
from fsds.data.synthetic import generate_synthetic
from tests.params import make_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _mlflow_uri_restored():
    """``Tracker.connect`` sets MLflow's process-wide tracking URI, and MLflow sets
    ``MLFLOW_TRACKING_URI`` with it: undo both after each test, or a later test's tracker
    opens an earlier test's store (seen: "attempt to write a readonly database")."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(before)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_dataset")
    generate_synthetic(root, seed=3, n_train_good=6, n_test_good=3, n_per_defect=4, size=64)
    return root


@pytest.fixture(scope="session")
def tiny_index(tiny_root):
    return index_dataset(tiny_root)


@pytest.fixture(scope="session")
def tiny_split(tiny_index):
    return k_shot_split(tiny_index, shot=1, seed=0)


@pytest.fixture()
def photos(tmp_path):
    """Images of other sizes than the network's, colour and grey, PNG and JPEG, and a file that is no image."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(folder / "wide.png")
    Image.fromarray(rng.integers(0, 256, (90, 40), dtype=np.uint8)).save(folder / "tall_grey.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture()
def tiny_config():
    return make_config(
        {
            "shot": 1,
            "seed": 0,
            "train": {"image_size": 64, "iterations": 3, "log_every": 1},
            "variants": {
                "B": {"nbr": "none", "cap": "none"},
                "B_NBR": {"nbr": "cosine", "cap": "none"},
                "B_NBR_CaP": {"nbr": "cosine", "cap": "weighted"},
            },
            "mlflow": {"enabled": False},
        }
    )


def run(args: list[str], cwd, env, timeout: int = 900) -> str:
    """Run a command; fail the test with its output if it fails."""
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def tiny_repo(dest: Path, overrides: dict) -> tuple[Path, dict[str, str]]:
    """A git repo at ``dest`` holding this project's files (no data, reports, findings or lock) and
    params.yaml merged with ``overrides``; returns it with the environment to run DVC in."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in listed:
        if rel.startswith(("reports/", "data/", "lab/findings/")) or rel == "dvc.lock" or not (REPO / rel).is_file():
            continue  # start from nothing, as a first `dvc repro` would
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    (dest / "params.yaml").write_text(yaml.safe_dump(_merge(params, overrides), sort_keys=False, allow_unicode=True))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["DVC_NO_ANALYTICS"] = "1"
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "ci@fsds"], ["git", "config", "user.name", "ci"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "tiny"]):
        run(cmd, dest, env)
    return dest, env
