"""Algorithm 1 of the paper: train a segmenter on K defect shots and a pool of normal images.

One iteration samples ``m`` defect shots and ``m`` normal images
(:func:`fsds.engine.batches.sample_batch`). With the recipe's switches:

- ``nbr`` (none | cosine | euclidean): add the Normal Background Regularization loss between
  the defect-free part of the defect images and the normal images (eqs. 1-3);
- ``cap`` (none | plain | weighted): with probability ``cap_probability`` the segmentation loss
  is computed on the crop-and-pasted image instead of the original (eq. 4), weighted by
  lambda (eq. 6) for ``weighted`` or by 1 for ``plain``;
- ``seg_loss`` (bce | bce_dice | focal): the segmentation loss, the paper's BCE (eq. 7) or one for
  defects of a few pixels (beyond the paper), weighted the same way.

NBR, lambda and the segmentation loss share one encoder pass per kind of image, and the
decoder runs only on the part that is segmented.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from fsds.engine.batches import Batch, ProbeSet, TrainData, sample_batch
from fsds.engine.device import Runtime, depthwise_in_fp32
from fsds.engine.prediction import predict_probabilities
from fsds.engine.recipe import Recipe
from fsds.evaluation.metrics import iou_dice
from fsds.method.augmentation import crop_and_paste
from fsds.method.fusion import MemoryGuided
from fsds.method.losses import cap_lambda, nbr_loss, segmentation_loss
from fsds.method.memory import NormalMemory
from fsds.method.networks import Segmenter, build_model

HISTORY_COLUMNS = ["iteration", "loss", "seg", "nbr", "lambda", "cap", "probe_iou"]


@torch.no_grad()
def probe_iou(model: Segmenter, probe: ProbeSet, runtime: Runtime, threshold: float, batch_size: int = 8) -> float:
    """Mean per-image IoU (:func:`fsds.evaluation.metrics.iou_dice`) on the probe images at network
    resolution (whole images, as prediction sees them); leaves the model in train mode."""
    probs = predict_probabilities(model, probe.images, runtime, batch_size=batch_size, progress=False)
    ious = [iou_dice(p.astype(np.float32) / 255.0 >= threshold, t[0].bool().numpy())[0]  # as the metrics stage
            for p, t in zip(probs, probe.masks)]
    model.train()
    return float(np.mean(ious))


def seed_everything(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def train_segmenter(
    recipe: Recipe,
    runtime: Runtime,
    data: TrainData,
    *,
    seed: int,
    encoder_state: dict[str, torch.Tensor] | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    progress_desc: str = "train",
    probe: ProbeSet | None = None,
    resume_state: dict[str, Any] | None = None,
    on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
    memory: NormalMemory | None = None,
) -> tuple[Segmenter | MemoryGuided, torch.optim.Optimizer, pd.DataFrame]:
    """Run Algorithm 1 and return the model, its optimizer and the per-iteration loss history.

    The network is ``recipe.arch`` with ``encoder_state`` loaded (None: random weights). With a
    ``probe`` and ``recipe.eval_every`` the history's ``probe_iou`` holds the probe IoU every
    ``eval_every`` iterations (NaN between). Every ``recipe.checkpoint_every`` iterations (and at the
    last) ``on_checkpoint`` gets the whole loop state (:func:`loop_state`); given back as
    ``resume_state``, training continues from there and ends where an uninterrupted run with the
    same seed ends. With a ``memory`` the network trained is the segmenter guided by its map
    (:class:`fsds.method.fusion.MemoryGuided`).
    """
    rng = seed_everything(seed)
    model, optimizer = trainable_model(recipe, runtime, encoder_state, memory)

    history: list[dict[str, float]] = []
    first = 1
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        rng.bit_generator.state = resume_state["numpy_rng"]
        torch.set_rng_state(resume_state["torch_rng"])
        history = list(resume_state["history"])
        first = resume_state["iteration"] + 1
    bar = tqdm(range(first, recipe.iterations + 1), desc=progress_desc, unit="it", dynamic_ncols=True,
               initial=first - 1, total=recipe.iterations)
    for it in bar:
        batch = sample_batch(data, rng, recipe, model.input_stats, runtime.device, runtime.channels_last)
        row = {"iteration": it, **train_step(model, optimizer, batch, recipe, runtime.amp_dtype, it),
               "probe_iou": math.nan}
        if probe is not None and recipe.eval_every and (it % recipe.eval_every == 0 or it == recipe.iterations):
            row["probe_iou"] = probe_iou(model, probe, runtime, recipe.threshold)
        history.append(row)
        if on_log is not None:
            on_log(it, row)
        if it % recipe.log_every == 0 or it == recipe.iterations:
            bar.set_postfix(loss=f"{row['loss']:.4f}", seg=f"{row['seg']:.4f}", nbr=f"{row['nbr']:.3f}")
        if on_checkpoint is not None and recipe.checkpoint_every and (
                it % recipe.checkpoint_every == 0 or it == recipe.iterations):
            on_checkpoint(loop_state(it, model, optimizer, rng, history))
    depthwise_in_fp32(model, False)  # prediction: bf16 depthwise forward is the faster one
    return model, optimizer, pd.DataFrame(history, columns=HISTORY_COLUMNS)


def trainable_model(recipe: Recipe, runtime: Runtime, encoder_state: dict[str, torch.Tensor] | None = None,
                    memory: NormalMemory | None = None) -> tuple[Segmenter | MemoryGuided, torch.optim.Optimizer]:
    """The network as Algorithm 1 trains it, in train mode, and its Adam: ``recipe.arch`` with
    ``encoder_state`` loaded, on the runtime's device and layout (depthwise convolutions in fp32 if
    it says so), its first ``recipe.frozen_stages`` encoder stages left as loaded; guided by a frozen
    ``memory``'s map if one is given."""
    model = build_model(recipe.arch, encoder_state).freeze_encoder_stages(recipe.frozen_stages)
    if memory is not None:
        model = MemoryGuided(model, copy.deepcopy(memory))
    model = model.to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    depthwise_in_fp32(model, runtime.fp32_depthwise)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.Adam(trainable, lr=recipe.lr, betas=recipe.betas)


