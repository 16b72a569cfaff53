"""Stage predict: probability maps and per-image scores for every test image."""

import argparse

import pandas as pd

from fsds.config import load_config
from fsds.errors import run_stage
from fsds.pipeline.predict import predict_variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("split", help="split table (CSV)")
    parser.add_argument("models", help="folder of one variant's checkpoints")
    parser.add_argument("out", help="folder for the probability maps and scores")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    cfg = load_config(args.params)
    table = pd.read_csv(args.split, keep_default_na=False)
    predict_variant(cfg, table, args.models, args.out)


if __name__ == "__main__":
    run_stage(main)
