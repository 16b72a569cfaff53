"""K-shot sampling: which annotated defect images the model may train on.

Two rules, chosen by ``split.unit``:

- ``defect_type`` (default): K defect images per category and defect type;
- ``category``: K defect images per category, drawn from all its defect types (the counts
  of the paper's Table I, e.g. MVTec bottle: 63 defect images, 62 left for test at 1-shot).

Only defect images with a non-empty mask are drawn. The other defect images and the test
normals form ``test``; the training normals are the ``train_normal`` pool, except
``calibration_normals`` of each category, drawn at random and never trained on: the
``calibration`` images from which the train stage picks a threshold with a known false-alarm
rate (:mod:`fsds.evaluation.threshold`).
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from fsds.errors import InputError

SPLITS = ("train_defect", "train_normal", "calibration", "test")
UNITS = ("defect_type", "category")
SPLIT_COLUMNS = ["split", "category", "defect_type", "image", "mask", "label", "mask_area", "height", "width"]


def k_shot_split(index: pd.DataFrame, shot: int, seed: int, unit: str = "defect_type",
                 calibration_normals: int = 0) -> pd.DataFrame:
    """Assign every indexed image to a split; each unit's draw depends only on (seed, unit name), each
    category's calibration normals only on (seed, category)."""
    if shot < 1:
        raise InputError(f"shot must be >= 1 (K annotated defect images per defect type), got {shot}")
    if unit not in UNITS:
        raise InputError(f"split.unit: unknown unit {unit!r}; allowed: {', '.join(UNITS)}")
    table = index.copy()
    table["split"] = np.where(table["source"] == "train", "train_normal", "test")
    if calibration_normals < 0:
        raise InputError(f"split.calibration_normals must be >= 0, got {calibration_normals}")
    if calibration_normals:
        for category, normals in table[table["split"] == "train_normal"].groupby("category", sort=True):
            if calibration_normals >= len(normals):
                raise InputError(
                    f"split.calibration_normals={calibration_normals} but category {category} has only "
                    f"{len(normals)} normal training images; use at most {len(normals) - 1} so that some are left to train on"
                )
            rng = np.random.default_rng([seed, _stable_hash(f"{category}/calibration")])
            held = rng.choice(normals.sort_values("image").index.to_numpy(), size=calibration_normals, replace=False)
            table.loc[held, "split"] = "calibration"

    defects = table[table["label"] == 1]
    keys = ["category", "defect_type"] if unit == "defect_type" else ["category"]
    for key, group in defects.groupby(keys, sort=True):
        name = "/".join(key) if isinstance(key, tuple) else str(key)
        # Empty masks filed as defects teach nothing about the defect: never draw them as shots.
        eligible = group[group["mask_area"] > 0].sort_values("image")
        if shot > len(eligible) or shot >= len(group):
            usable = min(len(eligible), len(group) - 1)
            kind = "defect type" if unit == "defect_type" else "category"
            raise InputError(
                f"shot={shot} but {kind} {name} has only {len(group)} defect images "
                f"({len(eligible)} with a non-empty mask); use shot <= {max(usable, 0)} so that at least one "
                "is left for testing"
            )
        rng = np.random.default_rng([seed, _stable_hash(name)])
        chosen = rng.choice(eligible.index.to_numpy(), size=shot, replace=False)
        table.loc[chosen, "split"] = "train_defect"

    table = table.sort_values(["split", "category", "defect_type", "image"], kind="stable")
    return table[SPLIT_COLUMNS].reset_index(drop=True)


def category_split(table: pd.DataFrame, category: str) -> dict[str, pd.DataFrame]:
    """The parts of one category (:data:`SPLITS`), each sorted by image path."""
    part = table[table["category"] == category]
    if part.empty:
        raise InputError(f"category {category!r} is not in the split table")
    return {name: part[part["split"] == name].reset_index(drop=True) for name in SPLITS}


def _stable_hash(text: str) -> int:
    # Python's hash() is salted per process; crc32 keeps the draw identical across runs.
    return zlib.crc32(text.encode("utf-8"))
