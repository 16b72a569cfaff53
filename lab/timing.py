"""How long would a profile take here? Time a few training iterations of each method.

    python -m lab.timing --profile paper --shots 1 5 --iterations 4

For every variant (params.yaml's and lab/variants.yaml's, or ``--methods``), trains ``--iterations``
steps of Algorithm 1 as the train stage would (:func:`fsds.pipeline.plan.recipe` on
:func:`fsds.pipeline.plan.train_runtime`, with the variant's encoder weights) at the profile's image
size and the paper's batch size on random images (timing does not depend on the pixels), drops the
first step (warm-up), and extrapolates the median step to the profile's iteration count. Prints a
markdown table; nothing is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from fsds.config import Config, parse_config
from fsds.engine.batches import TrainData
from fsds.engine.training import train_segmenter
from fsds.method.weights import encoder_weights
from fsds.pipeline import plan
from fsds.pipeline.grid import apply_overrides
from lab.variants import lab_params


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


def step_seconds(cfg: Config, method: str, shot: int, iterations: int) -> float:
    """Median wall time of one training iteration (after the first) of ``method``."""
    cfg = dataclasses.replace(cfg, shot=shot)  # the batch size follows the shots
    net = plan.model_of(cfg, method)
    encoder_state, _ = encoder_weights(net.arch, net.encoder_weights)  # a pretrained encoder trains fewer stages
    recipe = dataclasses.replace(plan.recipe(cfg, method, pretrained=encoder_state is not None), iterations=iterations)
    stamps: list[float] = []
    train_segmenter(recipe, plan.train_runtime(cfg), random_data(cfg.train.image_size), seed=0,
                    encoder_state=encoder_state, on_log=lambda it, row: stamps.append(time.perf_counter()),
                    progress_desc=f"{method} {shot}-shot")
    return float(np.median(np.diff(stamps)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.timing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default=None, help="profile to time (default: params.yaml's)")
    parser.add_argument("--methods", nargs="*", default=None,
                        help="default: every variant of params.yaml and lab/variants.yaml")
    parser.add_argument("--shots", nargs="*", type=int, default=[1, 5])
    parser.add_argument("--iterations", type=int, default=4, help="timed iterations per method (>= 3)")
    parser.add_argument("--precision", default=None, help="override train.precision (fp32 | bf16)")
    args = parser.parse_args(argv)

    overrides = {"profile": args.profile} if args.profile else {}
    if args.precision:
        overrides["train.precision"] = args.precision
    cfg = parse_config(apply_overrides(lab_params(args.params), overrides))
    methods = args.methods or list(cfg.variants)
    plan.check(cfg, methods)
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
