"""Stage download: materialise the dataset named by `dataset` (MVTec AD layout)."""

import argparse

from fsds.config import load_config
from fsds.data.sources import prepare_dataset
from fsds.errors import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", help="dataset folder to write (or a SOURCE.json pointing at data kept elsewhere)")
    parser.add_argument("--downloads", default="data/downloads", help="cache of downloaded and extracted archives")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    cfg = load_config(args.params)
    path = prepare_dataset(cfg, args.out, args.downloads)
    print(f"dataset {cfg.dataset!r} ready in {path}")


if __name__ == "__main__":
    run_stage(main)
