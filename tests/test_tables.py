"""Paper-format tables: mean (std) over seeds, the paper's column beside ours on MVTec AD."""

import math

import numpy as np
import pandas as pd

from fsds.evaluation import paper
from fsds.evaluation.tables import (
    ablation_table,
    category_means,
    detection_table,
    mean_std,
    paper_tables,
    per_category_table,
)

LABEL = {"B": "B", "B_NBR": "B+NBR", "B_NBR_CaP": "ours", "UNet": "U-Net", "AlbuNet": "B (AlbuNet)"}.get


def _frame(methods, shots=(1,), seeds=(0, 1, 2), categories=("bottle", "cable")):
    rng = np.random.default_rng(0)
    rows = [
        {"method": m, "shot": k, "seed": s, "category": c, "iou": rng.random(), "dice": rng.random(),
         "image_acc": rng.random(), "image_auroc": rng.random(), "pixel_auroc": rng.random()}
        for m in methods for k in shots for s in seeds for c in categories
    ]
    return pd.DataFrame(rows)


def test_mean_std_is_the_sample_std_and_skips_nan():
    assert mean_std([0.1, 0.2, 0.3]) == "0.2000 (0.1000)"
    assert mean_std([0.5, math.nan]) == "0.5000"
    assert mean_std([]) == "n/a"


def test_means_are_over_categories_per_seed_then_over_seeds():
    frame = _frame(["UNet", "B_NBR_CaP"])
    table = per_category_table(frame, "iou", 1, LABEL)
    per_seed = frame[frame["method"] == "UNet"].groupby("seed")["iou"].mean()
    assert f"| **Mean** | {per_seed.mean():.4f} ({per_seed.std(ddof=1):.4f}) |" in table
    bottle = frame[(frame["method"] == "UNet") & (frame["category"] == "bottle")]["iou"]
    assert f"| bottle | {bottle.mean():.4f} ({bottle.std(ddof=1):.4f}) |" in table
    assert table.splitlines()[0] == "| category | U-Net | ours |"  # the paper's column order


def test_the_papers_numbers_stand_beside_ours_on_mvtec():
    frame = _frame(["UNet", "B_NBR_CaP"], shots=(1, 5))
    table = per_category_table(frame, "dice", 5, LABEL, paper=True)
    assert table.splitlines()[0] == "| category | U-Net | U-Net (paper) | ours | ours (paper) |"
    unet, std = paper.PER_CATEGORY["dice"][5]["UNet"]["bottle"]
    assert f"| {unet:.4f} ({std:.4f}) |" in table.splitlines()[2]
    assert f"| {paper.PRINTED_MEANS['dice'][5]['B_NBR_CaP']:.4f} |" in table.splitlines()[-1]
    detection = detection_table(frame, LABEL, paper=True)
    assert f"{paper.DETECTION[1]['UNet']['acc']:.4f}" in detection and "5-shot AUC (paper)" in detection
    ablation = ablation_table(_frame(["B", "B_NBR", "B_NBR_CaP"], shots=(1, 5)), "V", LABEL, paper=True)
    assert [line.split(" | ")[0] for line in ablation.splitlines()[2:]] == ["| B", "| B+NBR", "| ours"]
    assert f"{paper.ABLATIONS['V']['B_NBR'][5]['dice']:.4f}" in ablation


def test_only_the_tables_the_methods_fill_are_written():
    text = paper_tables(_frame(["B", "B_NBR_CaP"]), LABEL)
    assert "## Table V" in text and "Table II" not in text and "Table VI" not in text
    text = paper_tables(_frame(["AlbuNet", "B_NBR_CaP"]), LABEL, parameters={"AlbuNet": 24436369})
    assert "## Table II: mean IoU, 1-shot" in text and "## Table IV" in text and "| B (AlbuNet) | 24,436,369 |" in text


def test_category_means_skip_a_category_without_defects():
    frame = _frame(["B"], seeds=(0,))
    frame.loc[frame["category"] == "cable", "iou"] = math.nan
    assert category_means(frame)["iou"].iloc[0] == frame.loc[frame["category"] == "bottle", "iou"].iloc[0]
