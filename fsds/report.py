"""The ablation report: markdown tables and the data behind the DVC plots (no drawing here)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from fsds.config import Config, variant_label
from fsds.metrics import METRIC_NAMES

# The paper's Table V (MVTec AD, 512 px, 1350 iterations, mean over 15 categories): a
# reference point only, since our data, image size and iteration budget differ.
PAPER_TABLE_V = {
    1: {"B": (0.3190, 0.3936), "B_NBR": (0.4241, 0.5245), "B_NBR_CaP": (0.4919, 0.5944)},
    5: {"B": (0.5507, 0.6537), "B_NBR": (0.6039, 0.7101), "B_NBR_CaP": (0.6445, 0.7479)},
}
HEADERS = {"iou": "IoU", "dice": "Dice", "image_acc": "image ACC", "image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC"}
FPR_GRID = np.linspace(0.0, 1.0, 101)


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def ablation_markdown(
    metrics: Mapping[str, Mapping[str, Mapping[str, float]]],
    cfg: Config,
    counts: Mapping[str, Mapping[str, int]],
    train_seconds: Mapping[str, float] | None = None,
) -> str:
    """``reports/ablation.md``: variant x metric (like Table V), then one table per metric by category."""
    variants = list(metrics)
    categories = [c for c in next(iter(metrics.values())) if c != "mean"] if metrics else []
    tc = cfg.train
    parts = [
        "# Ablation: B, B+NBR, B+NBR+CaP",
        "",
        f"Dataset `{cfg.dataset}`, {cfg.shot}-shot (K per {cfg.split.unit}), seed {cfg.seed}; "
        f"{tc.image_size} px, {tc.iterations} iterations, batch {tc.resolved_batch_size(cfg.shot)}, "
        f"Adam lr {tc.lr:g}, CaP probability {tc.cap_probability:g}, flip/rotate augmentation {'on' if tc.augment else 'off'}, "
        f"precision {tc.precision}, arch `{cfg.model.arch}`, "
        f"encoder weights `{cfg.model.encoder_weights}`. Threshold {cfg.metrics.threshold:g}.",
        "",
        "IoU and Dice are per-image means over the defective test images; image ACC/AUROC treat an image as "
        "anomalous iff any pixel is predicted defective, scored by predicted area; all are means over categories.",
        "",
        "## Mean over categories",
        "",
        markdown_table(
            ["variant", "NBR", "CaP"] + [HEADERS[m] for m in METRIC_NAMES],
            [
                [variant_label(v), cfg.variant(v).nbr if v in cfg.variants else "?", cfg.variant(v).cap if v in cfg.variants else "?"]
                + [_fmt(metrics[v]["mean"][m]) for m in METRIC_NAMES]
                for v in variants
            ],
        ),
        "",
    ]
    paper = PAPER_TABLE_V.get(cfg.shot)
    if paper:
        parts += [
            f"For reference, the paper's Table V ({cfg.shot}-shot, MVTec AD, 512 px, 1350 iterations), IoU / Dice: "
            + "; ".join(f"{variant_label(v)} {iou:.4f} / {dice:.4f}" for v, (iou, dice) in paper.items())
            + ". Not comparable figure for figure: other data, image size and budget.",
            "",
        ]
    for name in METRIC_NAMES:
        parts += [
            f"## {HEADERS[name]} by category",
            "",
            markdown_table(
                ["category"] + [variant_label(v) for v in variants],
                [[c] + [_fmt(metrics[v][c][name]) for v in variants] for c in categories]
                + [["**mean**"] + [_fmt(metrics[v]["mean"][name]) for v in variants]],
            ),
            "",
        ]
    if train_seconds:
        parts += [
            "## Training wall time (all categories)",
            "",
            markdown_table(["variant", "seconds"], [[variant_label(v), f"{t:.0f}"] for v, t in train_seconds.items()]),
            "",
        ]
    if counts:
        parts += [
            "## Test images",
            "",
            markdown_table(["category", "defective", "normal"], [[c, str(n["defective"]), str(n["normal"])] for c, n in counts.items()]),
            "",
        ]
    return "\n".join(parts)


def loss_curves(histories: Mapping[str, Mapping[str, pd.DataFrame]], window: int = 10) -> pd.DataFrame:
    """Training loss per variant (mean over categories, moving average): columns iteration, <variant>..."""
    columns = {}
    for variant, per_category in histories.items():
        stacked = pd.concat([h.set_index("iteration")["loss"] for h in per_category.values()], axis=1)
        columns[variant] = stacked.mean(axis=1).rolling(window, min_periods=1).mean()
    frame = pd.DataFrame(columns)
    frame.index.name = "iteration"
    return frame.reset_index().round(5)


def roc_curves(per_image: pd.DataFrame) -> pd.DataFrame:
    """Image-level ROC per variant, averaged over categories on a fixed FPR grid (as the paper's Fig. 7)."""
    columns = {"fpr": FPR_GRID}
    for variant, part in per_image.groupby("variant", sort=False):
        tprs = []
        for _, cat in part.groupby("category"):
            if cat["label"].nunique() < 2:
                continue
            fpr, tpr, _ = roc_curve(cat["label"], cat["score"])
            tprs.append(np.interp(FPR_GRID, fpr, tpr))
        if tprs:
            columns[variant] = np.mean(tprs, axis=0)
    return pd.DataFrame(columns).round(5)


def count_test_images(per_image: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Defective and normal test images per category (from one variant: all share the test set)."""
    first = per_image[per_image["variant"] == per_image["variant"].iloc[0]]
    return {
        category: {"defective": int(part["label"].sum()), "normal": int((part["label"] == 0).sum())}
        for category, part in first.groupby("category")
    }


def training_seconds(models_dir: str | Path, variants: Iterable[str]) -> dict[str, float]:
    """Training wall time of each variant, summed over categories (from the train stage's timing.json)."""
    out = {}
    for variant in variants:
        timing = Path(models_dir) / variant / "timing.json"
        if timing.is_file():
            out[variant] = float(sum(json.loads(timing.read_text()).values()))
    return out


def load_histories(models_dir: str | Path, variants: Iterable[str]) -> dict[str, dict[str, pd.DataFrame]]:
    """``{variant: {category: loss history}}`` from the train stage's ``<category>_history.csv`` files."""
    return {
        v: {p.name.removesuffix("_history.csv"): pd.read_csv(p) for p in sorted((Path(models_dir) / v).glob("*_history.csv"))}
        for v in variants
    }
