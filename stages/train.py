"""Stage train: one model per category for one ablation variant (Algorithm 1)."""

import argparse
import os

import pandas as pd

from fsds.errors import run_stage
from fsds.pipeline import plan
from fsds.pipeline.tracking import Tracker
from fsds.pipeline.train import train_variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("split", help="split table (CSV)")
    parser.add_argument("out", help="folder for the checkpoints and loss histories")
    parser.add_argument("--variant", required=True, help="variant id from params.yaml `variants`")
    parser.add_argument("--resume-dir", help="folder for mid-training snapshots (FSDS_RESUME_DIR overrides)")
    parser.add_argument("--memory", help="the memory stage's folder (variants that use the memory of normal patches)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    cfg = plan.load(args.params, [args.variant])
    table = pd.read_csv(args.split, keep_default_na=False)
    resume_dir = os.environ.get("FSDS_RESUME_DIR") or args.resume_dir
    train_variant(cfg, args.variant, table, args.out, Tracker(cfg.mlflow), resume_dir=resume_dir,
                  memory_dir=args.memory)


if __name__ == "__main__":
    run_stage(main)
