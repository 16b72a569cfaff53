import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from sklearn.metrics import f1_score, jaccard_score, roc_auc_score

from fsds.evaluation.metrics import (
    PixelHistogram,
    by_defect_type,
    evaluate_category,
    image_accuracy,
    iou_dice,
    mean_over_categories,
    safe_auroc,
)


def test_iou_dice_hand_computed():
    pred = np.array([[1, 1, 0], [0, 1, 0]], dtype=bool)
    target = np.array([[1, 0, 0], [0, 1, 1]], dtype=bool)
    # TP = 2, FP = 1, FN = 1
    iou, dice = iou_dice(pred, target)
    assert iou == pytest.approx(2 / 4)
    assert dice == pytest.approx(4 / 6)


def test_iou_dice_empty_cases():
    empty = np.zeros((4, 4), dtype=bool)
    full = np.ones((4, 4), dtype=bool)
    assert iou_dice(empty, empty) == (1.0, 1.0)  # zero_division: nothing to find, nothing found
    assert iou_dice(empty, empty, zero_division=0.0) == (0.0, 0.0)
    assert iou_dice(empty, full) == (0.0, 0.0)
    assert iou_dice(full, empty) == (0.0, 0.0)


def test_iou_dice_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="differ in shape"):
        iou_dice(np.zeros((2, 2)), np.zeros((2, 3)))


@settings(max_examples=60, deadline=None)
@given(
    pred=arrays(bool, (6, 7)),
    target=arrays(bool, (6, 7)),
)
def test_iou_dice_match_sklearn_bounds_and_symmetry(pred, target):
    iou, dice = iou_dice(pred, target)
    assert 0.0 <= iou <= dice <= 1.0
    assert iou_dice(target, pred) == (iou, dice)
    if not (pred.any() or target.any()):
        assert (iou, dice) == (1.0, 1.0)  # both empty: a defect-free image predicted defect-free
    if pred.any() != target.any():
        assert (iou, dice) == (0.0, 0.0)  # one empty, the other not: nothing overlaps
    if pred.any() or target.any():
        assert iou == pytest.approx(jaccard_score(target.ravel(), pred.ravel(), zero_division=1.0))
        assert dice == pytest.approx(f1_score(target.ravel(), pred.ravel(), zero_division=1.0))
        assert dice == pytest.approx(2 * iou / (1 + iou))


def test_image_accuracy_uses_any_predicted_pixel():
    labels = np.array([1, 1, 0, 0])
    scores = np.array([0.2, 0.0, 0.0, 0.01])
    assert image_accuracy(labels, scores) == pytest.approx(0.5)


def test_safe_auroc_is_nan_with_one_class():
    assert math.isnan(safe_auroc(np.array([1, 1]), np.array([0.1, 0.2])))
    assert safe_auroc(np.array([0, 1]), np.array([0.1, 0.2])) == 1.0


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_pixel_histogram_auroc_equals_sklearn_on_quantised_scores(seed):
    rng = np.random.default_rng(seed)
    prob = rng.random((2, 9, 9))
    target = rng.random((2, 9, 9)) < 0.3 + 0.4 * prob
    hist = PixelHistogram()
    for p, t in zip(prob, target):
        hist.add(p, t)
    quantised = np.rint(prob * 255)
    if target.any() and not target.all():
        assert hist.auroc() == pytest.approx(roc_auc_score(target.ravel(), quantised.ravel()), abs=1e-12)


def test_pixel_histogram_auroc_nan_without_positives():
    hist = PixelHistogram()
    hist.add(np.random.default_rng(0).random((4, 4)), np.zeros((4, 4), dtype=bool))
    assert math.isnan(hist.auroc())


def test_evaluate_category_on_hand_made_predictions(tmp_path):
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[2:6, 2:6] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    test = pd.DataFrame(
        {
            "category": ["c", "c"],
            "defect_type": ["hole", "good"],
            "image": ["a.png", "b.png"],
            "mask": [str(tmp_path / "m.png"), ""],
            "label": [1, 0],
            "height": [8, 8],
            "width": [8, 8],
        }
    )
    probs = np.zeros((2, 8, 8), dtype=np.uint8)
    probs[0, 2:6, 2:4] = 255  # half the defect found
    summary, rows = evaluate_category(probs, test, threshold=0.5)
    assert summary["iou"] == pytest.approx(0.5)
    assert summary["dice"] == pytest.approx(2 * 8 / (2 * 8 + 8))
    assert summary["image_acc"] == 1.0
    assert summary["image_auroc"] == 1.0
    assert rows["score"].tolist() == [pytest.approx(8 / 64), 0.0]
    assert math.isnan(rows["iou"].iloc[1])  # normal images have no IoU


def test_mean_over_categories_skips_nan():
    per_cat = {
        "a": {"iou": 0.2, "dice": 0.4, "image_acc": 1.0, "image_auroc": math.nan, "pixel_auroc": 0.5},
        "b": {"iou": 0.4, "dice": 0.6, "image_acc": 0.5, "image_auroc": 0.8, "pixel_auroc": 0.7},
    }
    mean = mean_over_categories(per_cat)
    assert mean["iou"] == pytest.approx(0.3)
    assert mean["image_auroc"] == pytest.approx(0.8)


