"""Stage report: the ablation tables (markdown) and the data of the loss and ROC plots."""

import argparse
import json
from pathlib import Path

import pandas as pd

from fsds.config import load_config
from fsds.io import atomic_path, write_text
from fsds.report import (
    ablation_markdown,
    count_test_images,
    load_histories,
    loss_curves,
    roc_curves,
    training_seconds,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("metrics", help="metrics JSON")
    parser.add_argument("per_image", help="per-image table (CSV)")
    parser.add_argument("models", help="folder holding one sub-folder of checkpoints per variant")
    parser.add_argument("report", help="markdown report to write")
    parser.add_argument("plots", help="folder for the plot data (CSV)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    cfg = load_config(args.params)
    metrics = json.loads(Path(args.metrics).read_text())
    per_image = pd.read_csv(args.per_image)
    histories = load_histories(args.models, cfg.variants)
    seconds = training_seconds(args.models, cfg.variants)
    write_text(args.report, ablation_markdown(metrics, cfg, count_test_images(per_image), seconds))
    for name, frame in (("train_loss.csv", loss_curves(histories)), ("roc.csv", roc_curves(per_image))):
        with atomic_path(Path(args.plots) / name) as tmp:
            frame.to_csv(tmp, index=False)


if __name__ == "__main__":
    main()
