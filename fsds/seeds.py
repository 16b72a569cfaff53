"""Results over several seeds: collect finished runs and write mean (std) tables."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from fsds.config import variant_label
from fsds.metrics import METRIC_NAMES
from fsds.report import HEADERS, markdown_table as _table


def collect_runs(folder: str | Path) -> pd.DataFrame:
    """One row per (run, variant) from ``run.json`` records: shot, seed, variant, metrics, seconds."""
    rows = []
    for path in sorted(Path(folder).glob("*.json")):
        run = json.loads(path.read_text())
        for variant, figures in run["metrics"].items():
            rows.append(
                {
                    "shot": run["shot"],
                    "seed": run["seed"],
                    "variant": variant,
                    **{m: figures["mean"][m] for m in METRIC_NAMES},
                    "train_seconds": run.get("train_seconds", {}).get(variant),
                    "wall_seconds": run.get("wall_seconds"),
                }
            )
    if not rows:
        raise ValueError(f"no run records (*.json) in {folder}")
    return pd.DataFrame(rows)


def seeds_markdown(runs: pd.DataFrame, metrics: tuple[str, ...] = METRIC_NAMES) -> str:
    """Per shot: variant x metric as ``mean (std)`` over seeds (sample std, ddof=1)."""
    parts = []
    variants = list(dict.fromkeys(runs["variant"]))
    for shot, part in runs.groupby("shot"):
        seeds = sorted(part["seed"].unique())
        rows = []
        for variant in variants:
            v = part[part["variant"] == variant]
            cells = [f"{v[m].mean():.4f} ({v[m].std(ddof=1):.4f})" if len(v) > 1 else f"{v[m].mean():.4f}" for m in metrics]
            rows.append([variant_label(variant)] + cells)
        parts += [
            f"### {shot}-shot, seeds {', '.join(map(str, seeds))}",
            "",
            _table(["variant"] + [HEADERS[m] for m in metrics], rows),
            "",
        ]
    return "\n".join(parts)


def gain_markdown(runs: pd.DataFrame, baseline: str = "B", metrics: tuple[str, ...] = ("iou", "dice")) -> str:
    """Paired gains over the baseline: per seed ``variant - baseline``, then mean (std) over seeds."""
    parts = []
    for shot, part in runs.groupby("shot"):
        base = part[part["variant"] == baseline].set_index("seed")
        rows = []
        for variant in dict.fromkeys(part["variant"]):
            if variant == baseline:
                continue
            v = part[part["variant"] == variant].set_index("seed")
            cells = []
            for m in metrics:
                diff = (v[m] - base[m]).dropna()
                cells.append(f"{diff.mean():+.4f} ({diff.std(ddof=1):.4f})" if len(diff) > 1 else f"{diff.mean():+.4f}")
            wins = int(((v["iou"] - base["iou"]).dropna() > 0).sum())
            rows.append([variant_label(variant)] + cells + [f"{wins}/{len(base)}"])
        parts += [
            f"### {shot}-shot: gain over {variant_label(baseline)} (same seed, same split)",
            "",
            _table(["variant"] + [f"{HEADERS[m]} gain" for m in metrics] + ["seeds with higher IoU"], rows),
            "",
        ]
    return "\n".join(parts)


def timing_markdown(runs: pd.DataFrame) -> str:
    """Wall time of each run (the whole `dvc exp run`) and training time per variant."""
    per_run = runs.groupby(["shot", "seed"]).agg(wall_seconds=("wall_seconds", "first")).reset_index()
    train = runs.pivot_table(index=["shot", "seed"], columns="variant", values="train_seconds").reset_index()
    table = per_run.merge(train, on=["shot", "seed"])
    variants = [c for c in table.columns if c not in ("shot", "seed", "wall_seconds")]
    rows = [
        [str(r.shot), str(r.seed), f"{r.wall_seconds / 60:.1f}"] + [f"{getattr(r, v):.0f}" for v in variants]
        for r in table.itertuples()
    ]
    return _table(["shot", "seed", "run wall time (min)"] + [f"train {variant_label(v)} (s)" for v in variants], rows)
