"""Stage split: K-shot sampling of the annotated defect images (K = `shot`)."""

import argparse

from fsds.config import load_config
from fsds.datasets import index_dataset
from fsds.io import atomic_path
from fsds.split import k_shot_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset", help="dataset folder in MVTec AD layout")
    parser.add_argument("out", help="split table (CSV) to write")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    cfg = load_config(args.params)
    index = index_dataset(args.dataset, cfg.data.categories)
    table = k_shot_split(index, cfg.shot, cfg.seed, cfg.split.unit)
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False)
    print(table.groupby(["category", "split"]).size().unstack(fill_value=0).to_string())


if __name__ == "__main__":
    main()
