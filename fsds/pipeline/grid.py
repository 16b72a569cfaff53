"""Experiment grids run by DVC itself: one ``dvc exp run --queue`` per (shot, seed) cell.

A grid file (``grids/*.yaml``) names the cells and the params every cell sets::

    name: mt                      # experiment names are <name>-k<shot>-s<seed>
    shots: [1, 5]
    seeds: [0, 1, 2]
    set:                          # dvc exp run -S key=value for every cell
      dataset: magnetic_tile
      profile: quick
      methods: [B, B_NBR, B_NBR_CaP]

This module reads and checks grid files; :mod:`fsds.pipeline.grid_queue` runs the cells through
DVC's queue, and :mod:`fsds.pipeline.grid_report` archives the finished cells and writes the report.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from fsds.config import parse_config
from fsds.errors import ConfigError
from fsds.evaluation.tables import check_variants
from fsds.pipeline import plan

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class Grid:
    name: str
    shots: tuple[int, ...]
    seeds: tuple[int, ...]
    set: Mapping[str, Any] = field(default_factory=dict)
    archive: str = ""  # folder of the finished cells' results, in the repository; default reports/grids/<name>

    def archive_dir(self, repo: str | Path = ".") -> Path:
        return Path(repo) / (self.archive or f"reports/grids/{self.name}")

    def cells(self) -> list[tuple[str, int, int]]:
        """``(experiment name, shot, seed)`` of every cell, shots outer."""
        return [(f"{self.name}-k{k}-s{s}", k, s) for k in self.shots for s in self.seeds]

    def overrides(self, shot: int, seed: int) -> list[str]:
        """The ``-S`` arguments of one cell."""
        values = {**self.set, "shot": shot, "seed": seed}
        return [f"{key}={_hydra(value)}" for key, value in values.items()]


def _hydra(value: Any) -> str:
    """A value in the override syntax of ``dvc exp run -S`` (lists as ``[a,b]``)."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def load_grid(path: str | Path, params: str | Path = "params.yaml") -> Grid:
    """Read and check a grid file: every cell's params must pass :func:`fsds.config.parse_config` and
    :func:`fsds.pipeline.plan.check`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"grid file {path} not found")
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(raw) - {"name", "shots", "seeds", "set", "archive"})
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; allowed: name, shots, seeds, set, archive")
    name = str(raw.get("name", ""))
    if not NAME.match(name):
        raise ConfigError(f"{path}: name must be letters, digits, '-' or '_', got {name!r}")
    for key in ("shots", "seeds"):
        values = raw.get(key)
        if not isinstance(values, list) or not values or not all(isinstance(v, int) and v >= 0 for v in values):
            raise ConfigError(f"{path}: {key} must be a non-empty list of integers, got {values!r}")
    archive = raw.get("archive", "")
    if not isinstance(archive, str) or Path(archive).is_absolute() or ".." in Path(archive).parts:
        raise ConfigError(f"{path}: archive must be a folder inside the repository, got {archive!r}")
    grid = Grid(name, tuple(raw["shots"]), tuple(raw["seeds"]), dict(raw.get("set") or {}), archive)
    base = yaml.safe_load(Path(params).read_text()) or {}
    for _, shot, seed in grid.cells():
        cfg = parse_config(apply_overrides(base, {**grid.set, "shot": shot, "seed": seed}))
        plan.check(cfg, cfg.methods)
        check_variants(cfg.variants, cfg.methods)
    return grid


def apply_overrides(params: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` with dotted keys (``train.precision``) set, as ``dvc exp run -S`` would."""
    out = json.loads(json.dumps(params))
    for key, value in overrides.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out
