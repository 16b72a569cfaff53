"""`split.unit: category` reproduces the test counts of the paper's Table I for all 15 MVTec AD categories."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fsds.data.datasets import index_dataset
from fsds.data.split import k_shot_split

# Table I: category -> (train normal, test defect at 1-shot, test defect at 5-shot, test normal)
TABLE_I = {
    "carpet": (280, 88, 84, 28),
    "grid": (264, 56, 52, 21),
    "leather": (245, 91, 87, 32),
    "tile": (230, 83, 79, 33),
    "wood": (247, 59, 55, 19),
    "bottle": (209, 62, 58, 20),
    "cable": (224, 91, 87, 58),
    "capsule": (219, 108, 104, 23),
    "hazelnut": (391, 69, 65, 40),
    "metal_nut": (220, 92, 88, 22),
    "pill": (267, 140, 136, 26),
    "screw": (320, 118, 114, 41),
    "toothbrush": (60, 29, 25, 12),
    "transistor": (213, 39, 35, 60),
    "zipper": (240, 118, 114, 32),
}


@pytest.fixture(scope="module")
def mvtec_like(tmp_path_factory):
    """MVTec layout with Table I's image counts (1-shot defects + 1 per category), tiny images."""
    root = tmp_path_factory.mktemp("mvtec_table_one")
    pixel = np.zeros((4, 4), dtype=np.uint8)
    mask = pixel.copy()
    mask[1:3, 1:3] = 255
    for category, (train_normal, test_defect_1, _, test_normal) in TABLE_I.items():
        base = root / category
        for folder, n in ((base / "train" / "good", train_normal), (base / "test" / "good", test_normal)):
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(pixel).save(folder / f"{i:03d}.png")
        total = test_defect_1 + 1
        types = ("crack", "hole", "scratch")
        for i in range(total):
            t = types[i % 3]
            (base / "test" / t).mkdir(parents=True, exist_ok=True)
            (base / "ground_truth" / t).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixel).save(base / "test" / t / f"{i:03d}.png")
            Image.fromarray(mask).save(base / "ground_truth" / t / f"{i:03d}_mask.png")
    return index_dataset(root)


@pytest.mark.parametrize("shot", [1, 5])
def test_category_unit_reproduces_table_one(mvtec_like, shot):
    table = k_shot_split(mvtec_like, shot=shot, seed=0, unit="category")
    for category, (train_normal, test_defect_1, test_defect_5, test_normal) in TABLE_I.items():
        part = table[table["category"] == category]
        assert (part["split"] == "train_defect").sum() == shot
        assert (part["split"] == "train_normal").sum() == train_normal
        test = part[part["split"] == "test"]
        assert (test["label"] == 1).sum() == (test_defect_1 if shot == 1 else test_defect_5), category
        assert (test["label"] == 0).sum() == test_normal


def test_defect_type_unit_draws_per_type(mvtec_like):
    table = k_shot_split(mvtec_like, shot=1, seed=0, unit="defect_type")
    counts = table[table["split"] == "train_defect"].groupby(["category", "defect_type"]).size()
    assert (counts == 1).all() and len(counts) == 45
