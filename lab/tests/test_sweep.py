"""lab.sweep: one training per (profile, shot, seed), scored like the pipeline."""

from __future__ import annotations

import json

import pytest

from fsds.errors import ConfigError, InputError
from lab.sweep import main
from tests.params import params_with


def test_a_sweep_trains_each_profile_and_seed_and_summarises_them(tiny_root, tmp_path, capsys):
    raw = params_with({"profiles": {"a": {"image_size": 32, "iterations": 2, "lr": 1e-4},
                                    "b": {"image_size": 32, "iterations": 2, "lr": 1e-3}}})
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(raw))  # JSON is YAML
    out = tmp_path / "sweep.jsonl"
    main([str(tiny_root), "fabric", "--variant", "B", "--profiles", "a", "b", "--seeds", "0", "1",
          "--params", str(params), "--out", str(out), "-S", "split.unit=category", "-S", "split.calibration_normals=2"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["profile"], r["lr"], r["seed"]) for r in rows] == [("a", 1e-4, 0), ("b", 1e-3, 0), ("a", 1e-4, 1),
                                                                 ("b", 1e-3, 1)]
    assert all(r["n_shots"] == 1 for r in rows)  # split.unit=category: one shot for the whole category
    assert all(0 <= r["iou"] <= 1 and 0 <= r["pixel_auroc"] <= 1 for r in rows)
    assert all(0 < r["threshold_cal"] < 1 and 0 <= r["iou_cal"] <= 1 for r in rows)  # calibrated on 2 held-out normals
    printed = capsys.readouterr().out
    run = "fabric split.unit=category split.calibration_normals=2 2 normals held out"  # category, overrides, held-out normals
    assert f"| {run} | 1 | B a | 0.0001 | 2 |" in printed and f"| {run} | 1 | B b | 0.001 | 2 |" in printed
    difference = [line for line in printed.splitlines() if "| B b - B a |" in line]
    assert len(difference) == 1
    iou_gap = (rows[1]["iou"] - rows[0]["iou"] + rows[3]["iou"] - rows[2]["iou"]) / 2  # per seed, then mean
    assert difference[0].split("|")[5].strip().startswith(f"{iou_gap:+.4f}")
    main(["--summarize", str(out)])
    assert capsys.readouterr().out.strip() == printed.strip()
    for r in rows:  # one shot for the category: one defect type seen, the others not
        types = {name: m for name, m in r["by_type"].items() if name not in ("seen", "unseen")}
        assert sorted(m["seen"] for m in types.values()) == [0] * (len(types) - 1) + [1]
        assert r["unseen_iou"] == r["by_type"]["unseen"]["iou"] and 0 <= r["unseen_aupro"] <= 1
    main(["--summarize", str(out), "--by-type"])
    per_type = [line for line in capsys.readouterr().out.splitlines() if "| B a |" in line]
    shown = {(name, "seen" if m["seen"] else "unseen") for r in rows if r["profile"] == "a"
             for name, m in r["by_type"].items() if name not in ("seen", "unseen")}
    assert {(cells[4].strip(), cells[5].strip()) for cells in (line.split("|") for line in per_type)} == shown
    out.write_text(out.read_text() + out.read_text().splitlines()[0] + "\n")  # one run listed twice
    with pytest.raises(InputError, match="profile a, seed 0 was run twice"):
        main(["--summarize", str(out)])


