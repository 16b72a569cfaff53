"""Stage split: K-shot sampling of the annotated defect images (K = `shot`)."""

import argparse

from fsds.config import load_config
from fsds.data.datasets import dataset_roots, empty_mask_warning, index_dataset
from fsds.data.split import k_shot_split
from fsds.errors import run_stage
from fsds.io import atomic_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset", help="the download stage's output folder")
    parser.add_argument("out", help="split table (CSV) to write")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    cfg = load_config(args.params)
    index = index_dataset(dataset_roots(args.dataset), cfg.data.categories)
    warning = empty_mask_warning(index)
    if warning:
        print(warning)
    table = k_shot_split(index, cfg.shot, cfg.seed, cfg.split.unit, cfg.split.calibration_normals)
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False)
    print(table.groupby(["category", "split"]).size().unstack(fill_value=0).to_string())


if __name__ == "__main__":
    run_stage(main)
