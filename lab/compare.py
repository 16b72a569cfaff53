"""Several grids in one report: networks and methods side by side, per dataset and split rule.

    python -m lab.compare lab/findings/pretrained.md lab/grids/pretrained/*.yaml lab/grids/magnetic_tile_cpu.yaml

The finished cells of every grid (read from their archives, see :mod:`fsds.pipeline.grid_report`) are
grouped by setting: dataset, categories, split rule, profile and precision. For each setting and
shot the report gives every metric as mean (sample std) over seeds, each seed's value being a mean
over categories; each model's training wall time; paired differences (:data:`PAIRS`: per seed,
then mean (std) over the seeds both methods ran), which is how a gain of NBR+CaP over B is read
without the seed-to-seed spread of the networks; the CPU every cell ran on; and on MVTec AD the
paper's per-category numbers of the same categories below ours. A grid with no finished cell yet
is listed as such; a method that two grids of one setting both ran is an error.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from fsds.config import Config, parse_config
from fsds.errors import ConfigError, RunError, run_stage
from fsds.evaluation import paper as published
from fsds.evaluation.metrics import HEADERS
from fsds.evaluation.tables import category_means, markdown_table, mean_std, present_metrics
from fsds.io import write_text
from fsds.pipeline import plan
from fsds.pipeline.grid import Grid, apply_overrides, load_grid
from fsds.pipeline.grid_report import collect_results
from lab.variants import lab_params

# (reference, method): the paired differences the report shows, where both were run (grids run
# params.yaml's variants only)
PAIRS = (
    ("B", "B_NBR"), ("B", "B_NBR_CaP"),
    ("L0_B", "L0_B_NBR"), ("L0_B", "L0_B_NBR_CaP"),
    ("B", "L0_B"), ("B_NBR_CaP", "L0_B_NBR_CaP"),
)
GAIN_METRICS = ("iou", "iou_pooled", "aupro", "pixel_auroc", "image_auroc_max")
PAPER_METHODS = {"AlbuNet": "paper: B (AlbuNet-34, ImageNet)", "B_NBR_CaP": "paper: B+NBR+CaP (ImageNet)"}


@dataclass
class Results:
    """The finished cells of one grid: the results frame, ``{cell: cell.json}`` and the config of its first cell."""

    grid: Grid
    frame: pd.DataFrame | None
    cells: dict[str, dict[str, Any]]
    cfg: Config


def grid_config(grid: Grid, base: Mapping[str, Any]) -> Config:
    """The config of the grid's first cell (what every cell shares besides shot and seed)."""
    return parse_config(apply_overrides(base, {**grid.set, "shot": grid.shots[0], "seed": grid.seeds[0]}))


def setting(cfg: Config) -> str:
    """The title of the setting a grid measures: what its cells share beyond shot and seed."""
    categories = "all categories" if cfg.data.categories == "all" else ", ".join(cfg.data.categories)
    name = {"mvtec": "MVTec AD", "magnetic_tile": "Magnetic Tile", "synthetic": "embedded synthetic data",
            "folder": f"folder {cfg.data.root}"}[cfg.dataset]
    if cfg.dataset == "mvtec":
        name += f" {categories}"
    rule = {"defect_type": "K per defect type (the paper's text)", "category": "K per category (the paper's Table I)"}
    return (f"{name}, {rule[cfg.split.unit]}; profile `{cfg.profile}` ({plan.input_description(cfg)}, "
            f"{cfg.train.iterations} iterations, Adam {cfg.train.lr:g}), precision {cfg.train.precision}")


def load_results(paths: Sequence[str | Path], repo: str | Path = ".", params: str | Path = "params.yaml") -> list[Results]:
    base = lab_params(params)
    out = []
    for path in paths:
        grid = load_grid(path, params)
        try:
            frame, cells = collect_results(grid, repo)
        except RunError:  # no finished cell yet
            frame, cells = None, {}
        out.append(Results(grid, frame, cells, grid_config(grid, base)))
    return out


