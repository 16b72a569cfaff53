"""A grid's finished cells, archived, and its report (grid files: :mod:`fsds.pipeline.grid`).

Each finished cell's results are read back from its experiment's git ref (``refs/exps/...``)
and archived under the grid's ``archive`` folder (default ``reports/grids/<name>``): metrics,
ROC and test-IoU curves, training times, and for the first seed the qualitative grid and the
crop-and-paste examples. Experiment refs live only in the repository that ran them (a clone
does not copy them); the archive is committed with the report, so a fresh clone knows which
cells are finished, never trains them again and can redraw the report. An archived cell whose
params differ from the grid file's is stale: it is run again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import yaml

from fsds.config import parse_config
from fsds.engine.device import cpu_model
from fsds.errors import RunError
from fsds.evaluation.figures import plot_curves, save_figure
from fsds.evaluation.tables import markdown_table, paper_tables, results_frame
from fsds.io import atomic_dir, atomic_path, write_json, write_text
from fsds.pipeline.grid import Grid, _hydra, apply_overrides
from fsds.pipeline.report import parameter_counts, settings_line


def finished_experiments(repo: Path) -> dict[str, str]:
    """``{experiment name: commit}`` of every finished experiment (newest wins on a repeated name)."""
    out = subprocess.run(
        ["git", "for-each-ref", "--sort=committerdate", "--format=%(refname) %(objectname)", "refs/exps"],
        cwd=repo, capture_output=True, text=True, check=True,
    ).stdout
    found = {}
    for line in out.splitlines():
        ref, sha = line.split()
        parts = ref.split("/")  # refs/exps/<2 hex>/<38 hex>/<name>; skip DVC's own refs (celery, exec)
        if len(parts) == 5 and len(parts[2]) == 2:
            found[parts[-1]] = sha
    return found


def git_file(repo: Path, commit: str, path: str) -> bytes:
    return subprocess.run(["git", "show", f"{commit}:{path}"], cwd=repo, capture_output=True, check=True).stdout


CELL_FILES = ("metrics.json", "roc.csv", "probe_iou.csv")  # what a cell's archive holds
FIRST_SEED_FILES = ("qualitative.png", "cap_examples.png")  # pictures, kept for the first seed of each shot only


def pipeline_outputs(repo: Path) -> dict[str, str]:
    """Where the pipeline writes what a cell's archive holds, read from ``dvc.yaml`` (the metrics
    file, the report's plot data and figures) as ``{archived name: path}``, with ``models`` the
    train stage's output folder (``${item}`` standing for the method)."""
    dvc_yaml = repo / "dvc.yaml"
    spec = yaml.safe_load(dvc_yaml.read_text())
    declared: list[str] = []
    for stage in spec.get("stages", {}).values():
        body = stage.get("do", stage)
        for kind in ("outs", "metrics", "plots"):
            for out in body.get(kind, []):
                declared.append(next(iter(out)) if isinstance(out, dict) else out)
    declared += [p for p in spec.get("plots", []) if isinstance(p, str)]
    found = {}
    for name in (*CELL_FILES, *FIRST_SEED_FILES):
        paths = [p for p in declared if Path(p).name == name]
        if len(paths) != 1:
            raise RunError(f"{dvc_yaml}: {len(paths)} outputs named {name}; grid archiving needs exactly one")
        found[name] = paths[0]
    models = [p for p in declared if "${item}" in p and p.startswith("data/models")]
    if len(models) != 1:
        raise RunError(f"{dvc_yaml}: the train stage's output folder (data/models/${{item}}) is not declared")
    found["models"] = models[0]
    return found


def archive_cell(grid: Grid, repo: Path, name: str, shot: int, seed: int, commit: str) -> None:
    """Copy a finished experiment's results into ``<archive>/<name>/`` (atomically), with
    ``cell.json``: the experiment's commit, the cell's params, each model's training time and the
    CPU (this machine's: cells are archived where they ran)."""
    outputs = pipeline_outputs(repo)
    files = CELL_FILES + (FIRST_SEED_FILES if seed == grid.seeds[0] else ())
    with atomic_dir(grid.archive_dir(repo) / name) as tmp:
        for archived in files:
            (tmp / archived).write_bytes(git_file(repo, commit, outputs[archived]))
        methods = list(json.loads((tmp / "metrics.json").read_text()))
        write_json(tmp / "cell.json", {"experiment": name, "commit": commit, "params": grid.overrides(shot, seed),
                                       "train_seconds": _training_seconds(repo, commit, methods, outputs["models"]),
                                       "cpu": cpu_model()})


def _training_seconds(repo: Path, commit: str, methods: Sequence[str], models: str) -> dict[str, float | None]:
    """Each method's training wall time (summed over categories), read from DVC's cache; None when
    the cache does not hold it."""
    import dvc.api

    seconds: dict[str, float | None] = {}
    for method in methods:
        try:
            timing = json.loads(dvc.api.read(f"{models.replace('${item}', method)}/timing.json", repo=str(repo), rev=commit))
            seconds[method] = round(sum(timing.values()), 1)
        except Exception:  # noqa: BLE001 - not in the local cache: say so in the report
            seconds[method] = None
    return seconds


def archived_cells(grid: Grid, repo: str | Path = ".") -> dict[str, dict[str, Any]]:
    """``{name: cell.json}`` of the archived cells whose params are the grid file's (others are stale)."""
    found = {}
    for name, shot, seed in grid.cells():
        meta = grid.archive_dir(repo) / name / "cell.json"
        if meta.is_file():
            cell = json.loads(meta.read_text())
            if cell.get("params") == grid.overrides(shot, seed):
                found[name] = cell
    return found


