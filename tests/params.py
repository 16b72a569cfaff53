"""Configs for tests: the repository's params.yaml with a few values changed.

params.yaml is the one source of every value (a missing key is an error), so a test states only
what it changes. ``train.image_size`` / ``train.iterations`` / ``train.lr`` go to the chosen profile; a
``variants`` override replaces the whole mapping and, unless ``methods`` is given, runs them all.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import yaml

from fsds.config import PROFILE_KEYS, Config, Variant, parse_config

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(base.get(key) or {}, value) if isinstance(value, dict) and key != "variants" else value
    return out


def params_with(overrides: dict[str, Any]) -> dict[str, Any]:
    """The raw params.yaml mapping with ``overrides`` merged in (see the module docstring)."""
    raw = yaml.safe_load(PARAMS.read_text())
    overrides = copy.deepcopy(overrides)
    train = overrides.get("train")
    if isinstance(train, dict):
        profile = overrides.get("profile", raw["profile"])
        for key in PROFILE_KEYS:
            if key in train:
                overrides.setdefault("profiles", {}).setdefault(profile, {})[key] = train.pop(key)
    if "variants" in overrides and "methods" not in overrides and isinstance(overrides["variants"], dict):
        overrides["methods"] = list(overrides["variants"])
    return merge(raw, overrides)


def make_config(overrides: dict[str, Any] | None = None) -> Config:
    """params.yaml with ``overrides``, parsed and validated."""
    return parse_config(params_with(overrides or {}))


def recipe_for(variant: Variant | None = None, cfg: Config | None = None, arch: str | None = None,
               pretrained: bool = False, **fields: Any):
    """The :class:`~fsds.engine.recipe.Recipe` that ``cfg`` (default: params.yaml) resolves for
    ``variant`` (default: B, no NBR or CaP) on network ``arch`` (default: its own, else
    ``model.arch``), as :func:`fsds.pipeline.plan.recipe` does for a named variant; ``fields``
    replace single values."""
    from fsds.pipeline import plan

    cfg = cfg or make_config()
    variant = variant or Variant("none", "none")
    recipe = plan.make_recipe(cfg, variant, arch or variant.arch or cfg.model.arch, pretrained)
    return dataclasses.replace(recipe, **fields)


def train(cfg: Config, variant: Variant, data, *, arch: str | None = None, **kwargs: Any):
    """:func:`fsds.engine.training.train_segmenter` as the train stage calls it: ``variant`` under
    ``cfg``'s training params on its runtime (``kwargs``: seed, encoder_state, probe, ...)."""
    from fsds.engine.training import train_segmenter
    from fsds.pipeline import plan

    recipe = recipe_for(variant, cfg, arch, pretrained=kwargs.get("encoder_state") is not None)
    return train_segmenter(recipe, plan.train_runtime(cfg), data, **kwargs)
