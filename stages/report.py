"""Stage report: the paper-format tables (markdown), the plot data (CSV) and the figures (PNG)."""

import argparse
import json
from pathlib import Path

import pandas as pd

from fsds.errors import run_stage
from fsds.pipeline import plan
from fsds.pipeline.report import write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("split", help="split table (CSV)")
    parser.add_argument("metrics", help="metrics JSON")
    parser.add_argument("per_image", help="per-image table (CSV)")
    parser.add_argument("predictions", help="folder holding one sub-folder of probability maps per method")
    parser.add_argument("models", help="folder holding one sub-folder of checkpoints per method")
    parser.add_argument("report", help="markdown report to write")
    parser.add_argument("plots", help="folder for the plot data (CSV)")
    parser.add_argument("figures", help="folder for the figures (PNG)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    cfg = plan.load(args.params)
    table = pd.read_csv(args.split, keep_default_na=False)
    metrics = json.loads(Path(args.metrics).read_text())
    per_image = pd.read_csv(args.per_image)
    write_report(cfg, table, metrics, per_image, args.predictions, args.models, args.report, args.plots, args.figures)


if __name__ == "__main__":
    run_stage(main)
