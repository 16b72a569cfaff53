"""Stage metrics: IoU, Dice, image ACC/AUROC and pixel AUROC of every variant."""

import argparse

import pandas as pd

from fsds.config import load_config
from fsds.errors import run_stage
from fsds.io import atomic_path, write_json
from fsds.pipeline.evaluate import evaluate_variants
from fsds.pipeline.tracking import Tracker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("split", help="split table (CSV)")
    parser.add_argument("predictions", help="folder holding one sub-folder of predictions per variant")
    parser.add_argument("models", help="folder holding one sub-folder of checkpoints per variant")
    parser.add_argument("metrics", help="metrics JSON to write")
    parser.add_argument("per_image", help="per-image table (CSV) to write")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    cfg = load_config(args.params)
    table = pd.read_csv(args.split, keep_default_na=False)
    metrics, per_image = evaluate_variants(cfg, table, args.predictions, args.models, Tracker(cfg.mlflow))
    with atomic_path(args.per_image) as tmp:
        per_image.to_csv(tmp, index=False)
    write_json(args.metrics, metrics)
    for variant, figures in metrics.items():
        print(variant, {k: round(v, 4) for k, v in figures["mean"].items()})


if __name__ == "__main__":
    run_stage(main)
