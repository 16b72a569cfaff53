import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsds.data.split import category_split, k_shot_split
from fsds.errors import InputError


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
    for shot in (0, -1):
        with pytest.raises(ValueError, match="shot must be >= 1"):
            k_shot_split(tiny_index, shot=shot, seed=0)


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
    assert set(parts) == {"train_defect", "train_normal", "calibration", "test"}
    assert parts["calibration"].empty  # none held out unless asked
    assert (parts["test"]["label"] == 0).sum() == 3
    with pytest.raises(ValueError, match="not in the split table"):
        category_split(tiny_split, "nope")


@st.composite
def indexes(draw):
    """A random dataset index: 1-3 categories, 1-3 defect types each, 1-6 images per type (some
    with empty masks), 0-4 normal training and test images."""
    rows = []
    for c in range(draw(st.integers(1, 3))):
        category = f"cat{c}"
        for source, n in (("train", draw(st.integers(1, 4))), ("test", draw(st.integers(0, 4)))):
            rows += [{"category": category, "source": source, "defect_type": "good", "label": 0, "mask": "",
                      "mask_area": 0, "image": f"{category}/{source}/good/{i}.png"} for i in range(n)]
        for t in range(draw(st.integers(1, 3))):
            for i in range(draw(st.integers(1, 6))):
                rows.append({"category": category, "source": "test", "defect_type": f"type{t}", "label": 1,
                             "image": f"{category}/test/type{t}/{i}.png", "mask": f"{category}/m/type{t}/{i}.png",
                             "mask_area": draw(st.sampled_from([0, 5, 5, 5]))})
    frame = pd.DataFrame(rows)
    frame["height"] = frame["width"] = 64
    return frame


@settings(max_examples=80, deadline=None)
@given(index=indexes(), shot=st.integers(1, 4), seed=st.integers(0, 2**32 - 1),
       unit=st.sampled_from(["defect_type", "category"]))
def test_split_properties_on_random_indexes(index, shot, seed, unit):
    """Any index: either the split is a partition with exactly K non-empty shots per unit, the same
    for the same seed whatever the row order, or the error names a unit that is too small."""
    keys = ["category", "defect_type"] if unit == "defect_type" else ["category"]
    defects = index[index["label"] == 1]
    groups = defects.groupby(keys)
    feasible = all(shot <= (g["mask_area"] > 0).sum() and shot < len(g) for _, g in groups)
    if not feasible:
        with pytest.raises(ValueError, match=rf"shot={shot} but (defect type|category) \S+ has only \d+ defect images"):
            k_shot_split(index, shot, seed, unit)
        return
    table = k_shot_split(index, shot, seed, unit)
    assert len(table) == len(index) and table["image"].is_unique and set(table["image"]) == set(index["image"])
    shots = table[table["split"] == "train_defect"]
    assert (shots["mask_area"] > 0).all() and (shots["label"] == 1).all()
    assert (shots.groupby(keys).size() == shot).all() and shots.groupby(keys).ngroups == groups.ngroups
    assert set(shots["image"]).isdisjoint(table[table["split"] == "test"]["image"])
    assert (table[table["split"] == "train_normal"]["label"] == 0).all()
    shuffled = index.sample(frac=1.0, random_state=seed % 997)
    assert k_shot_split(shuffled, shot, seed, unit).equals(table)


def test_calibration_normals_are_held_out_of_the_normal_pool(tiny_index):
    table = k_shot_split(tiny_index, shot=1, seed=0, calibration_normals=2)
    train_normals = tiny_index[tiny_index["source"] == "train"]
    for category in sorted(tiny_index["category"].unique()):
        parts = category_split(table, category)
        assert len(parts["calibration"]) == 2 and (parts["calibration"]["label"] == 0).all()
        assert len(parts["calibration"]) + len(parts["train_normal"]) == (train_normals["category"] == category).sum()
        assert set(parts["calibration"]["image"]).isdisjoint(parts["train_normal"]["image"])
        assert set(parts["calibration"]["image"]) <= set(train_normals["image"])  # never a test image
    # the draw is the seed's and leaves the shots alone
    again = k_shot_split(tiny_index.sample(frac=1.0, random_state=1), shot=1, seed=0, calibration_normals=2)
    assert set(again[again["split"] == "calibration"]["image"]) == set(table[table["split"] == "calibration"]["image"])
    without = k_shot_split(tiny_index, shot=1, seed=0)
    assert (without["split"] != "calibration").all()
    assert set(without[without["split"] == "train_defect"]["image"]) == set(table[table["split"] == "train_defect"]["image"])
    draws = {tuple(k_shot_split(tiny_index, shot=1, seed=s, calibration_normals=2).query("split == 'calibration'")["image"])
             for s in range(6)}
    assert len(draws) > 1


def test_too_many_calibration_normals_is_an_error_naming_the_limit(tiny_index):
    n = int(((tiny_index["source"] == "train") & (tiny_index["category"] == "fabric")).sum())
    with pytest.raises(InputError, match=rf"split.calibration_normals={n} but category fabric has only {n} normal .* at most {n - 1}"):
        k_shot_split(tiny_index, shot=1, seed=0, calibration_normals=n)
