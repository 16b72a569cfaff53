"""Does the fast path lose accuracy? Two grids of the same cells, one per path, compared.

    python -m lab.accuracy lab/grids/precision_fp32.yaml lab/grids/precision_fast.yaml lab/findings/precision.md

Reads every finished cell of both grids (``python -m stages.grid run`` them first), averages each
cell's metrics over categories, and checks the rule of issue 5: for every method and shot the
fast path's mean IoU over seeds lies within the reference path's seed-to-seed spread (its mean
plus or minus one sample standard deviation). Writes the per-seed values, the means and the
verdict as markdown and exits non-zero when the rule fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from fsds.errors import RunError
from fsds.evaluation.tables import category_means, markdown_table
from fsds.io import write_text
from fsds.pipeline.grid import load_grid
from fsds.pipeline.grid_report import collect_results

METRICS = ("iou", "dice", "image_auroc", "pixel_auroc")


def compare(reference: pd.DataFrame, fast: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """Per (method, shot): mean and sample std over seeds of both paths and whether the fast
    path's mean IoU is within the reference's mean +- std."""
    ref, new = category_means(reference), category_means(fast)
    rows, ok = [], True
    for (method, shot), group in ref.groupby(["method", "shot"], sort=False):
        other = new[(new["method"] == method) & (new["shot"] == shot)]
        if other.empty or len(group) < 2:
            continue
        row = {"method": method, "shot": shot, "seeds": len(group), "fast seeds": len(other)}
        for metric in METRICS:
            row[f"{metric} fp32"] = group[metric].mean()
            row[f"{metric} fp32 std"] = group[metric].std(ddof=1)
            row[f"{metric} fast"] = other[metric].mean()
        within = abs(row["iou fast"] - row["iou fp32"]) <= row["iou fp32 std"]
        row["within spread"] = bool(within)
        ok &= within
        rows.append(row)
    if not rows:
        raise RunError("no (method, shot) has at least two reference seeds and a fast cell to compare")
    return pd.DataFrame(rows), ok


def report(reference: pd.DataFrame, fast: pd.DataFrame, table: pd.DataFrame, ok: bool, command: str) -> str:
    per_seed = []
    for name, frame in (("fp32, NCHW", reference), ("fast", fast)):
        for row in category_means(frame).itertuples():
            per_seed.append([name, row.method, str(row.shot), str(row.seed), *(f"{getattr(row, m):.4f}" for m in METRICS)])
    summary = [
        [r["method"], str(r["shot"]), f"{r['iou fp32']:.4f} ({r['iou fp32 std']:.4f})", f"{r['iou fast']:.4f}",
         f"{r['iou fast'] - r['iou fp32']:+.4f}", "yes" if r["within spread"] else "**no**",
         f"{r['dice fp32']:.4f} / {r['dice fast']:.4f}", f"{r['image_auroc fp32']:.4f} / {r['image_auroc fast']:.4f}"]
        for _, r in table.iterrows()
    ]
    lines = [
        "# Accuracy of the fast path against the fp32 reference path",
        "",
        f"Command: `{command}`. Each cell is one `dvc exp run` of the pipeline; metrics are averaged over "
        "categories per seed, then over seeds (sample std). Rule (issue 5): the fast path's mean IoU lies "
        "within the fp32 path's mean +- one std.",
        "",
        f"**Verdict: {'holds' if ok else 'fails'}.**",
        "",
        markdown_table(["method", "shot", "IoU fp32 mean (std)", "IoU fast mean", "difference", "within spread",
                        "Dice fp32 / fast", "image AUROC fp32 / fast"], summary),
        "",
        "## Per seed",
        "",
        markdown_table(["path", "method", "shot", "seed", *METRICS], per_seed),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.accuracy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference", help="grid file of the fp32 reference path")
    parser.add_argument("fast", help="grid file of the fast path (same shots, seeds and methods)")
    parser.add_argument("out", help="markdown report to write")
    parser.add_argument("--repo", default=".")
    args = parser.parse_args(argv)
    repo = Path(args.repo)
    reference, _ = collect_results(load_grid(args.reference, repo / "params.yaml"), repo)
    fast, _ = collect_results(load_grid(args.fast, repo / "params.yaml"), repo)
    table, ok = compare(reference, fast)
    command = "python -m lab.accuracy " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report(reference, fast, table, ok, command)
    write_text(args.out, text)
    print(text)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
