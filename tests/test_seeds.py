import json

import pytest

from fsds.seeds import collect_runs, gain_markdown, seeds_markdown, timing_markdown


def _record(folder, shot, seed, iou_b, iou_c):
    figures = lambda iou: {"mean": {"iou": iou, "dice": iou + 0.1, "image_acc": 0.5, "image_auroc": 0.6, "pixel_auroc": 0.7}}
    (folder / f"k{shot}_s{seed}.json").write_text(
        json.dumps({"shot": shot, "seed": seed, "wall_seconds": 120, "metrics": {"B": figures(iou_b), "B_NBR_CaP": figures(iou_c)},
                    "train_seconds": {"B": 10.0, "B_NBR_CaP": 30.0}})
    )


def test_mean_std_and_paired_gains(tmp_path):
    _record(tmp_path, 1, 0, 0.10, 0.20)
    _record(tmp_path, 1, 1, 0.20, 0.25)
    _record(tmp_path, 1, 2, 0.30, 0.28)
    runs = collect_runs(tmp_path)
    assert len(runs) == 6
    table = seeds_markdown(runs)
    assert "| B | 0.2000 (0.1000) |" in table
    assert "| B+NBR+CaP | 0.2433 (0.0404) |" in table
    gains = gain_markdown(runs)
    # per-seed differences: +0.10, +0.05, -0.02 -> mean +0.0433, std 0.0603; 2 of 3 seeds better
    assert "| B+NBR+CaP | +0.0433 (0.0603) | +0.0433 (0.0603) | 2/3 |" in gains
    assert "| 1 | 0 | 2.0 | 10 | 30 |" in timing_markdown(runs)


def test_no_records_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no run records"):
        collect_runs(tmp_path)
