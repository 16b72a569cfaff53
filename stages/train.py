"""Stage train: one model per category for one ablation variant (Algorithm 1)."""

import argparse

import pandas as pd

from fsds.config import load_config
from fsds.tracking import Tracker
from fsds.training import train_variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("split", help="split table (CSV)")
    parser.add_argument("out", help="folder for the checkpoints and loss histories")
    parser.add_argument("--variant", required=True, help="variant id from params.yaml `variants`")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    cfg = load_config(args.params)
    cfg.variant(args.variant)  # reject an unknown variant before loading anything
    table = pd.read_csv(args.split, keep_default_na=False)
    train_variant(cfg, args.variant, table, args.out, Tracker(cfg.mlflow))


if __name__ == "__main__":
    main()
