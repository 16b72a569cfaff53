"""How long would a profile take here? Time a few training iterations of each method.

    python -m lab.timing --profile paper --shots 1 5 --iterations 4

For every method of ``params.yaml`` (or ``--methods``), trains ``--iterations`` steps of
Algorithm 1 at the profile's image size and the paper's batch size on random images (timing
does not depend on the pixels), drops the first step (warm-up), and extrapolates the median
step to the profile's iteration count. Prints a markdown table; nothing is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from fsds.config import load_config
from fsds.engine.training import TrainData, train_segmenter
from fsds.method.weights import encoder_weights


def random_data(size: int, n_defect: int = 5, n_normal: int = 20, seed: int = 0) -> TrainData:
    gen = torch.Generator().manual_seed(seed)
    masks = torch.zeros((n_defect, 1, size, size), dtype=torch.uint8)
    masks[:, :, size // 4 : size // 2, size // 3 : size // 2] = 1
    return TrainData(
        defect_images=torch.randint(0, 256, (n_defect, 3, size, size), dtype=torch.uint8, generator=gen),
        defect_masks=masks,
        defect_names=[f"d{i}" for i in range(n_defect)],
        normal_images=torch.randint(0, 256, (n_normal, 3, size, size), dtype=torch.uint8, generator=gen),
    )


def step_seconds(cfg, method: str, shot: int, iterations: int) -> float:
    """Median wall time of one training iteration (after the first) of ``method``."""
    cfg = dataclasses.replace(cfg, shot=shot, train=dataclasses.replace(cfg.train, iterations=iterations, eval_every=0))
    stamps: list[float] = []
    model_cfg = cfg.model_for(method)
    encoder_state, _ = encoder_weights(model_cfg)  # as the train stage: a pretrained encoder trains fewer stages
    train_segmenter(cfg, cfg.variant(method), random_data(cfg.train.image_size), seed=0,
                    on_log=lambda it, row: stamps.append(time.perf_counter()), model_cfg=model_cfg,
                    progress_desc=f"{method} {shot}-shot", encoder_state=encoder_state)
    return float(np.median(np.diff(stamps)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default=None, help="profile to time (default: params.yaml's)")
    parser.add_argument("--methods", nargs="*", default=None, help="default: every variant of params.yaml")
    parser.add_argument("--shots", nargs="*", type=int, default=[1, 5])
    parser.add_argument("--iterations", type=int, default=4, help="timed iterations per method (>= 3)")
    parser.add_argument("--precision", default=None, help="override train.precision (fp32 | bf16)")
    args = parser.parse_args()

    overrides = {}
    if args.profile:
        overrides["profile"] = args.profile
    cfg = load_config(args.params, overrides)
    if args.precision:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=args.precision))
    methods = args.methods or list(cfg.variants)
    total = cfg.train.iterations
    print(f"profile {cfg.profile}: {cfg.train.image_size} px, {total} iterations, precision {cfg.train.precision}, "
          f"{torch.get_num_threads()} threads")
    header = ["method"] + [f"{k}-shot s/it" for k in args.shots] + [f"{k}-shot minutes" for k in args.shots]
    rows = []
    for method in methods:
        seconds = [step_seconds(cfg, method, k, max(args.iterations, 3)) for k in args.shots]
        rows.append([cfg.label(method)] + [f"{s:.2f}" for s in seconds] + [f"{s * total / 60:.0f}" for s in seconds])
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
