"""Several grids in one report (lab.compare), on hand-made archives."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest
import yaml

from fsds.errors import ConfigError
from fsds.evaluation import paper as published
from fsds.evaluation.metrics import METRIC_NAMES
from lab.compare import compare_report, paired_gains
from tests.conftest import REPO

TRANSISTOR = {"dataset": "mvtec", "data.root": "/nonexistent", "data.categories": ["transistor"],
              "split.unit": "category", "profile": "fast", "profiles.fast.lr": 1e-4}


def _metrics(iou: float) -> dict:
    values = {m: 0.5 for m in METRIC_NAMES} | {"iou": iou, "iou_pooled": iou / 2}
    return {"transistor": values, "mean": values}


def _grid(repo, name, methods, ious, seconds=100.0, cpu="Test CPU, 2 cores, AVX2", settings=TRANSISTOR):
    """A grid file and its archive, as `stages.grid run` leaves them: ``ious[method][seed]`` per cell (1-shot)."""
    seeds = sorted({s for per_seed in ious.values() for s in per_seed})
    grid = {"name": name, "shots": [1], "seeds": seeds, "set": {**settings, "methods": methods}, "archive": "cells"}
    (repo / f"{name}.yaml").write_text(yaml.safe_dump(grid))
    from fsds.pipeline.grid import load_grid

    loaded = load_grid(repo / f"{name}.yaml", REPO / "params.yaml")
    for cell, shot, seed in loaded.cells():
        folder = repo / "cells" / cell
        folder.mkdir(parents=True)
        ran = {m: _metrics(ious[m][seed]) for m in methods if seed in ious[m]}
        (folder / "metrics.json").write_text(json.dumps(ran))
        (folder / "cell.json").write_text(json.dumps({"experiment": cell, "commit": "c" * 40,
                                                      "params": loaded.overrides(shot, seed),
                                                      "train_seconds": {m: seconds for m in ran}, "cpu": cpu}))
    return repo / f"{name}.yaml"


@pytest.fixture
def repo(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)  # no experiment refs: only the archives
    return tmp_path


def test_paired_gains_are_per_seed_differences_over_the_seeds_both_ran():
    means = pd.DataFrame([
        {"method": "B", "shot": 1, "seed": 0, "iou": 0.10}, {"method": "B", "shot": 1, "seed": 1, "iou": 0.30},
        {"method": "B_NBR_CaP", "shot": 1, "seed": 0, "iou": 0.15}, {"method": "B_NBR_CaP", "shot": 1, "seed": 1, "iou": 0.40},
        {"method": "B_NBR_CaP", "shot": 1, "seed": 2, "iou": 0.90},  # no B at seed 2: not paired
    ])
    gains = paired_gains(means, pairs=[("B", "B_NBR_CaP"), ("B", "L0_B")], metrics=["iou"])
    assert len(gains) == 1
    row = gains.iloc[0]
    assert (row["reference"], row["method"], row["seeds"]) == ("B", "B_NBR_CaP", 2)
    assert row["iou"] == pytest.approx([0.05, 0.10])


def test_grids_of_one_setting_share_a_section_with_the_papers_numbers(repo):
    r34 = _grid(repo, "r34", ["B", "B_NBR_CaP"], {"B": {0: 0.1, 1: 0.2}, "B_NBR_CaP": {0: 0.2, 1: 0.4}}, seconds=300)
    lite = _grid(repo, "lite", ["L0_B", "L0_B_NBR_CaP"], {"L0_B": {0: 0.5, 1: 0.6}, "L0_B_NBR_CaP": {0: 0.5}})
    text = compare_report([r34, lite], repo / "report.md", repo, REPO / "params.yaml")
    assert text == (repo / "report.md").read_text()
    assert text.count("## MVTec AD transistor, K per category (the paper's Table I)") == 1
    assert "`r34` (2 of 2 cells: B, B_NBR_CaP); `lite` (2 of 2 cells: L0_B, L0_B_NBR_CaP)" in text
    table, paired = text.split("### Paired differences")
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in table.splitlines() if line.startswith("| ")}
    # mean (sample std) over seeds; one seed alone has no std; seconds per model
    assert rows["B"][1:4] == ["2", "0.1500 (0.0707)", "0.5000 (0.0000)"]
    assert rows["B+NBR+CaP (Lite0, ImageNet)"][1:3] == ["1", "0.5000"]
    assert rows["B"][-1].rstrip(" |") == "300 (0)"
    iou, std = published.PER_CATEGORY["iou"][1]["B_NBR_CaP"]["transistor"]
    assert rows["paper: B+NBR+CaP (ImageNet)"][2] == f"{iou:.4f} ({std:.4f})" == "0.2061 (0.0081)"
    # the paired gain of NBR+CaP over B per network, and of the pretrained network over random ResNet-34
    gains = {(r[0].lstrip("| "), r[1]): r for r in (line.split(" | ") for line in paired.splitlines()) if len(r) > 4 and r[2] == "1"}
    assert gains[("B+NBR+CaP (ours)", "B")][3:5] == ["2", "+0.1500 (0.0707)"]
    assert gains[("B (Lite0, ImageNet)", "B")][3:5] == ["2", "+0.4000 (0.0000)"]
    assert gains[("B+NBR+CaP (Lite0, ImageNet)", "B (Lite0, ImageNet)")][3:5] == ["1", "+0.0000"]
    assert "CPU of the cells: Test CPU, 2 cores, AVX2." in text


def test_a_grid_without_finished_cells_is_listed_and_settings_are_kept_apart(repo):
    done = _grid(repo, "done", ["B"], {"B": {0: 0.1}})
    other = {**TRANSISTOR, "split.unit": "defect_type"}
    (repo / "todo.yaml").write_text(yaml.safe_dump({"name": "todo", "shots": [1, 5], "seeds": [0],
                                                    "set": {**other, "methods": ["L0_B"]}, "archive": "cells"}))
    text = compare_report([done, repo / "todo.yaml"], repo / "report.md", repo, REPO / "params.yaml")
    sections = [line for line in text.splitlines() if line.startswith("## ")]
    assert sections == ["## MVTec AD transistor, K per category (the paper's Table I); profile `fast` (128 px, 300 "
                        "iterations, Adam 0.0001), precision auto",
                        "## MVTec AD transistor, K per defect type (the paper's text); profile `fast` (128 px, 300 "
                        "iterations, Adam 0.0001), precision auto"]
    assert "`todo` (0 of 2 cells: L0_B)" in text and "No finished cell yet." in text


def test_grids_that_set_other_params_cannot_share_a_table(repo):
    a = _grid(repo, "a", ["B"], {"B": {0: 0.1}})
    b = _grid(repo, "b", ["L0_B"], {"L0_B": {0: 0.2}}, settings={**TRANSISTOR, "train.augment": False})
    with pytest.raises(ConfigError, match="grids a and b share a setting .* but set different params besides methods"):
        compare_report([a, b], repo / "report.md", repo, REPO / "params.yaml")


def test_cells_from_before_a_metric_or_without_a_time_say_n_a(repo):
    """Archived cells of older code lack the newer metrics (and, off the DVC cache, training times)."""
    path = _grid(repo, "old", ["B"], {"B": {0: 0.1, 1: 0.3}})
    for seed in (0, 1):
        folder = repo / "cells" / f"old-k1-s{seed}"
        metrics = json.loads((folder / "metrics.json").read_text())
        for values in metrics["B"].values():
            del values["aupro"]
        (folder / "metrics.json").write_text(json.dumps(metrics))
        cell = json.loads((folder / "cell.json").read_text())
        cell["train_seconds"] = {"B": None}
        del cell["cpu"]
        (folder / "cell.json").write_text(json.dumps(cell))
    text = compare_report([path], repo / "report.md", repo, REPO / "params.yaml")
    header = next(line for line in text.splitlines() if line.startswith("| method |")).split(" | ")
    row = next(line for line in text.splitlines() if line.startswith("| B |")).split(" | ")
    aupro = header.index("AUPRO (30% FPR)")
    assert row[2] == "0.2000 (0.1414)" and row[aupro] == "n/a" and row[-1].rstrip(" |") == "n/a"
    assert "CPU of the cells: not recorded." in text


def test_a_method_two_grids_of_one_setting_ran_is_refused(repo):
    a = _grid(repo, "a", ["B"], {"B": {0: 0.1}})
    b = _grid(repo, "b", ["B"], {"B": {0: 0.2}})
    with pytest.raises(ConfigError, match="B is run by grids a and b of the same setting"):
        compare_report([a, b], repo / "report.md", repo, REPO / "params.yaml")
