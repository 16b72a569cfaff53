"""What Algorithm 1 trains, as plain values: the engine's whole input besides the images.

:func:`fsds.pipeline.plan.recipe` builds a :class:`Recipe` from params.yaml once (every ``auto``
resolved, a variant's own network and loss filled in); the engine reads nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    arch: str  # the network's key in fsds.method.registry.NETWORKS
    nbr: str  # none | cosine | euclidean (eqs. 1-3)
    cap: str  # none | plain (lambda = 1) | weighted (eqs. 5-6)
    seg_loss: str  # bce (eq. 7) | bce_dice | focal
    iterations: int
    lr: float
    betas: tuple[float, float]  # Adam's
    batch_size: int  # m defect shots and m normal images per iteration
    frozen_stages: int  # the encoder's first N stages keep their loaded weights and statistics
    cap_probability: float
    nbr_weight: float
    augment: bool  # random flips / 90-degree turns
    defect_crop_fraction: float  # crops at a working scale: the share of defect crops holding defect pixels
    threshold: float  # probability at or above which a pixel is a defect (the probe IoU)
    log_every: int
    eval_every: int  # probe IoU every N iterations (0 = off)
    checkpoint_every: int  # loop snapshot every N iterations (0 = off)
