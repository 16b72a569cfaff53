"""Stage memory: each category's memory of normal patches, from its normal training images."""

import argparse

import pandas as pd

from fsds.config import load_config
from fsds.errors import run_stage
from fsds.pipeline.memory import build_memories


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("split", help="split table (CSV)")
    parser.add_argument("out", help="folder for each category's memory")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    cfg = load_config(args.params)
    table = pd.read_csv(args.split, keep_default_na=False)
    build_memories(cfg, table, args.out)


if __name__ == "__main__":
    run_stage(main)
