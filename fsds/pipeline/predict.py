"""Stage predict's work: every test image of every category through that category's model, and each
model's calibrated threshold (``thresholds.json``, null where the split held no normals out)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fsds.config import Config
from fsds.data.split import category_split
from fsds.data.images import InputGeometry
from fsds.engine.checkpoint import load_checkpoint
from fsds.engine.prediction import inference_model, predict_category
from fsds.evaluation.threshold import THRESHOLDS_FILE
from fsds.io import atomic_dir, save_probabilities, write_json
from fsds.pipeline import plan


def typical_side(geometry: InputGeometry, images: pd.DataFrame) -> int:
    """The side of a square with the median pixel count of ``images`` as the network sees them
    (what ``predict.batch_size: auto`` sizes batches by)."""
    if not geometry.crops or images.empty:
        return geometry.size
    areas = [h * w for h, w in (geometry.shape(h, w) for h, w in zip(images["height"], images["width"]))]
    return max(32, round(float(np.median(areas)) ** 0.5))


def predict_variant(cfg: Config, table: pd.DataFrame, models_dir: str | Path, out_dir: str | Path) -> None:
    """Predict every test image with each category's model; writes ``<category>.npz`` and ``scores.csv``."""
    models_dir = Path(models_dir)
    runtime, tiling = plan.predict_runtime(cfg), plan.tiling(cfg)
    tables = []
    thresholds: dict[str, dict[str, float] | None] = {}
    with atomic_dir(out_dir) as tmp:
        for category in sorted(table["category"].unique()):
            checkpoint = load_checkpoint(models_dir / f"{category}.pt", runtime.device)
            model = inference_model(checkpoint.model, runtime.channels_last)
            geometry = checkpoint.geometry
            test = category_split(table, category)["test"]
            probs, scores = predict_category(
                model, test, geometry, cfg.metrics.threshold, runtime,
                batch_size=plan.predict_batch_size(cfg, typical_side(geometry, test)), tiling=tiling,
                desc=f"{models_dir.name}/{category}",
            )
            save_probabilities(tmp / f"{category}.npz", probs, test["image"].tolist())
            tables.append(scores)
            calibration = checkpoint.state.get("calibration")
            thresholds[category] = ({"threshold": checkpoint.threshold, "min_area": checkpoint.min_area}
                                    if calibration else None)
        pd.concat(tables, ignore_index=True).to_csv(tmp / "scores.csv", index=False)
        write_json(tmp / THRESHOLDS_FILE, thresholds)