def _hist(pairs):
    """A PixelHistogram from (probabilities, mask) pairs of hand-made arrays."""
    hist = PixelHistogram()
    for prob, target in pairs:
        hist.add(np.asarray(prob, dtype=float), np.asarray(target, dtype=bool))
    return hist


def test_aupro_is_one_for_a_perfect_map_and_nan_without_regions():
    target = np.zeros((4, 4), dtype=bool)
    target[1:3, 1:3] = True
    assert _hist([(target.astype(float), target)]).aupro() == pytest.approx(1.0)
    assert math.isnan(_hist([(np.zeros((4, 4)), np.zeros((4, 4), dtype=bool))]).aupro())  # empty mask


def test_aupro_of_a_region_half_found_hand_computed():
    # One region of two pixels (probabilities 1 and 0), ten normal pixels at 0. For every threshold
    # in (0, 1]: FPR 0, PRO 0.5; at threshold 0 everything is predicted: FPR 1, PRO 1. The curve
    # (0,0) -> (0,0.5) -> (1,1) is 0.65 at FPR 0.3, so the area to 0.3 is (0.5 + 0.65) / 2 * 0.3,
    # and divided by 0.3: 0.575.
    prob = np.array([[1.0, 0.0] + [0.0] * 10])
    target = np.array([[True, True] + [False] * 10])
    assert _hist([(prob, target)]).aupro() == pytest.approx(0.575)


def test_aupro_weighs_regions_equally_whatever_their_size():
    # A large region fully found and a small one missed: PRO is 0.5 at low FPR (a pixel average
    # would be near 1). Both images' normal pixels are at 0, so FPR stays 0 until threshold 0.
    big = np.zeros((10, 10), dtype=bool)
    big[0:8, 0:8] = True
    small = np.zeros((10, 10), dtype=bool)
    small[9, 9] = True
    hist = _hist([(big.astype(float), big), (np.zeros((10, 10)), small)])
    assert len(hist.regions) == 2
    assert hist.aupro() == pytest.approx(0.575)  # the same curve as the half-found region above


def test_regions_are_eight_connected():
    target = np.zeros((5, 5), dtype=bool)
    target[1, 1] = target[2, 2] = True  # diagonal neighbours: one region
    target[4, 4] = True  # apart: a second one
    assert len(_hist([(np.zeros((5, 5)), target)]).regions) == 2


def test_pooled_iou_counts_every_test_image_and_differs_from_the_per_image_mean(tmp_path):
    # Image a: a 4-pixel defect, half found (TP 2, FN 2): IoU 0.5. Image b: a 4-pixel defect fully
    # found (TP 4): IoU 1. Image c, normal: 2 false positives. Per-image mean over the defective
    # images 0.75; pooled TP 6, FP 2, FN 2: IoU 0.6, Dice 12 / 16.
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[0:2, 0:2] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    test = pd.DataFrame({
        "category": ["c"] * 3, "defect_type": ["hole", "hole", "good"], "image": ["a.png", "b.png", "c.png"],
        "mask": [str(tmp_path / "m.png")] * 2 + [""], "label": [1, 1, 0], "height": [4] * 3, "width": [4] * 3,
    })
    probs = np.zeros((3, 4, 4), dtype=np.uint8)
    probs[0, 0, 0:2] = 255
    probs[1, 0:2, 0:2] = 255
    probs[2, 3, 2:4] = 200
    summary, rows = evaluate_category(probs, test, threshold=0.5)
    assert summary["iou"] == pytest.approx(0.75)
    assert summary["iou_pooled"] == pytest.approx(0.6)
    assert summary["dice_pooled"] == pytest.approx(12 / 16)
    assert rows["max_probability"].tolist() == pytest.approx([1.0, 1.0, 200 / 255])
    assert summary["image_auroc_max"] == pytest.approx(1.0)
    # By area the normal image (2 px) ties the half-found one (2 px) and is below b (4 px): AUROC 0.75.
    assert summary["image_auroc"] == pytest.approx(0.75)


def test_pooled_iou_is_nan_without_defect_pixels(tmp_path):
    test = pd.DataFrame({"category": ["c"], "defect_type": ["good"], "image": ["a.png"], "mask": [""],
                         "label": [0], "height": [4], "width": [4]})
    summary, _ = evaluate_category(np.zeros((1, 4, 4), dtype=np.uint8), test, threshold=0.5)
    assert math.isnan(summary["iou_pooled"]) and math.isnan(summary["aupro"]) and math.isnan(summary["iou"])