def test_variants_are_trained_on_the_same_splits_and_paired(tiny_root, tmp_path, capsys):
    raw = params_with({"profiles": {"a": {"image_size": 32, "iterations": 2, "lr": 1e-3}},
                       "split": {"calibration_normals": 1}})
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(raw))
    out = tmp_path / "sweep.jsonl"
    main([str(tiny_root), "washer", "--variant", "B", "B_NBR", "--profiles", "a", "--seeds", "0", "1",
          "--params", str(params), "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["variant"], r["seed"]) for r in rows] == [("B", 0), ("B_NBR", 0), ("B", 1), ("B_NBR", 1)]
    difference = [line for line in capsys.readouterr().out.splitlines() if "| B_NBR a - B a |" in line]
    iou_gap = (rows[1]["iou"] - rows[0]["iou"] + rows[3]["iou"] - rows[2]["iou"]) / 2
    assert len(difference) == 1 and difference[0].split("|")[5].strip().startswith(f"{iou_gap:+.4f}")
    main(["--summarize", str(out), "--base", "B_NBR a"])  # the differences from another setting
    difference = [line for line in capsys.readouterr().out.splitlines() if "| B a - B_NBR a |" in line]
    assert len(difference) == 1 and difference[0].split("|")[5].strip().startswith(f"{-iou_gap:+.4f}")


def test_a_bad_override_or_missing_argument_stops_with_usage(tiny_root, capsys):
    with pytest.raises(SystemExit):
        main([str(tiny_root), "fabric", "--variant", "B", "--profiles", "fast", "-S", "split.unit"])
    assert "-S split.unit: expected KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tiny_root), "fabric", "--profiles", "fast"])
    assert "--variant" in capsys.readouterr().err


def test_a_sweep_with_zero_shots_is_refused_before_training(tiny_root, tmp_path, monkeypatch):
    """Every method trains on K >= 1 shots (pseudo-defects, which trained on none, left on 2026-12-06)."""
    import lab.sweep as sweep

    monkeypatch.setattr(sweep, "run_one", lambda *args: pytest.fail("nothing trains at 0 shots"))
    params, out = tmp_path / "params.yaml", tmp_path / "sweep.jsonl"
    params.write_text(json.dumps(params_with({})))
    with pytest.raises(ConfigError, match=r"^shot: must be >= 1 \(K annotated defect images per defect type\), got 0"):
        main([str(tiny_root), "washer", "--variant", "B", "--profiles", "fast", "--shots", "0", "--seeds", "0",
              "--params", str(params), "--out", str(out)])
    assert not out.exists()


def test_pair_overrides_pairs_runs_made_with_and_without_an_override(tmp_path, capsys):
    """Hand-made lines: without --pair-overrides an override is its own group (nothing to pair);
    with it, the override names the setting and its per-seed difference from the base is printed."""
    line = {"category": "fabric", "variant": "B", "profile": "fast", "lr": 1e-3, "shot": 1, "calibration_normals": 0,
            "iou": 0.0, "train_seconds": 1.0}
    lines = [{**line, "seed": 0, "overrides": "", "iou": 0.10}, {**line, "seed": 1, "overrides": "", "iou": 0.20},
             {**line, "seed": 0, "overrides": "train.augment=false", "iou": 0.25},
             {**line, "seed": 1, "overrides": "train.augment=false", "iou": 0.30}]
    out = tmp_path / "sweep.jsonl"
    out.write_text("".join(json.dumps(x) + "\n" for x in lines))
    main(["--summarize", str(out), "--metrics", "iou"])
    assert " - " not in capsys.readouterr().out  # two groups of one setting each
    main(["--summarize", str(out), "--metrics", "iou", "--pair-overrides"])
    printed = capsys.readouterr().out
    assert "| fabric | 1 | B fast train.augment=false | 0.001 | 2 | 0.2750 (0.0354) |" in printed
    difference = [x for x in printed.splitlines() if "| B fast train.augment=false - B fast |" in x]
    assert len(difference) == 1 and difference[0].split("|")[5].strip() == "+0.1250 (0.0354)"  # 0.15 and 0.10


def test_memory_variants_build_the_memory_once_and_share_the_trained_segmenter(tiny_root, tmp_path, monkeypatch):
    """B, the memory alone, B fused with it and B guided by it: two trainings (the fused variant reuses
    B's network; the guided one trains its own), one memory, and the fused model differs from both."""
    from lab import sweep

    raw = params_with({"profiles": {"a": {"image_size": 32, "iterations": 2, "lr": 1e-3}},
                       "memory": {"strides": [8, 16], "bank_size": 50},
                       "variants": {"B": {"arch": "lite0_unet", "encoder_weights": "imagenet", "nbr": "none", "cap": "none"},
                                    "M": {"arch": "lite0_unet", "encoder_weights": "imagenet", "nbr": "none", "cap": "none",
                                          "memory": "alone"},
                                    "BM": {"arch": "lite0_unet", "encoder_weights": "imagenet", "nbr": "none", "cap": "none",
                                           "memory": "late"},
                                    "BG": {"arch": "lite0_unet", "encoder_weights": "imagenet", "nbr": "none", "cap": "none",
                                           "memory": "input"}}})
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(raw))
    trainings, memories = [], []
    train, build = sweep.train_segmenter, sweep.category_memory
    monkeypatch.setattr(sweep, "train_segmenter", lambda *a, **k: trainings.append(1) or train(*a, **k))
    monkeypatch.setattr(sweep, "category_memory", lambda *a, **k: memories.append(1) or build(*a, **k))
    out = tmp_path / "sweep.jsonl"
    main([str(tiny_root), "fabric", "--variant", "B", "M", "BM", "BG", "--profiles", "a", "--seeds", "0",
          "--params", str(params), "--out", str(out), "-S", "split.calibration_normals=2", "--gates", "0", "inf"])
    rows = {r["variant"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(trainings) == 2 and len(memories) == 1
    assert set(rows) == {"B", "M", "BM", "BG", "BM@gate0.0", "BM@gateinf"} and all(0 <= r["pixel_auroc"] <= 1 for r in rows.values())
    assert rows["BM@gate0.0"]["pixel_auroc"] == rows["M"]["pixel_auroc"]  # gate 0: the memory alone
    assert 0 <= rows["BM"]["gate"] and rows["BM@gateinf"]["gate"] == float("inf")
    assert rows["BM"]["pixel_auroc"] != rows["B"]["pixel_auroc"]  # fused: the memory at least (its gate may be 0)
