"""The lab's own variants and profiles (``lab/variants.yaml``), added to params.yaml for the lab's tools.

Every lab tool that builds a :class:`~fsds.config.Config` reads params.yaml through :func:`lab_params`,
so ``python -m lab.sweep <root> <category> --variant L0_B_Dice --profiles fast_crops`` still runs after
those left params.yaml. Grid files (``lab/grids/``) do not: DVC runs them on params.yaml alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fsds.errors import ConfigError

LAB_VARIANTS = Path(__file__).with_name("variants.yaml")


def lab_params(params: str | Path = "params.yaml") -> dict[str, Any]:
    """params.yaml as a plain mapping with ``lab/variants.yaml``'s ``variants`` and ``profiles`` added,
    for :func:`fsds.pipeline.grid.apply_overrides` and :func:`fsds.config.parse_config`. A name both
    files define is an error (one source of each value)."""
    path = Path(params)
    if not path.is_file():
        raise ConfigError(f"params file {path} not found; run from the repository root")
    raw = yaml.safe_load(path.read_text()) or {}
    lab = yaml.safe_load(LAB_VARIANTS.read_text())
    for key in ("variants", "profiles"):
        if not isinstance(raw.get(key), dict):
            continue  # missing or malformed: parse_config says so
        both = sorted(set(raw[key]) & set(lab[key]))
        if both:
            raise ConfigError(f"{key}.{both[0]}: defined in {path} and in {LAB_VARIANTS}; keep it in one of them")
        raw[key] = {**raw[key], **lab[key]}
    return raw
