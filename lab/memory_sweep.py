"""Which memory settings? The memory of normal patches alone (no defect shot) on one category.

    python -m lab.memory_sweep ../shared/datasets/mvtec_transistor_512 transistor --seeds 0 1 2 \\
        --size 256 --strides 4,8 8,16 --grid 8 --bank 5000 20000 --sampler coreset random \\
        --out lab/findings/normal_memory/settings.jsonl

Each seed draws the category's calibration normals as the split stage does (``split.calibration_normals``
of params.yaml); the bank comes from the other normal training images, the threshold from those held
out; every test image is scored. One JSON line per (setting, seed): the metrics of
:func:`fsds.evaluation.metrics.evaluate_category` (at the calibrated threshold, which the memory's map
puts at 0.5) and the seconds the build and the prediction took. ``--summarize`` prints mean (std).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fsds.config import load_config
from fsds.data.datasets import index_dataset
from fsds.data.images import load_images, working_geometry
from fsds.data.split import category_split, k_shot_split
from fsds.engine.device import set_up_runtime
from fsds.engine.memory_bank import build_memory, memory_distances
from fsds.evaluation.metrics import evaluate_category
from fsds.method.memory import MemorySpec, calibrated_distance

COLUMNS = ["pixel_auroc", "aupro", "iou", "iou_pooled", "dice", "image_auroc_max", "seconds_build", "ms_per_image"]


def probabilities(distances: list[torch.Tensor], threshold: float) -> list[np.ndarray]:
    """uint8 maps of ``d / (d + threshold)``: the sigmoid of the memory's logit."""
    return [(d / (d + threshold) * 255).round().to(torch.uint8).numpy() for d in distances]


def run(root: str, category: str, spec: MemorySpec, size: int, working_size: int, seed: int,
        calibration_normals: int, max_fpr: float, runtime, ks=(1,), sigmas=(4.0,)) -> list[dict]:
    """One bank; scored with each ``k`` and ``sigma`` (the bank does not depend on them; the threshold
    is calibrated again for each)."""
    index = index_dataset(root, [category])
    table = k_shot_split(index, 1, seed, "defect_type", calibration_normals)
    parts = category_split(table, category)
    geometry = working_geometry(size, working_size, list(zip(index["height"], index["width"])))
    normals = load_images(parts["train_normal"]["image"].tolist(), geometry)
    held = load_images(parts["calibration"]["image"].tolist(), geometry)
    built = build_memory(spec, normals, held, seed, max_fpr, runtime)
    test = pd.concat([parts["test"], parts["train_defect"]], ignore_index=True)  # zero shots: every defect image is a test image
    images = load_images(test["image"].tolist(), geometry)
    results = []
    for k, sigma in itertools.product(ks, sigmas):
        memory = built.memory
        memory.k, memory.sigma = k, sigma
        threshold = calibrated_distance(memory_distances(memory, held, runtime), max_fpr)
        started = time.perf_counter()
        distances = memory_distances(memory, images, runtime)
        seconds = time.perf_counter() - started
        summary, _ = evaluate_category(probabilities(distances, threshold), test, 0.5, None)
        results.append({**summary, "set_k": k, "set_sigma": sigma, "seconds_build": built.info["seconds"],
                        "ms_per_image": 1000 * seconds / len(images),
                        **{f"info_{key}": v for key, v in built.info.items()}, "info_threshold": threshold})
    return results


def summarize(path: Path) -> pd.DataFrame:
    lines = pd.read_json(path, lines=True)
    if "set_coreset_dims" in lines:  # lines from before the option: the projection was 128-dimensional
        lines["set_coreset_dims"] = lines["set_coreset_dims"].fillna(128).astype(int)
    if "set_candidates" in lines:  # lines from before the option: the coreset looked at every vector
        lines["set_candidates"] = lines["set_candidates"].fillna(0).astype(int)
    keys = [c for c in lines.columns if c.startswith("set_")]
    grouped = lines.groupby(keys, dropna=False)
    out = grouped[COLUMNS].agg(lambda v: f"{v.mean():.4f} ({v.std(ddof=1):.4f})" if len(v) > 1 else f"{v.mean():.4f}")
    out["seeds"] = grouped.size()
    return out.reset_index()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.memory_sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?")
    parser.add_argument("category", nargs="?")
    parser.add_argument("--summarize", type=Path, metavar="JSONL")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--size", nargs="+", type=int, default=[256], help="image size (squashed) or crop size")
    parser.add_argument("--working-size", type=int, default=0, help="0: squash; else keep the aspect ratio")
    parser.add_argument("--strides", nargs="+", default=["4,8"], help="comma-separated encoder strides")
    parser.add_argument("--grid", nargs="+", type=int, default=[8])
    parser.add_argument("--pool", nargs="+", type=int, default=[3])
    parser.add_argument("--bank", nargs="+", type=int, default=[10000])
    parser.add_argument("--sampler", nargs="+", default=["coreset"])
    parser.add_argument("--coreset-dims", nargs="+", type=int, default=[128])
    parser.add_argument("--candidates", nargs="+", type=int, default=[0], help="coreset candidates (0: all)")
    parser.add_argument("--k", nargs="+", type=int, default=[1])
    parser.add_argument("--sigma", nargs="+", type=float, default=[4.0])
    parser.add_argument("--arch", default="lite0_unet")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", type=Path, default=Path("memory_sweep.jsonl"))
    args = parser.parse_args(argv)
    if args.summarize:
        with pd.option_context("display.width", 250, "display.max_columns", 30):
            print(summarize(args.summarize).to_string(index=False))
        return
    cfg = load_config(args.params)
    runtime = set_up_runtime(cfg.train.device, cfg.train.precision, cfg.train.channels_last, training=False)
    grid = itertools.product(args.size, args.strides, args.grid, args.pool, args.bank, args.sampler,
                             args.coreset_dims, args.candidates, args.seeds)
    for size, strides, grid_stride, pool, bank, sampler, dims, candidates, seed in grid:
        spec = MemorySpec(args.arch, tuple(int(s) for s in strides.split(",")), grid_stride, pool, bank, sampler,
                          args.k[0], args.sigma[0], dims, candidates)
        for result in run(args.root, args.category, spec, size, args.working_size, seed, cfg.split.calibration_normals,
                          cfg.metrics.calibration_fpr, runtime, args.k, args.sigma):
            line = {"category": args.category, "seed": seed, "set_size": size, "set_working_size": args.working_size,
                    "set_strides": strides, "set_grid": grid_stride, "set_pool": pool, "set_bank": bank,
                    "set_sampler": sampler, "set_coreset_dims": dims, "set_candidates": candidates, "precision": runtime.precision, **result}
            print(json.dumps({k: line[k] for k in ["seed", *[c for c in line if c.startswith("set_")], *COLUMNS]}))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with args.out.open("a") as f:
                f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
