"""End to end: `dvc repro` of the real dvc.yaml on a tiny override, in a temporary copy of the repo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

from tests.conftest import REPO

TINY = {
    "data": {"synthetic": {"n_train_good": 6, "n_test_good": 3, "n_per_defect": 3, "size": 64}},
    "train": {"image_size": 64, "iterations": 4, "log_every": 2},
}


def _run(args: list[str], cwd, env) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory):
    dest = tmp_path_factory.mktemp("repo")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in listed:
        if rel.startswith(("reports/", "data/")) or rel == "dvc.lock" or not (REPO / rel).is_file():
            continue  # start from nothing, as a first `dvc repro` would
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    (dest / "params.yaml").write_text(yaml.safe_dump(_merge(params, TINY), sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["DVC_NO_ANALYTICS"] = "1"
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "ci@fsds"], ["git", "config", "user.name", "ci"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "tiny"]):
        _run(cmd, dest, env)
    _run(["dvc", "repro"], dest, env)
    return dest, env


def test_repro_writes_metrics_for_every_variant(repo_copy):
    dest, _ = repo_copy
    metrics = json.loads((dest / "reports" / "metrics.json").read_text())
    assert list(metrics) == ["B", "B_NBR", "B_NBR_CaP"]
    for figures in metrics.values():
        assert set(figures) == {"mean", "fabric", "washer"}
        for values in figures.values():
            assert set(values) == {"iou", "dice", "image_acc", "image_auroc", "pixel_auroc"}
            assert all(0.0 <= v <= 1.0 for v in values.values())
    report = (dest / "reports" / "ablation.md").read_text()
    assert "| B+NBR+CaP | cosine | weighted |" in report
    loss = pd.read_csv(dest / "reports" / "plots" / "train_loss.csv")
    assert list(loss.columns) == ["iteration", "B", "B_NBR", "B_NBR_CaP"] and len(loss) == 4
    roc = pd.read_csv(dest / "reports" / "plots" / "roc.csv")
    assert roc["fpr"].iloc[0] == 0.0 and roc["fpr"].iloc[-1] == 1.0


def test_repro_outputs_are_complete_and_rebuildable(repo_copy):
    dest, env = repo_copy
    assert "Data and pipelines are up to date" in _run(["dvc", "status"], dest, env)
    state = torch.load(dest / "data" / "models" / "B_NBR_CaP" / "washer.pt", weights_only=False)
    assert {"model", "optimizer", "model_args", "config", "iteration"} <= set(state)
    assert state["iteration"] == 4
    split = pd.read_csv(dest / "data" / "split.csv", keep_default_na=False)
    assert (split[split["split"] == "train_defect"].groupby(["category", "defect_type"]).size() == 1).all()
    assert not list(dest.rglob("*.tmp"))  # nothing half-written left behind


def test_mlflow_holds_one_run_per_variant_and_category(repo_copy):
    from mlflow.tracking import MlflowClient

    dest, _ = repo_copy
    client = MlflowClient(tracking_uri=f"sqlite:///{dest / 'mlflow.db'}")
    exp = client.get_experiment_by_name("fsds")
    runs = client.search_runs([exp.experiment_id])
    assert sorted((r.data.tags["variant"], r.data.tags["category"]) for r in runs) == [
        (v, c) for v in ("B", "B_NBR", "B_NBR_CaP") for c in ("fabric", "washer")
    ]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert {"shot", "seed", "git_commit"} <= set(run.data.tags)
        assert run.data.params["train.iterations"] == "4"
        assert {"loss", "seg", "nbr", "test_iou", "test_dice"} <= set(run.data.metrics)
        assert len(client.get_metric_history(run.info.run_id, "loss")) == 4
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == [f"{run.data.tags['category']}.pt"]


def test_mvtec_from_data_root_runs_the_whole_pipeline(repo_copy):
    """`dataset: mvtec` with `data.root` on an extraction already on disk (here: the tiny synthetic set)."""
    dest, env = repo_copy
    root = dest / "data" / "raw"
    if (root / "SOURCE.json").exists():  # an earlier experiment may have replaced it
        pytest.skip("data/raw is not the synthetic dataset")
    external = dest.parent / f"{dest.name}_mvtec"
    shutil.copytree(root, external, dirs_exist_ok=True)
    _run(["dvc", "exp", "run", "-S", "dataset=mvtec", "-S", f"data.root={external}", "-S", "data.categories=[washer]"], dest, env)
    assert json.loads((dest / "data" / "raw" / "SOURCE.json").read_text())["roots"] == [str(external.resolve())]
    metrics = json.loads((dest / "reports" / "metrics.json").read_text())
    assert set(metrics["B_NBR_CaP"]) == {"mean", "washer"}


def test_experiment_with_another_shot_and_metrics_diff(repo_copy):
    dest, env = repo_copy
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "baseline"]):
        _run(cmd, dest, env)
    _run(["dvc", "exp", "run", "-S", "shot=2"], dest, env)
    split = pd.read_csv(dest / "data" / "split.csv", keep_default_na=False)
    assert (split[split["split"] == "train_defect"].groupby(["category", "defect_type"]).size() == 2).all()
    diff = json.loads(_run(["dvc", "metrics", "diff", "--json"], dest, env))
    assert "reports/metrics.json" in diff
