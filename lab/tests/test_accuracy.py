"""The fast-path accuracy check of issue 5: the rule and its report."""

import pandas as pd
import pytest

from lab.accuracy import compare, report


def _frame(ious, method="B_NBR_CaP"):
    rows = []
    for seed, iou in enumerate(ious):
        for category, offset in (("fabric", 0.01), ("washer", -0.01)):  # category means give iou back
            rows.append({"method": method, "shot": 1, "seed": seed, "category": category, "iou": iou + offset,
                         "dice": iou + offset, "image_acc": 0.5, "image_auroc": 0.6, "pixel_auroc": 0.7})
    return pd.DataFrame(rows)


def test_fast_mean_within_the_reference_spread_holds():
    reference = _frame([0.10, 0.12, 0.14])  # mean 0.12, std 0.02
    table, ok = compare(reference, _frame([0.11, 0.13, 0.15]))  # mean 0.13: within
    assert ok and table["within spread"].tolist() == [True]
    assert table["iou fp32"].item() == pytest.approx(0.12) and table["iou fp32 std"].item() == pytest.approx(0.02)
    text = report(reference, _frame([0.11, 0.13, 0.15]), table, ok, "python -m lab.accuracy a b c")
    assert "**Verdict: holds.**" in text and "| B_NBR_CaP | 1 | 0.1200 (0.0200) | 0.1300 | +0.0100 | yes |" in text


def test_fast_mean_outside_the_reference_spread_fails():
    table, ok = compare(_frame([0.10, 0.12, 0.14]), _frame([0.05, 0.06, 0.07]))
    assert not ok and table["within spread"].tolist() == [False]


def test_nothing_to_compare_is_an_error():
    with pytest.raises(RuntimeError, match="at least two reference seeds"):
        compare(_frame([0.1]), _frame([0.1]))