def seconds_per_model(results: Sequence[Results]) -> pd.DataFrame:
    """``method, shot, seed, seconds``: each cell's training time of a method divided by its categories."""
    rows = []
    for r in results:
        if r.frame is None:
            continue
        for name, shot, seed in r.grid.cells():
            cell = r.cells.get(name)
            if cell is None:
                continue
            for method, total in (cell.get("train_seconds") or {}).items():
                n = r.frame[(r.frame["method"] == method) & (r.frame["shot"] == shot) & (r.frame["seed"] == seed)]["category"].nunique()
                if total is not None and n:
                    rows.append({"method": method, "shot": shot, "seed": seed, "seconds": total / n})
    return pd.DataFrame(rows, columns=["method", "shot", "seed", "seconds"])


def paired_gains(means: pd.DataFrame, pairs: Sequence[tuple[str, str]] = PAIRS,
                 metrics: Sequence[str] = GAIN_METRICS) -> pd.DataFrame:
    """Per (reference, method, shot) present in ``means`` (``category_means``): the per-seed
    difference method - reference of each metric, over the seeds both have: mean, sample std, n."""
    rows = []
    for ref, method in pairs:
        for shot in sorted(means["shot"].unique()):
            a = means[(means["method"] == ref) & (means["shot"] == shot)].set_index("seed")
            b = means[(means["method"] == method) & (means["shot"] == shot)].set_index("seed")
            seeds = sorted(set(a.index) & set(b.index))
            if not seeds:
                continue
            row: dict[str, Any] = {"reference": ref, "method": method, "shot": shot, "seeds": len(seeds)}
            for m in metrics:
                row[m] = [float(b.at[s, m] - a.at[s, m]) for s in seeds]
            rows.append(row)
    return pd.DataFrame(rows)