def test_evaluate_category_at_the_calibrated_threshold(tmp_path):
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[2:6, 2:6] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    test = pd.DataFrame({"category": ["c", "c"], "defect_type": ["hole", "good"], "image": ["a.png", "b.png"],
                         "mask": [str(tmp_path / "m.png"), ""], "label": [1, 0], "height": [8, 8], "width": [8, 8]})
    probs = np.zeros((2, 8, 8), dtype=np.uint8)
    probs[0, 2:6, 2:4] = 255  # half the defect, sure
    probs[0, 2:6, 4:6] = 76  # the other half at p = 0.3
    probs[1, 0, 0] = 25  # one normal pixel at p = 0.1
    summary, rows = evaluate_category(probs, test, threshold=0.5)
    assert summary["iou"] == pytest.approx(0.5)
    assert all(math.isnan(summary[k]) for k in ("iou_cal", "dice_cal", "iou_pooled_cal", "image_acc_cal", "threshold_cal"))
    at_half, _ = evaluate_category(probs, test, threshold=0.5, calibrated=0.5)
    assert {k: at_half[f"{k}_cal"] for k in ("iou", "dice", "iou_pooled", "image_acc")} == \
        {k: summary[k] for k in ("iou", "dice", "iou_pooled", "image_acc")}
    low, rows = evaluate_category(probs, test, threshold=0.5, calibrated=0.2)  # finds the whole defect
    assert low["iou_cal"] == 1.0 and low["iou_pooled_cal"] == 1.0 and low["image_acc_cal"] == 1.0
    assert low["iou"] == summary["iou"] and low["threshold_cal"] == 0.2
    lower, _ = evaluate_category(probs, test, threshold=0.5, calibrated=0.05)  # the normal pixel too
    assert lower["iou_cal"] == 1.0 and lower["iou_pooled_cal"] == pytest.approx(16 / 17) and lower["image_acc_cal"] == 0.5
    assert rows["iou_cal"].iloc[0] == 1.0 and rows["anomalous_cal"].tolist() == [1, 0]


def test_metrics_per_defect_type_split_into_types_seen_in_the_shots_and_not(tmp_path):
    # hole (seen in the shots): found exactly. crack (not seen): missed at 0.5 (IoU 0), its pixels at
    # 0.2, above every background pixel but one pixel of the normal image at 0.4.
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[0:2, 0:2] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    test = pd.DataFrame({
        "category": ["c"] * 3, "defect_type": ["hole", "crack", "good"], "image": ["a.png", "b.png", "c.png"],
        "mask": [str(tmp_path / "m.png")] * 2 + [""], "label": [1, 1, 0], "height": [4] * 3, "width": [4] * 3,
    })
    probs = np.zeros((3, 4, 4), dtype=np.uint8)
    probs[0, 0:2, 0:2] = 255
    probs[1, 0:2, 0:2] = 51
    probs[2, 3, 3] = 102
    _, rows = evaluate_category(probs, test, threshold=0.5)
    out = by_defect_type(probs, test, rows, seen={"hole"})
    assert set(out) == {"hole", "crack", "seen", "unseen"}
    assert out["hole"]["seen"] == 1 and out["crack"]["seen"] == 0
    assert out["seen"]["iou"] == 1.0 and out["seen"]["pixel_auroc"] == 1.0 and out["seen"]["aupro"] == 1.0
    assert out["unseen"]["iou"] == 0.0
    # crack's 4 pixels at level 51 against 28 background pixels at 0 (12 of b, 15 of c) and 1 at 102
    assert out["unseen"]["pixel_auroc"] == pytest.approx(27 / 28)
    assert out["crack"] == {**out["unseen"], "seen": 0}
    assert out["unseen"]["n"] == 1
    # every type seen: no unseen group
    assert "unseen" not in by_defect_type(probs, test, rows, seen={"hole", "crack"})


def test_the_calibrated_image_decision_counts_false_alarms_and_misses_by_area(tmp_path):
    """Two normal test images (one with a speck of 1 pixel, one with 6) and two defective ones (a big
    and a small predicted area): at min_area 2/64 the speck passes, the 6-pixel normal is a false alarm
    and the small defect (1 pixel) is missed."""
    from fsds.evaluation.metrics import evaluate_category

    rows, probs = [], []
    for i, (label, pixels) in enumerate([(0, 1), (0, 6), (1, 12), (1, 1)]):
        mask = np.zeros((8, 8), dtype=np.uint8)
        prob = np.zeros((8, 8), dtype=np.uint8)
        prob.flat[:pixels] = 255
        if label:
            mask.flat[:pixels] = 255
            Image.fromarray(mask).save(tmp_path / f"m{i}.png")
        rows.append({"category": "c", "defect_type": "good" if not label else "x", "image": f"i{i}.png",
                     "mask": str(tmp_path / f"m{i}.png") if label else "", "label": label, "height": 8, "width": 8})
        probs.append(prob)
    summary, per_image = evaluate_category(np.stack(probs), pd.DataFrame(rows), 0.5, 0.5, min_area=2 / 64)
    assert per_image["anomalous_cal"].tolist() == [0, 1, 1, 0]
    assert summary["image_fpr_cal"] == 0.5 and summary["image_miss_cal"] == 0.5
    summary, per_image = evaluate_category(np.stack(probs), pd.DataFrame(rows), 0.5, 0.5)  # any pixel
    assert per_image["anomalous_cal"].tolist() == [1, 1, 1, 1] and summary["image_fpr_cal"] == 1.0
