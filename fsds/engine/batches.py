"""What one iteration of Algorithm 1 sees: a category's training images, decoded and resized once
(:class:`TrainData`), test images to watch during training (:class:`ProbeSet`), and the batch
of ``m`` defect shots and ``m`` normal images drawn from them (:func:`sample_batch`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fsds.data.crops import sample_crops
from fsds.data.images import Images, InputGeometry, InputStats, as_geometry, load_images, load_masks, normalize, working_geometry
from fsds.data.split import category_split
from fsds.engine.recipe import Recipe
from fsds.errors import InputError
from fsds.method.augmentation import random_dihedral


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


def load_train_data(table: pd.DataFrame, category: str, geometry: InputGeometry | int) -> TrainData:
    """A category's training images: its K shots and its pool of normal images."""
    parts = category_split(table, category)
    shots, normals = parts["train_defect"], parts["train_normal"]
    if shots.empty:
        raise InputError(f"category {category!r} has no training defect images in the split table; "
                         "re-run the split stage")
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


@dataclass
class Batch:
    """One iteration's images on the device: normalised defect and normal images, the masks."""

    defect: torch.Tensor  # (m, 3, S, S) float
    mask: torch.Tensor  # (m, 1, S, S) float in {0, 1}
    normal: torch.Tensor  # (m, 3, S, S) float
    use_cap: bool
    names: list[str]


def sample_batch(data: TrainData, rng: np.random.Generator, recipe: Recipe, stats: InputStats,
                 device: torch.device, channels_last: bool = False) -> Batch:
    """Draw ``recipe.batch_size`` defect shots and as many normal images (Algorithm 1) from the cached
    uint8 tensors (at a working scale: crops of them, :func:`fsds.data.crops.sample_crops`),
    normalised with the network's ``stats``; with CaP, whether this batch is crop-and-pasted."""
    m, n_shots = recipe.batch_size, len(data.defect_images)
    if not n_shots:
        raise InputError("no defect shots to train on: the split table holds none for this category; "
                         "re-run the split stage with shot >= 1")
    idx_d = rng.integers(0, n_shots, size=m)
    idx_n = rng.integers(0, len(data.normal_images), size=m)
    use_cap = recipe.cap != "none" and rng.random() < recipe.cap_probability
    images, masks = data.defect_images, data.defect_masks
    names = [Path(data.defect_names[i]).name for i in idx_d]
    if data.geometry.crops:
        img_d, mask_d, img_n = sample_crops(images, masks, data.normal_images, idx_d, idx_n,
                                            data.geometry.size, recipe.defect_crop_fraction, rng)
    else:
        img_d, mask_d, img_n = _take(images, idx_d), _take(masks, idx_d), data.normal_images[idx_n]
    if recipe.augment:
        img_d, mask_d = random_dihedral(img_d, mask_d, rng)
        img_n, _ = random_dihedral(img_n, None, rng)
    return Batch(normalize(img_d.to(device), stats, channels_last), mask_d.to(device).float(),
                 normalize(img_n.to(device), stats, channels_last), use_cap, names)


def _take(images: Images, idx: np.ndarray) -> torch.Tensor:
    """``images[idx]`` stacked: a list of same-sized tensors item by item, else indexed as given (a
    tensor, or a loader that takes an index array)."""
    return torch.stack([images[i] for i in idx]) if isinstance(images, list) else images[idx]
