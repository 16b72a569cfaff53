"""Experiment grids run by DVC itself: one ``dvc exp run --queue`` per (shot, seed) cell.

A grid file (``grids/*.yaml``) names the cells and the params every cell sets::

    name: mt                      # experiment names are <name>-k<shot>-s<seed>
    shots: [1, 5]
    seeds: [0, 1, 2]
    set:                          # dvc exp run -S key=value for every cell
      dataset: magnetic_tile
      profile: quick
      methods: [B, B_NBR, B_NBR_CaP]

Each cell is a full ``dvc repro`` of the pipeline (every method of ``methods`` trained,
predicted, scored and reported) in DVC's experiment queue, run by ``dvc queue start -j N``.
Resuming is DVC's: a cell whose experiment exists is not queued again, a cell still queued
or running is left to its worker, and a cell that was killed half-way restarts with its
finished stages restored from DVC's run cache instead of being trained again.

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
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import yaml
from tqdm import tqdm

from fsds.config import MlflowConfig, parse_config
from fsds.engine.device import cpu_model
from fsds.errors import ConfigError, RunError
from fsds.evaluation.figures import plot_curves, save_figure
from fsds.evaluation.tables import markdown_table, paper_tables, results_frame
from fsds.io import atomic_dir, atomic_path, write_json, write_text
from fsds.pipeline.report import parameter_counts, settings_line
from fsds.pipeline.tracking import absolute_store, open_store

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
    """Read and check a grid file: every cell's params must pass :func:`fsds.config.parse_config`."""
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
        parse_config(apply_overrides(base, {**grid.set, "shot": shot, "seed": seed}))
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