def _signed(values: Sequence[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:+.4f}"
    return f"{np.mean(values):+.4f} ({np.std(values, ddof=1):.4f})"


def paper_rows(cfg: Config, shot: int, columns: int) -> list[list[str]]:
    """The paper's per-category IoU and Dice of the setting's categories (mean of their means), the
    other columns empty; none where the paper has no number (or the dataset is not MVTec AD)."""
    if cfg.dataset != "mvtec" or cfg.data.categories == "all" or shot not in (1, 5):
        return []
    rows = []
    for method, label in PAPER_METHODS.items():
        values = {}
        for metric in ("iou", "dice"):
            cells = [published.PER_CATEGORY[metric][shot][method].get(c) for c in cfg.data.categories]
            if not cells or any(c is None for c in cells):
                break
            values[metric] = float(np.mean([c[0] for c in cells]))
        else:
            spread = [published.PER_CATEGORY["iou"][shot][method][c][1] for c in cfg.data.categories]
            row = [label, "5", f"{values['iou']:.4f} ({np.mean(spread):.4f})", f"{values['dice']:.4f}"]
            rows.append(row + ["-"] * (columns - len(row)))
    return rows


def setting_section(title: str, results: Sequence[Results]) -> list[str]:
    frames = [r.frame for r in results if r.frame is not None]
    cfg = results[0].cfg
    parts = [f"## {title}", ""]
    parts += ["Grids: " + "; ".join(f"`{r.grid.name}` ({len(r.cells)} of {len(r.grid.cells())} cells: "
                                      f"{', '.join(r.cfg.methods)})" for r in results), ""]
    if not frames:
        return parts + ["No finished cell yet.", ""]
    frame = pd.concat(frames, ignore_index=True)
    owners: dict[str, str] = {}
    for r in results:
        for m in (set(r.frame["method"]) if r.frame is not None else ()):
            if m in owners:
                raise ConfigError(f"{m} is run by grids {owners[m]} and {r.grid.name} of the same setting; "
                                  "keep it in one of them")
            owners[m] = r.grid.name
    labels = {m: r.cfg.label(m) for r in results for m in r.cfg.methods}
    means = category_means(frame)
    seconds = seconds_per_model(results)
    cpus = sorted({str(c.get("cpu", "not recorded")) for r in results for c in r.cells.values()})
    parts += [f"CPU of the cells: {'; '.join(cpus)}.", ""]
    shown = present_metrics(means)
    header = ["method", "seeds", *(HEADERS[m] for m in shown), "train s/model"]
    for shot in sorted(means["shot"].unique()):
        rows = []
        for method in dict.fromkeys(means["method"]):
            sel = means[(means["method"] == method) & (means["shot"] == shot)]
            if sel.empty:
                continue
            secs = seconds[(seconds["method"] == method) & (seconds["shot"] == shot)]["seconds"].tolist()
            rows.append([labels.get(method, method), str(len(sel)), *(mean_std(sel[m].tolist()) for m in shown),
                         mean_std(secs, digits=0)])
        rows += paper_rows(cfg, shot, len(header))
        parts += [f"### {shot}-shot", "", markdown_table(header, rows), ""]
    gains = paired_gains(means)
    if not gains.empty:
        parts += ["### Paired differences (method - reference, per seed; mean (std) over the seeds both ran)", "",
                  markdown_table(["method", "reference", "shot", "seeds", *(HEADERS[m] for m in GAIN_METRICS)],
                                 [[labels.get(g.method, g.method), labels.get(g.reference, g.reference), str(g.shot),
                                   str(g.seeds), *(_signed(getattr(g, m)) for m in GAIN_METRICS)]
                                  for g in gains.itertuples()]), ""]
    return parts


def compare_report(paths: Sequence[str | Path], report: str | Path, repo: str | Path = ".",
                   params: str | Path = "params.yaml", preamble: str = "") -> str:
    """Write the report of the grids in ``paths`` (see the module docstring); returns the markdown."""
    results = load_results(paths, repo, params)
    settings: dict[str, list[Results]] = {}
    shared: dict[str, tuple[Grid, dict[str, Any]]] = {}
    for r in results:
        title = setting(r.cfg)
        rest = {k: v for k, v in r.grid.set.items() if k != "methods"}  # all a cell sets but its methods
        if title in shared and shared[title][1] != rest:
            raise ConfigError(f"grids {shared[title][0].name} and {r.grid.name} share a setting ({title}) but set "
                              "different params besides methods; their methods were not trained alike, so they "
                              "cannot share a table: make their `set` equal but for `methods`")
        shared.setdefault(title, (r.grid, rest))
        settings.setdefault(title, []).append(r)
    below, cells, gap = published.dice_against_pooled_identity()
    parts = [preamble.rstrip(), ""] if preamble else []
    parts += ["Metrics: per-image IoU and Dice (means over a category's defective test images), pooled IoU and "
              "Dice (TP, FP, FN summed over all test images, normal ones included), image ACC and AUROC (the "
              "paper's predicted-area score), image AUROC from the highest pixel probability, pixel AUROC and "
              "AUPRO (per-region overlap up to 30% FPR, normalised). Threshold 0.5. `n/a`: a metric the cell's "
              "code did not compute yet.", "",
              "Which IoU the paper reports: pooled counts give Dice = 2 IoU / (1 + IoU) exactly, per-image means a "
              f"lower Dice. In {below} of the {cells} per-category cells of the paper's Tables II/III the Dice is "
              f"below 2 IoU / (1 + IoU) (median difference {gap:+.3f}), so its numbers are most likely per-image "
              "means, which is our `IoU` column (`fsds.evaluation.paper.dice_against_pooled_identity`).", ""]
    for title, group in settings.items():
        parts += setting_section(title, group)
    text = "\n".join(parts) + "\n"
    write_text(report, text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", help="markdown file to write")
    parser.add_argument("grids", nargs="+", help="grid files (YAML)")
    parser.add_argument("--params", default="params.yaml", help="the grids' params (their labels with lab/variants.yaml)")
    parser.add_argument("--preamble", default=None, help="a markdown file whose text opens the report")
    args = parser.parse_args()
    preamble = Path(args.preamble).read_text() if args.preamble else ""
    compare_report(args.grids, args.report, ".", args.params, preamble)


if __name__ == "__main__":
    run_stage(main)
