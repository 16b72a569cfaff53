"""Algorithm 1 of the paper: train a segmenter on K defect shots and a pool of normal images.

One iteration samples ``m`` defect shots and ``m`` normal images. With the variant's switches:

- ``nbr`` (none | cosine | euclidean): add the Normal Background Regularization loss between
  the defect-free part of the defect images and the normal images (eqs. 1-3);
- ``cap`` (none | plain | weighted): with probability ``cap_probability`` the segmentation loss
  is computed on the crop-and-pasted image instead of the original (eq. 4), weighted by
  lambda (eq. 6) for ``weighted`` or by 1 for ``plain``;
- ``seg_loss`` (bce | bce_dice | focal; "" = ``train.seg_loss``): the segmentation loss, the
  paper's BCE (eq. 7) or one for defects of a few pixels (beyond the paper), weighted the same way;
- ``synthetic`` (beyond the paper): a share ``train.synthetic_fraction`` of the defect samples are
  pseudo-defects on other normal images (:mod:`fsds.method.pseudo_defects`), treated as shots by
  the segmentation loss, NBR and CaP alike; with zero shots, all of them.

NBR, lambda and the segmentation loss share one encoder pass per kind of image, and the
decoder runs only on the part that is segmented.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from fsds.config import Config, ModelConfig, Variant
from fsds.data.crops import sample_crops
from fsds.data.images import Images, InputGeometry, InputStats, as_geometry, load_images, load_masks, normalize, working_geometry
from fsds.data.split import category_split
from fsds.engine.device import (depthwise_in_fp32, resolve_channels_last, resolve_device, resolve_fp32_depthwise,
                                resolve_precision)
from fsds.errors import InputError
from fsds.engine.prediction import predict_probabilities
from fsds.evaluation.metrics import iou_dice
from fsds.method.augmentation import crop_and_paste, random_dihedral
from fsds.method.losses import cap_lambda, nbr_loss, segmentation_loss
from fsds.method.pseudo_defects import pseudo_defect
from fsds.method.networks import Segmenter, build_model

HISTORY_COLUMNS = ["iteration", "loss", "seg", "nbr", "lambda", "cap", "probe_iou"]


@dataclass
class TrainData:
    """A category's training images, decoded and resized once (:class:`InputGeometry`): stacked
    ``(N, C, S, S)`` uint8 when squashed, else lists of ``(C, h_i, w_i)`` at the working scale."""

    defect_images: Images  # 3 channels
    defect_masks: Images  # 1 channel in {0, 1}
    defect_names: list[str]
    normal_images: Images  # 3 channels
    geometry: InputGeometry | None = None  # None: squashed to the side of the stacked images

    def __post_init__(self) -> None:
        if self.geometry is None:
            if isinstance(self.defect_images, list):
                raise ValueError("TrainData of images of their own sizes needs their InputGeometry")
            side = self.defect_images.shape[-1] if isinstance(self.defect_images, torch.Tensor) else self.defect_images.size
            self.geometry = InputGeometry(int(side))  # a stacked tensor, or a loader with the side it squashes to


def category_geometry(table: pd.DataFrame, category: str, image_size: int, working_size: int) -> InputGeometry:
    """A category's input geometry: squashed to ``image_size`` (``working_size`` 0), or the working
    scale the sizes of all its images fix (sizes only, no labels: so the scale does not change with
    the shots a seed draws), with ``image_size`` crops."""
    rows = table[table["category"] == category]
    return working_geometry(image_size, working_size, list(zip(rows["height"], rows["width"])))


def load_train_data(table: pd.DataFrame, category: str, geometry: InputGeometry | int,
                    shots_required: bool = True) -> TrainData:
    """A category's training images; without ``shots_required`` (zero shots: pseudo-defects alone)
    it may have no defect images."""
    parts = category_split(table, category)
    shots, normals = parts["train_defect"], parts["train_normal"]
    if shots.empty and shots_required:
        raise InputError(f"category {category!r} has no training defect images in the split table")
    if normals.empty:
        raise InputError(f"category {category!r} has no normal training images; NBR and CaP need some")
    geometry = as_geometry(geometry)
    return TrainData(
        defect_images=load_images(shots["image"].tolist(), geometry, desc=f"{category} shots"),
        defect_masks=load_masks(shots["mask"].tolist(), geometry),
        defect_names=shots["image"].tolist(),
        normal_images=load_images(normals["image"].tolist(), geometry, desc=f"{category} normals"),
        geometry=geometry,
    )


@dataclass
class ProbeSet:
    """A few test defect images of a category, for the test IoU during training (Fig. 9), as the
    network sees them (:class:`TrainData`'s layouts)."""

    images: Images  # uint8, 3 channels
    masks: Images  # uint8 in {0, 1}, 1 channel


def load_probe(table: pd.DataFrame, category: str, geometry: InputGeometry | int, n: int, seed: int) -> ProbeSet | None:
    """Up to ``n`` test defect images, drawn with ``seed`` (the same ones for every variant)."""
    test = category_split(table, category)["test"]
    defects = test[test["mask"] != ""]
    if defects.empty:
        return None
    if len(defects) > n:
        keep = np.sort(np.random.default_rng(seed).choice(len(defects), size=n, replace=False))
        defects = defects.iloc[keep]
    return ProbeSet(load_images(defects["image"].tolist(), geometry, desc=f"{category} probe"),
                    load_masks(defects["mask"].tolist(), geometry))


@torch.no_grad()
def probe_iou(model: Segmenter, probe: ProbeSet, device: torch.device, amp_dtype: torch.dtype | None,
              threshold: float, batch_size: int = 8, channels_last: bool = False) -> float:
    """Mean per-image IoU (:func:`fsds.evaluation.metrics.iou_dice`) on the probe images at network
    resolution (whole images, as prediction sees them); leaves the model in train mode."""
    probs = predict_probabilities(model, probe.images, batch_size=batch_size, device=device, amp_dtype=amp_dtype,
                                  channels_last=channels_last, progress=False)
    ious = [iou_dice(p.astype(np.float32) / 255.0 >= threshold, t[0].bool().numpy())[0]  # as the metrics stage
            for p, t in zip(probs, probe.masks)]
    model.train()
    return float(np.mean(ious))


def seed_everything(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def train_segmenter(
    cfg: Config,
    variant: Variant,
    data: TrainData,
    *,
    seed: int,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    progress_desc: str = "train",
    encoder_state: dict[str, torch.Tensor] | None = None,
    model_cfg: ModelConfig | None = None,
    probe: ProbeSet | None = None,
    resume_state: dict[str, Any] | None = None,
    on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[Segmenter, torch.optim.Optimizer, pd.DataFrame]:
    """Run Algorithm 1 and return the model, its optimizer and the per-iteration loss history.

    ``model_cfg`` is the network (default ``cfg.model``); with a ``probe`` and ``train.eval_every``
    the history's ``probe_iou`` holds the probe IoU every ``eval_every`` iterations (NaN between).
    Every ``train.checkpoint_every`` iterations (and at the last) ``on_checkpoint`` gets the whole
    loop state (:func:`loop_state`); given back as ``resume_state``, training continues from there
    and ends where an uninterrupted run with the same seed ends.
    """
    tc = cfg.train
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    device = resolve_device(tc.device)
    amp_dtype = resolve_precision(tc.precision, device)
    channels_last = resolve_channels_last(tc.channels_last, amp_dtype, training=True)
    variant = dataclasses.replace(variant, seg_loss=variant.seg_loss or tc.seg_loss)
    rng = seed_everything(seed)
    model = build_model(model_cfg or cfg.model, encoder_state).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fp32_depthwise = resolve_fp32_depthwise(tc.fp32_depthwise, amp_dtype, device)
    depthwise_in_fp32(model, fp32_depthwise)
    if tc.freezes_encoder_norm(pretrained=encoder_state is not None):
        model.freeze_encoder_norms()
    model.freeze_encoder_stages(tc.resolved_frozen_stages(pretrained=encoder_state is not None))
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2))
    schedule = lr_schedule(optimizer, tc.lr_schedule, tc.iterations)

    m = tc.resolved_batch_size(cfg.shot)
    history: list[dict[str, float]] = []
    first = 1
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        if schedule is not None:
            schedule.load_state_dict(resume_state["schedule"])
        rng.bit_generator.state = resume_state["numpy_rng"]
        torch.set_rng_state(resume_state["torch_rng"])
        history = list(resume_state["history"])
        first = resume_state["iteration"] + 1
    bar = tqdm(range(first, tc.iterations + 1), desc=progress_desc, unit="it", dynamic_ncols=True,
               initial=first - 1, total=tc.iterations)
    for it in bar:
        batch = sample_batch(data, rng, m, variant, tc.cap_probability, tc.augment, model.input_stats, device,
                             channels_last, tc.defect_crop_fraction, tc.synthetic_fraction, tc.synthetic_confine)
        row = {"iteration": it, **train_step(model, optimizer, batch, variant, tc.nbr_weight, amp_dtype, it),
               "probe_iou": math.nan}
        if schedule is not None:
            schedule.step()
        if probe is not None and tc.eval_every and (it % tc.eval_every == 0 or it == tc.iterations):
            row["probe_iou"] = probe_iou(model, probe, device, amp_dtype, cfg.metrics.threshold,
                                         channels_last=channels_last)
        history.append(row)
        if on_log is not None:
            on_log(it, row)
        if it % tc.log_every == 0 or it == tc.iterations:
            bar.set_postfix(loss=f"{row['loss']:.4f}", seg=f"{row['seg']:.4f}", nbr=f"{row['nbr']:.3f}")
        if on_checkpoint is not None and tc.checkpoint_every and (it % tc.checkpoint_every == 0 or it == tc.iterations):
            on_checkpoint(loop_state(it, model, optimizer, rng, history, schedule))
    depthwise_in_fp32(model, False)  # prediction: bf16 depthwise forward is the faster one
    return model, optimizer, pd.DataFrame(history, columns=HISTORY_COLUMNS)


def lr_schedule(optimizer: torch.optim.Optimizer, kind: str,
                iterations: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """``train.lr_schedule``: None for ``constant`` (the paper), else cosine decay from ``train.lr``
    to 0 over ``iterations`` steps (stepped after each iteration)."""
    if kind == "constant":
        return None
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=iterations)
    raise ValueError(f"train.lr_schedule: unknown schedule {kind!r}")


def loop_state(iteration: int, model: Segmenter, optimizer: torch.optim.Optimizer, rng: np.random.Generator,
               history: list[dict[str, float]],
               schedule: torch.optim.lr_scheduler.LRScheduler | None = None) -> dict[str, Any]:
    """Everything the training loop carries from one iteration to the next."""
    state = {"iteration": iteration, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "history": list(history)}
    if schedule is not None:
        state["schedule"] = schedule.state_dict()
    return state


@dataclass
class Batch:
    """One iteration's images on the device: normalised defect and normal images, the masks."""

    defect: torch.Tensor  # (m, 3, S, S) float
    mask: torch.Tensor  # (m, 1, S, S) float in {0, 1}
    normal: torch.Tensor  # (m, 3, S, S) float
    use_cap: bool
    names: list[str]


def sample_batch(data: TrainData, rng: np.random.Generator, m: int, variant: Variant, cap_probability: float,
                 augment: bool, stats: InputStats, device: torch.device, channels_last: bool = False,
                 defect_crop_fraction: float = 1.0, synthetic_fraction: float = 0.0,
                 synthetic_confine: bool = False) -> Batch:
    """Draw ``m`` defect shots and ``m`` normal images (Algorithm 1) from the cached uint8 tensors
    (at a working scale: crops of them, :func:`fsds.data.crops.sample_crops`), normalised with the
    network's ``stats``. For a variant with ``synthetic``, each defect sample is, with probability
    ``synthetic_fraction`` (always, without shots), a pseudo-defect on another normal image
    (:func:`fsds.method.pseudo_defects.pseudo_defect`); other variants draw exactly as before."""
    n_shots = len(data.defect_images)
    if not n_shots and not variant.synthetic:
        raise InputError("no defect shots to train on (shot=0): only variants with synthetic: true train on "
                         "pseudo-defects alone; set shot >= 1 or pick such a variant")
    idx_d = rng.integers(0, n_shots, size=m) if n_shots else np.zeros(m, dtype=np.int64)
    idx_n = rng.integers(0, len(data.normal_images), size=m)
    use_cap = variant.cap != "none" and rng.random() < cap_probability
    images, masks = data.defect_images, data.defect_masks
    names = [Path(data.defect_names[i]).name for i in idx_d] if n_shots else []
    if variant.synthetic:
        pseudo = rng.random(m) < synthetic_fraction if n_shots else np.ones(m, dtype=bool)
        n_normals = len(data.normal_images)  # the pseudo-defects go on normal images other than their partners
        hosts = (idx_n + rng.integers(1, n_normals, size=m)) % n_normals if n_normals > 1 else idx_n
        images, masks, names = [], [], []
        for i in range(m):
            if pseudo[i]:
                image, mask = pseudo_defect(data.normal_images[hosts[i]], data.normal_images, rng, synthetic_confine)
                name = "pseudo-defect"
            else:
                image, mask, name = (data.defect_images[idx_d[i]], data.defect_masks[idx_d[i]],
                                     Path(data.defect_names[idx_d[i]]).name)
            images.append(image)
            masks.append(mask)
            names.append(name)
        idx_d = np.arange(m)
    if data.geometry.crops:
        img_d, mask_d, img_n = sample_crops(images, masks, data.normal_images, idx_d, idx_n,
                                            data.geometry.size, defect_crop_fraction, rng)
    else:
        img_d, mask_d, img_n = _take(images, idx_d), _take(masks, idx_d), data.normal_images[idx_n]
    if augment:
        img_d, mask_d = random_dihedral(img_d, mask_d, rng)
        img_n, _ = random_dihedral(img_n, None, rng)
    return Batch(normalize(img_d.to(device), stats, channels_last), mask_d.to(device).float(),
                 normalize(img_n.to(device), stats, channels_last), use_cap, names)


def _take(images: Images, idx: np.ndarray) -> torch.Tensor:
    """``images[idx]`` stacked: a list of same-sized tensors item by item, else indexed as given (a
    tensor, or a loader that takes an index array)."""
    return torch.stack([images[i] for i in idx]) if isinstance(images, list) else images[idx]


def train_step(model: Segmenter, optimizer: torch.optim.Optimizer, batch: Batch, variant: Variant,
               nbr_weight: float, amp_dtype: torch.dtype | None, iteration: int = 0) -> dict[str, float]:
    """One optimisation step of Algorithm 1; returns the loss terms.

    The encoder sees each kind of image the variant needs (defect, normal, pasted) in its own
    pass of ``m`` images: on a CPU, passes of ``m`` keep the activations closer to the caches
    than one pass of ``3m`` and run faster (reports/benchmark.md measures both). NBR, lambda
    and the segmentation loss share those features; the decoder runs once, on the segmented part.
    """
    if not variant.seg_loss:
        raise ValueError("train_step needs the variant's segmentation loss resolved (train_segmenter fills in "
                         "train.seg_loss); pass dataclasses.replace(variant, seg_loss=cfg.seg_loss_for(name))")
    y, use_cap = batch.mask, batch.use_cap
    device = y.device
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        needs_defect = not use_cap or variant.nbr != "none" or variant.cap == "weighted"
        f_defect = model.encode(batch.defect) if needs_defect else None
        f_normal = model.encode(batch.normal) if variant.nbr != "none" else None
        f_pasted = model.encode(crop_and_paste(batch.defect, batch.normal, y)) if use_cap else None
        logits = model.decode(f_pasted if use_cap else f_defect)

    lam = None
    if use_cap and variant.cap == "weighted":
        lam = cap_lambda(f_defect[-1], f_pasted[-1])
    seg = segmentation_loss(logits, y, lam, variant.seg_loss)
    nbr = torch.zeros((), device=device)
    if variant.nbr != "none":
        nbr = nbr_loss(f_defect[-1], f_normal[-1], y, variant.nbr)
    loss = seg + nbr_weight * nbr

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


