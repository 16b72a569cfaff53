"""Markdown tables in the layout of the paper's Tables II-VII, mean (std) over seeds.

Everything starts from a long results frame, one row per (method, shot, seed, category) with
the metrics of :data:`fsds.evaluation.metrics.METRIC_NAMES`. A single run is the one-seed case (no std);
an experiment grid concatenates the frames of its runs. Means over categories are taken per
seed first, then summarised over seeds, as the paper does. With ``paper=True`` (MVTec AD) the
published numbers of :mod:`fsds.evaluation.paper` stand beside ours.

Which table shows a method is the method's own metadata (params.yaml ``variants``): ``paper``, the
paper's method it reproduces, and ``family``, the network family whose ablation tables hold it.
The paper's own networks (no family) with a method of Tables II-IV fill those tables; each family
gets its Tables V-VII from its variants whose ``paper`` is a row there.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from fsds.config import Variant, variant_label
from fsds.errors import ConfigError
from fsds.evaluation import paper as published
from fsds.evaluation.metrics import CALIBRATED_NAMES, HEADERS, METRIC_NAMES

RESULT_KEYS = ["method", "shot", "seed", "category"]
NETWORK_TABLES = published.METHODS  # the paper methods of Tables II-IV, in the paper's column order
ABLATION_TITLES = {
    "V": "Table V: the proposed regularizations",
    "VI": "Table VI: lambda of eq. 6 against lambda = 1",
    "VII": "Table VII: NBR with cosine similarity against Euclidean distance",
}


def results_frame(metrics: Mapping[str, Mapping[str, Mapping[str, float]]], shot: int, seed: int) -> pd.DataFrame:
    """Rows of one run's ``metrics.json`` (``{method: {category | "mean": {metric: value}}}``)."""
    rows = [
        {"method": method, "shot": shot, "seed": seed, "category": category, **{m: values.get(m, math.nan) for m in METRIC_NAMES}}
        for method, per_category in metrics.items()
        for category, values in per_category.items()
        if category != "mean"
    ]
    return pd.DataFrame(rows, columns=RESULT_KEYS + list(METRIC_NAMES))


def mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 4) -> str:
    """``0.1234 (0.0056)``: mean and sample standard deviation; the mean alone for one value."""
    values = [v * scale for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ({np.std(values, ddof=1):.{digits}f})"


def category_means(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (method, shot, seed): the mean over categories of every metric (NaNs skipped; a metric the
    frame lacks, as in results from before it existed, is NaN)."""
    frame = frame.reindex(columns=RESULT_KEYS + list(METRIC_NAMES))
    return frame.groupby(["method", "shot", "seed"], sort=False)[list(METRIC_NAMES)].mean().reset_index()


def _rows(frame: pd.DataFrame, variants: Mapping[str, Variant], paper_ids: Sequence[str],
          family: str = "") -> list[str]:
    """The methods of ``frame`` in ``family`` whose ``paper`` id is one of ``paper_ids``, in that order."""
    present = [m for m in dict.fromkeys(frame["method"]) if m in variants and variants[m].family == family]
    return [m for pid in paper_ids for m in present if variants[m].paper == pid]


def check_variants(variants: Mapping[str, Variant], names: Iterable[str]) -> None:
    """Each named variant's ``paper`` is empty or a method of the paper's tables, so it lands in them."""
    for name in names:
        pid = variants[name].paper
        if pid and pid not in published.ALL_METHODS:
            raise ConfigError(f"variants.{name}.paper: {pid!r} is no method of the paper's tables; "
                              f"expected one of {', '.join(published.ALL_METHODS)} (or leave it out)")


def _labeller(variants: Mapping[str, Variant]) -> Callable[[str], str]:
    return lambda m: variant_label(m, variants.get(m))



def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def fmt(value: float | None, scale: float = 1.0, missing: str = "-") -> str:
    """A metric as every table prints it: four decimals, ``missing`` for None or NaN."""
    return missing if value is None or math.isnan(value) else f"{value * scale:.4f}"


def per_category_table(
    frame: pd.DataFrame, metric: str, shot: int, variants: Mapping[str, Variant], paper: bool = False
) -> str:
    """Tables II (IoU) / III (Dice): categories down, networks across, a Mean row at the bottom."""
    label = _labeller(variants)
    methods = _rows(frame[frame["shot"] == shot], variants, NETWORK_TABLES)
    part = frame[(frame["shot"] == shot) & frame["method"].isin(methods)]
    header = ["category"]
    for m in methods:
        header += [label(m)] + ([f"{label(m)} (paper)"] if paper else [])
    rows = []
    for category in sorted(part["category"].unique()):
        row = [category]
        for m in methods:
            row.append(mean_std(part[(part["method"] == m) & (part["category"] == category)][metric].tolist()))
            if paper:
                cell = published.PER_CATEGORY[metric][shot][variants[m].paper].get(category) if shot in (1, 5) else None
                row.append("-" if cell is None else f"{fmt(cell[0])} ({fmt(cell[1])})")
        rows.append(row)
    means = category_means(part)
    row = ["**Mean**"]
    for m in methods:
        row.append(mean_std(means[means["method"] == m][metric].tolist()))
        if paper:
            row.append(fmt(published.PRINTED_MEANS[metric].get(shot, {}).get(variants[m].paper)))
    rows.append(row)
    return markdown_table(header, rows)


def detection_table(frame: pd.DataFrame, variants: Mapping[str, Variant], paper: bool = False) -> str:
    """Table IV: image-level accuracy and ROC AUC (mean over categories) per network and shot."""
    label = _labeller(variants)
    means = category_means(frame)
    shots = sorted(means["shot"].unique())
    methods = _rows(frame, variants, NETWORK_TABLES)
    header = ["method"]
    for k in shots:
        header += [f"{k}-shot ACC", f"{k}-shot AUC"] + ([f"{k}-shot ACC (paper)", f"{k}-shot AUC (paper)"] if paper else [])
    rows = []
    for m in methods:
        row = [label(m)]
        for k in shots:
            sel = means[(means["method"] == m) & (means["shot"] == k)]
            row += [mean_std(sel["image_acc"].tolist()), mean_std(sel["image_auroc"].tolist())]
            if paper:
                ref = published.DETECTION.get(k, {}).get(variants[m].paper)
                row += [fmt(ref["acc"]) if ref else "-", fmt(ref["auc"]) if ref else "-"]
        rows.append(row)
    return markdown_table(header, rows)


def ablation_table(frame: pd.DataFrame, table: str, variants: Mapping[str, Variant], paper: bool = False,
                   family: str = "") -> str:
    """Tables V-VII: mean IoU and Dice over categories per method of ``family`` and shot; the paper's
    rows stand beside them."""
    label = _labeller(variants)
    means = category_means(frame)
    shots = sorted(means["shot"].unique())
    header = ["method"]
    for k in shots:
        header += [f"{k}-shot IoU", f"{k}-shot DC"] + ([f"{k}-shot IoU (paper)", f"{k}-shot DC (paper)"] if paper else [])
    rows = []
    for m in _rows(frame, variants, published.ABLATION_ROWS[table], family):
        base = variants[m].paper
        row = [label(m)]
        for k in shots:
            sel = means[(means["method"] == m) & (means["shot"] == k)]
            row += [mean_std(sel["iou"].tolist()), mean_std(sel["dice"].tolist())]
            if paper:
                ref = published.ABLATIONS[table].get(base, {}).get(k)
                row += [fmt(ref["iou"]) if ref else "-", fmt(ref["dice"]) if ref else "-"]
        rows.append(row)
    return markdown_table(header, rows)


def all_methods_table(frame: pd.DataFrame, label: Callable[[str], str]) -> str:
    """Every method of the run (including ones the paper does not have): all metrics, per shot."""
    means = category_means(frame)
    shown = present_metrics(means)
    rows = []
    for (m, k), sel in means.groupby(["method", "shot"], sort=False):
        rows.append([label(m), str(k), str(sel["seed"].nunique())] + [mean_std(sel[name].tolist()) for name in shown])
    return markdown_table(["method", "shot", "seeds"] + [HEADERS[n] for n in shown], rows)


def present_metrics(means: pd.DataFrame) -> list[str]:
    """The metrics of :data:`METRIC_NAMES` to show: all but the calibrated-threshold ones (``*_cal``)
    that no row has (runs whose split held no normals out, or from before calibration existed)."""
    return [m for m in METRIC_NAMES if m not in CALIBRATED_NAMES or (m in means and means[m].notna().any())]


def paper_tables(
    frame: pd.DataFrame, variants: Mapping[str, Variant], *, paper: bool = False,
    parameters: Mapping[str, int] | None = None,
) -> str:
    """Every table the results can fill, in the paper's order (a table with fewer than two methods
    is left out). ``variants`` (params.yaml's) say which table holds each method."""
    label = _labeller(variants)
    parts = ["## All methods (mean over categories)", "", all_methods_table(frame, label), ""]
    if len(_rows(frame, variants, NETWORK_TABLES)) > 1:
        for metric, number, name in (("iou", "II", "IoU"), ("dice", "III", "Dice")):
            for shot in sorted(frame["shot"].unique()):
                parts += [f"## Table {number}: mean {name}, {shot}-shot", "",
                          per_category_table(frame, metric, shot, variants, paper), ""]
        parts += ["## Table IV: image-level detection (ACC, ROC AUC)", "", detection_table(frame, variants, paper), ""]
    families = dict.fromkeys(variants[m].family for m in dict.fromkeys(frame["method"]) if m in variants)
    for family in families:
        for table, title in ABLATION_TITLES.items():
            if len(_rows(frame, variants, published.ABLATION_ROWS[table], family)) > 1:
                suffix = f" ({family})" if family else ""
                parts += [f"## {title}{suffix}", "", ablation_table(frame, table, variants, paper, family), ""]
    if parameters:
        parts += ["## Networks: trainable parameters", "",
                  markdown_table(["method", "parameters"], [[label(m), f"{n:,}"] for m, n in parameters.items()]), ""]
    return "\n".join(parts)