def loop_state(iteration: int, model: Segmenter, optimizer: torch.optim.Optimizer, rng: np.random.Generator,
               history: list[dict[str, float]]) -> dict[str, Any]:
    """Everything the training loop carries from one iteration to the next."""
    return {"iteration": iteration, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "history": list(history)}


def train_step(model: Segmenter | MemoryGuided, optimizer: torch.optim.Optimizer, batch: Batch, recipe: Recipe,
               amp_dtype: torch.dtype | None, iteration: int = 0) -> dict[str, float]:
    """One optimisation step of Algorithm 1; returns the loss terms.

    The encoder sees each kind of image the variant needs (defect, normal, pasted) in its own
    pass of ``m`` images: on a CPU, passes of ``m`` keep the activations closer to the caches
    than one pass of ``3m`` and run faster (lab/findings/benchmark.md measures both). NBR, lambda
    and the segmentation loss share those features; the decoder runs once, on the segmented part.
    """
    y, use_cap = batch.mask, batch.use_cap
    device = y.device
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        needs_defect = not use_cap or recipe.nbr != "none" or recipe.cap == "weighted"
        f_defect = model.encode(batch.defect) if needs_defect else None
        f_normal = model.encode(batch.normal) if recipe.nbr != "none" else None
        pasted = crop_and_paste(batch.defect, batch.normal, y) if use_cap else None
        f_pasted = model.encode(pasted) if use_cap else None
        logits = model.segment(f_pasted, pasted) if use_cap else model.segment(f_defect, batch.defect)

    lam = None
    if use_cap and recipe.cap == "weighted":
        lam = cap_lambda(f_defect[-1], f_pasted[-1])
    seg = segmentation_loss(logits, y, lam, recipe.seg_loss)
    nbr = torch.zeros((), device=device)
    if recipe.nbr != "none":
        nbr = nbr_loss(f_defect[-1], f_normal[-1], y, recipe.nbr)
    loss = seg + recipe.nbr_weight * nbr

    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"non-finite loss at iteration {iteration}: seg={seg.item()}, nbr={nbr.item()}, "
            f"cap={'yes' if use_cap else 'no'}, defect images {batch.names}; lower train.lr or check these images"
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {
        "loss": loss.item(),
        "seg": seg.item(),
        "nbr": nbr.item(),
        "lambda": lam.mean().item() if lam is not None else math.nan,
        "cap": float(use_cap),
    }


