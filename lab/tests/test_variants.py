"""lab/variants.yaml: the lab's own variants and profiles join params.yaml for the lab's tools."""

from __future__ import annotations

import json

import pytest
import yaml

from fsds.config import ConfigError, parse_config
from fsds.evaluation.tables import check_variants
from fsds.pipeline import plan
from fsds.pipeline.grid import apply_overrides
from lab.variants import LAB_VARIANTS, lab_params
from tests.conftest import REPO

PARAMS = REPO / "params.yaml"


def test_lab_variants_and_profiles_parse_beside_params_yaml():
    lab = yaml.safe_load(LAB_VARIANTS.read_text())
    cfg = parse_config(lab_params(PARAMS))
    assert set(lab["variants"]) <= set(cfg.variants) and set(lab["profiles"]) <= set(cfg.profiles)
    plan.check(cfg, list(cfg.variants))  # every network is in the registry
    check_variants(cfg.variants, cfg.variants)  # every paper id a row of the paper
    # pseudo-defects and the Lite2 network left fsds on 2026-12-06, and their variants with them
    assert not {"L0_B_Syn", "L0_B_NBR_CaP_Syn", "L2_B", "L2_B_NBR_CaP"} & set(cfg.variants)
    # what the grids' rewrite relies on: the old cpu profile is fast at the paper's rate
    assert cfg.profiles["cpu"] == parse_config(apply_overrides(lab_params(PARAMS), {"profiles.fast.lr": 1e-4})).profiles["fast"]


def test_a_name_in_both_files_is_refused(tmp_path):
    raw = yaml.safe_load(PARAMS.read_text())
    raw["profiles"]["fast_crops"] = raw["profiles"]["fast"]
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="profiles.fast_crops: defined in .* and in .*variants.yaml"):
        lab_params(params)


def test_a_sweep_trains_a_lab_variant_at_a_lab_profile(tiny_root, tmp_path, monkeypatch):
    """`python -m lab.sweep ... --variant L0_B_Dice --profiles fast_crops`: the variant and profile that
    left params.yaml (training replaced by a stub that records what it was asked)."""
    import lab.sweep as sweep

    asked = []

    def run_one(cfg, table, category, variant, *rest):
        asked.append((cfg, variant))
        return {"iou": 0.5, "train_seconds": 1.0, "n_shots": 1}

    monkeypatch.setattr(sweep, "run_one", run_one)
    sweep.main([str(tiny_root), "fabric", "--variant", "L0_B_Dice", "--profiles", "fast_crops", "--seeds", "0",
                "--params", str(PARAMS), "--out", str(tmp_path / "sweep.jsonl"), "--metrics", "iou",
                "-S", "split.calibration_normals=1"])
    ((cfg, variant),) = asked
    assert variant == "L0_B_Dice" and cfg.profile == "fast_crops" and (cfg.train.image_size, cfg.train.working_size) == (128, 512)
    recipe = plan.recipe(cfg, variant, pretrained=True)
    assert (recipe.arch, recipe.seg_loss, recipe.nbr, recipe.cap) == ("lite0_unet", "bce_dice", "none", "none")
