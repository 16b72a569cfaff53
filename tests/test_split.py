import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsds.split import category_split, k_shot_split


def test_k_per_defect_type_and_pool(tiny_index):
    for shot in (1, 2):
        table = k_shot_split(tiny_index, shot=shot, seed=0)
        train = table[table["split"] == "train_defect"]
        counts = train.groupby(["category", "defect_type"]).size()
        assert (counts == shot).all()
        assert len(counts) == tiny_index[tiny_index["label"] == 1].groupby(["category", "defect_type"]).ngroups
        # every train normal is in the pool; test normals are test images
        assert (table[table["split"] == "train_normal"]["label"] == 0).all()
        assert len(table[table["split"] == "train_normal"]) == (tiny_index["source"] == "train").sum()


def test_split_is_a_partition(tiny_index):
    table = k_shot_split(tiny_index, shot=2, seed=1)
    assert len(table) == len(tiny_index)
    assert table["image"].is_unique
    assert set(table["image"]) == set(tiny_index["image"])
    train_images = set(table[table["split"] != "test"]["image"])
    assert train_images.isdisjoint(table[table["split"] == "test"]["image"])


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), shot=st.integers(1, 3))
def test_same_seed_same_split(tiny_index, seed, shot):
    a = k_shot_split(tiny_index, shot=shot, seed=seed)
    b = k_shot_split(tiny_index.sample(frac=1.0, random_state=seed % 1000), shot=shot, seed=seed)
    assert a.equals(b)  # neither the seed's draw nor the index's row order changes the split


def test_different_seeds_draw_different_shots(tiny_index):
    draws = {
        tuple(k_shot_split(tiny_index, shot=1, seed=s).query("split == 'train_defect'")["image"]) for s in range(6)
    }
    assert len(draws) > 1


def test_shot_too_large_names_the_type_and_count(tiny_index):
    with pytest.raises(ValueError, match=r"defect type fabric/\w+ has only 4 defect images"):
        k_shot_split(tiny_index, shot=4, seed=0)
    with pytest.raises(ValueError, match="shot must be >= 1"):
        k_shot_split(tiny_index, shot=0, seed=0)


def test_empty_masks_are_never_training_shots(tiny_index):
    index = tiny_index.copy()
    group = index[(index["category"] == "fabric") & (index["label"] == 1)]
    first_type = group["defect_type"].iloc[0]
    rows = group[group["defect_type"] == first_type].index
    index.loc[rows[:3], "mask_area"] = 0  # three of four masks empty: one eligible
    for seed in range(10):
        table = k_shot_split(index, shot=1, seed=seed)
        chosen = table[(table["split"] == "train_defect") & (table["defect_type"] == first_type)]
        assert (chosen["mask_area"] > 0).all()
    with pytest.raises(ValueError, match=r"has only 4 defect images \(1 with a non-empty mask\); use shot <= 1"):
        k_shot_split(index, shot=2, seed=0)


def test_category_split_parts(tiny_split):
    parts = category_split(tiny_split, "washer")
    assert set(parts) == {"train_defect", "train_normal", "test"}
    assert (parts["test"]["label"] == 0).sum() == 3
    with pytest.raises(ValueError, match="not in the split table"):
        category_split(tiny_split, "nope")