def _dvc(args: list[str], cwd: Path, env: Mapping[str, str] | None = None) -> str:
    proc = subprocess.run(["dvc", *args], cwd=cwd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RunError(f"dvc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc.stdout


def _dvc_detaching(args: list[str], cwd: Path, env: Mapping[str, str] | None = None) -> None:
    """A DVC command that leaves processes behind (``dvc queue start``). Its output goes to a file
    in ``.dvc/tmp``, not a pipe: the detached workers inherit it, and a captured pipe stays open
    until they exit, so the caller would wait for the whole queue."""
    log = cwd / ".dvc" / "tmp" / f"grid-{args[0]}-{args[1]}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        code = subprocess.run(["dvc", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                              stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise RunError(f"dvc {' '.join(args)} failed ({code}):\n{log.read_text()[-2000:]}")


def mlflow_store(repo: Path) -> MlflowConfig:
    """The ``mlflow`` params of ``params.yaml``, a relative SQLite store made absolute (to ``repo``)."""
    cfg = parse_config(yaml.safe_load((repo / "params.yaml").read_text()) or {}).mlflow
    return replace(cfg, tracking_uri=absolute_store(cfg.tracking_uri, repo))


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


RANK = {"Success": 0, "Failed": 1, "Queued": 2, "Running": 3}  # a finished cell is done by its experiment ref


def queue_status(repo: Path) -> tuple[dict[str, str], int]:
    """``{experiment name: status}`` from ``dvc queue status`` (Queued, Running, Success, Failed)
    and the number of active workers."""
    status, active = {}, 0
    for line in _dvc(["queue", "status"], repo).splitlines():
        cols = line.split()
        if len(cols) >= 4 and cols[-1] in RANK:  # a re-run cell is listed again: its live task wins
            if RANK[cols[-1]] > RANK.get(status.get(cols[1], ""), -1):
                status[cols[1]] = cols[-1]
        found = re.search(r"Worker status: (\d+) active", line)
        if found:
            active = int(found.group(1))
    return status, active


LOST_POLLS = 3  # polls in a row a cell may be missing from the queue before it is queued again
MAX_REQUEUES = 2


def threads_per_worker(jobs: int) -> int:
    """This process's CPU cores shared among ``jobs`` workers (at least one each)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // jobs)


def _start_workers(repo: Path, n: int, jobs: int) -> None:
    """``dvc queue start --jobs n``. Workers run each cell in a temporary copy of the repo: point
    MLflow at this one's store, and keep training snapshots here, where a killed cell's next run finds them.

    With ``jobs`` > 1 workers, each one's stages get ``cores // jobs`` threads (``OMP_NUM_THREADS``,
    unless it is set already): every worker taking all cores oversubscribes the CPU. On 2 cores, two
    one-thread trainings did 1.3-1.5x the work of one two-thread training (`fsds.experiments.timing`, 128 px).
    """
    store = mlflow_store(repo)
    env = dict(os.environ)
    env.setdefault("MLFLOW_TRACKING_URI", store.tracking_uri)
    # Create the store before the workers start: two trainings opening a new SQLite store at once
    # race in MLflow's schema migration ("table _alembic_tmp_metrics already exists"; seen with --jobs 2).
    if store.enabled:
        open_store(absolute_store(env["MLFLOW_TRACKING_URI"], repo), store.experiment)
    env.setdefault("FSDS_RESUME_DIR", str((repo / "data" / "resume").resolve()))
    if jobs > 1:
        env.setdefault("OMP_NUM_THREADS", str(threads_per_worker(jobs)))
    _dvc_detaching(["queue", "start", "--jobs", str(n)], repo, env)


def _queue_cell(grid: Grid, repo: Path, name: str, shot: int, seed: int) -> None:
    args = ["exp", "run", "--queue", "--name", name]
    for override in grid.overrides(shot, seed):
        args += ["-S", override]
    _dvc(args, repo)


def run_grid(grid: Grid, repo: str | Path = ".", jobs: int = 1, poll: float = 30.0,
             log: Callable[[str], None] = print) -> dict[str, str]:
    """Queue the missing cells, bring the queue's workers up to ``jobs`` and wait; returns
    ``{name: commit}`` of the cells, each archived as it finishes (:func:`finished_cells`).
    (Each poll runs the DVC CLI, about a second of CPU: poll rarely.)

    Raises when a cell fails, naming it and the command that shows its log.
    """
    repo = Path(repo)
    done = finished_cells(grid, repo)
    status, active = queue_status(repo)
    stale = [n for n, _, _ in grid.cells() if status.get(n) == "Running" and not active]
    if stale:  # the worker died (machine stopped, process killed): DVC still lists the cell as running
        raise RunError(
            f"grid {grid.name}: {', '.join(stale)} is marked running but no queue worker is alive; run "
            f"`dvc queue kill {' '.join(stale)}` and `dvc queue remove --failed`, then this command again: "
            "the cell restarts, its finished stages restored from the run cache"
        )
    pending = {n: s for n, s in status.items() if s in ("Queued", "Running")}
    todo = [c for c in grid.cells() if c[0] not in done and c[0] not in pending]
    for name, shot, seed in grid.cells():
        state = "finished" if name in done else pending.get(name, "queued now" if (name, shot, seed) in todo else "")
        log(f"{name}: {state}")
    for cell in todo:
        _queue_cell(grid, repo, *cell)
    cells = {name: (shot, seed) for name, shot, seed in grid.cells()}
    names = list(cells)
    if (todo or pending) and active < jobs:
        _start_workers(repo, jobs - active, jobs)
    idle = 0  # polls in a row with cells queued but no worker and nothing running
    lost: dict[str, int] = {}  # polls in a row a cell was neither finished, queued nor running
    requeued: dict[str, int] = {}
    with tqdm(total=len(names), desc=f"grid {grid.name}", unit="cell") as bar:
        while True:
            done = finished_cells(grid, repo)
            status, active = queue_status(repo)
            left = [n for n in names if n not in done]
            failed = [n for n in left if status.get(n) == "Failed"]
            if failed:
                raise RunError(
                    f"grid {grid.name}: cell(s) {', '.join(failed)} failed; see `dvc queue logs <name>`, "
                    "fix the cause, `dvc queue remove --failed` and run the grid again (finished cells are kept)"
                )
            bar.update(len(names) - len(left) - bar.n)
            if not left:
                return {n: done[n] for n in names}
            # A worker shuts down when it finds the queue empty (dvc_task looks every 10 s); one that does so just
            # as it takes a task can lose it, and DVC then lists the cell nowhere (seen once in the slow test).
            lost = {n: lost.get(n, 0) + 1 for n in left if status.get(n) not in ("Queued", "Running")}
            for name in [n for n, polls in lost.items() if polls == LOST_POLLS]:
                if requeued.get(name, 0) == MAX_REQUEUES:
                    raise RunError(f"grid {grid.name}: {name} neither finished nor queued after "
                                       f"{MAX_REQUEUES} re-queues; see `dvc queue status` and run the grid again")
                log(f"grid {grid.name}: {name} is neither finished nor queued (DVC lost its task); queueing it again")
                _queue_cell(grid, repo, name, *cells[name])
                requeued[name] = requeued.get(name, 0) + 1
                del lost[name]
            waiting = any(status.get(n) == "Queued" for n in left) and not any(status.get(n) == "Running" for n in left)
            idle = idle + 1 if waiting and not active else 0
            if idle == 2:  # the workers have gone (seen here: one exited after its first cell); start them again
                log(f"grid {grid.name}: cells are queued but no worker is running; starting {jobs}")
                _start_workers(repo, jobs, jobs)
                idle = 0
            time.sleep(poll)


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
        paper_tables(frame, cfg.label, paper=cfg.dataset == "mvtec", parameters=parameter_counts(cfg, cfg.methods)),
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