def finished_cells(grid: Grid, repo: str | Path = ".") -> dict[str, str]:
    """``{name: commit}`` of the grid's finished cells: the archived ones, after archiving every
    cell whose experiment has finished here since."""
    repo = Path(repo)
    done = {name: cell["commit"] for name, cell in archived_cells(grid, repo).items()}
    experiments = finished_experiments(repo)
    for name, shot, seed in grid.cells():
        if name in experiments and done.get(name) != experiments[name]:
            archive_cell(grid, repo, name, shot, seed, experiments[name])
            done[name] = experiments[name]
    return done


def collect_results(grid: Grid, repo: str | Path = ".") -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """The results frame of every finished cell (from its archived ``metrics.json``) and ``{name: cell.json}``."""
    repo = Path(repo)
    finished_cells(grid, repo)
    cells = archived_cells(grid, repo)
    frames = [results_frame(json.loads((grid.archive_dir(repo) / name / "metrics.json").read_text()), shot, seed)
              for name, shot, seed in grid.cells() if name in cells]
    if not frames:
        raise RunError(f"grid {grid.name}: no finished cell; run `python -m stages.grid run ...` first")
    return pd.concat(frames, ignore_index=True), cells


def training_times(cells: Mapping[str, Mapping[str, Any]], methods: Sequence[str], label: Callable[[str], str]) -> str:
    """Methods down, cells across: each model's training time in seconds (n/a where unknown)."""
    rows = []
    for method in methods:
        times = [cell["train_seconds"].get(method) for cell in cells.values()]
        rows.append([label(method), *("n/a" if t is None else f"{t:.0f}" for t in times)])
    return markdown_table(["method", *cells], rows)


def grid_report(grid: Grid, repo: str | Path, report: str | Path, figures: str | Path,
                params: str | Path = "params.yaml") -> str:
    """Write the grid's paper-format tables (mean (std) over seeds) and figures; returns the markdown.

    Everything is read from the archive (cells finished here since are archived first), so the
    report redraws from a fresh clone. Figures: ROC and test IoU during training averaged over
    seeds, per shot; the qualitative grid and the crop-and-paste examples of the first seed.
    """
    repo, figures = Path(repo), Path(figures)
    frame, cells = collect_results(grid, repo)
    archive = grid.archive_dir(repo)
    base = yaml.safe_load(Path(params).read_text()) or {}
    cfg = parse_config(apply_overrides(base, {**grid.set, "shot": grid.shots[0], "seed": grid.seeds[0]}))
    labels = {m: cfg.label(m) for m in cfg.methods}
    rel = figures.relative_to(Path(report).parent) if figures.is_relative_to(Path(report).parent) else figures
    parts = [
        f"# Experiment grid `{grid.name}`: {len(cells)} of {len(grid.cells())} cells",
        "",
        settings_line(cfg),
        "",
        f"Shots {list(grid.shots)}, seeds {list(grid.seeds)}; every cell is one `dvc exp run` with "
        + ", ".join(f"`{k}={_hydra(v)}`" for k, v in grid.set.items())
        + ". Cells are means over categories per seed; mean (sample std) over seeds.",
        "",
        paper_tables(frame, cfg.variants, paper=cfg.dataset == "mvtec", parameters=parameter_counts(cfg, cfg.methods)),
        "## Figures",
        "",
    ]
    figures.mkdir(parents=True, exist_ok=True)
    for shot in grid.shots:
        names = [n for n, k, _ in grid.cells() if k == shot and n in cells]
        if not names:
            continue
        for name, x, title, xlabel, ylabel in (
            ("roc", "fpr", "Image-level ROC", "false positive rate", "true positive rate"),
            ("probe_iou", "iteration", "Test IoU during training", "iteration", "IoU on test images"),
        ):
            curves = [pd.read_csv(archive / n / f"{name}.csv") for n in names]
            mean = pd.concat(curves).groupby(x, sort=True).mean().reset_index()
            fig = plot_curves(mean, x, labels, title=f"{title}, {shot}-shot (mean of {len(names)} seed{'s' if len(names) > 1 else ''})",
                              xlabel=xlabel, ylabel=ylabel, diagonal=name == "roc")
            save_figure(fig, figures / f"{name}_k{shot}.png")
            parts.append(f"![{title}, {shot}-shot]({rel}/{name}_k{shot}.png)")
        pictured = next((n for n in names if (archive / n / "qualitative.png").is_file()), None)
        for name in ("qualitative", "cap_examples") if pictured else ():
            with atomic_path(figures / f"{name}_k{shot}.png") as tmp:
                shutil.copyfile(archive / pictured / f"{name}.png", tmp)
            parts.append(f"![{name}, {shot}-shot, {pictured}]({rel}/{name}_k{shot}.png)")
        parts.append("")
    parts += ["## Training wall time per model (seconds, summed over categories)", "",
              training_times(cells, cfg.methods, cfg.label), "",
              "## Cells", "", "| experiment | commit |", "|---|---|"]
    parts += [f"| {n} | `{c['commit'][:10]}` |" for n, c in cells.items()]
    parts += ["", f"Every number above, per cell, method and category: [`{rel}/results.csv`]({rel}/results.csv). "
              f"Each cell's results are archived in `{grid.archive_dir('')}/<cell>/` (committed: a clone "
              "knows the finished cells without their experiments); the experiments themselves are git refs "
              "under `refs/exps`, which a clone does not copy: `dvc exp push <remote> <name>` shares them."]
    text = "\n".join(parts) + "\n"
    write_text(figures / "results.csv", frame.to_csv(index=False))
    write_text(report, text)
    return text
