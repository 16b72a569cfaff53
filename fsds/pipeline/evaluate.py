"""The metrics stage's work: score each variant's stored predictions against the masks."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from fsds.config import Config
from fsds.data.split import category_split
from fsds.errors import InputError
from fsds.evaluation.metrics import evaluate_category, mean_over_categories
from fsds.evaluation.threshold import THRESHOLDS_FILE
from fsds.io import load_probabilities
from fsds.pipeline.tracking import Tracker

Metrics = dict[str, dict[str, dict[str, float]]]


def evaluate_variants(
    cfg: Config, table: pd.DataFrame, predictions_dir: str | Path, models_dir: str | Path, tracker: Tracker
) -> tuple[Metrics, pd.DataFrame]:
    """``{variant: {"mean": {...}, category: {...}}}`` and a per-image table of every variant.

    Each category's figures are also logged (as ``test_*``) to the MLflow run that trained it. The
    ``*_cal`` figures use each model's calibrated threshold, from the predict stage's ``thresholds.json``.
    """
    predictions_dir, models_dir = Path(predictions_dir), Path(models_dir)
    categories = sorted(table["category"].unique())
    metrics: Metrics = {}
    per_image = []
    for variant in cfg.methods:
        runs_file = models_dir / variant / "runs.json"
        runs = json.loads(runs_file.read_text()) if runs_file.is_file() else {}
        per_category = {}
        thresholds_file = predictions_dir / variant / THRESHOLDS_FILE
        thresholds = json.loads(thresholds_file.read_text()) if thresholds_file.is_file() else {}
        for category in categories:
            test = category_split(table, category)["test"]
            probs, images = load_probabilities(predictions_dir / variant / f"{category}.npz")
            if images != test["image"].tolist():
                raise InputError(
                    f"predictions of {variant}/{category} do not match the split's test images; re-run the predict stage"
                )
            calibrated = thresholds.get(category) or {}
            summary, rows = evaluate_category(probs, test, cfg.metrics.threshold, calibrated.get("threshold"),
                                              calibrated.get("min_area", 0.0))
            per_category[category] = summary
            rows.insert(0, "variant", variant)
            per_image.append(rows)
            if runs.get(category):
                tracker.log_test_metrics(runs[category], summary)
        metrics[variant] = {"mean": mean_over_categories(per_category), **per_category}
    return metrics, pd.concat(per_image, ignore_index=True)
