"""Running a grid's cells through DVC's experiment queue (grid files: :mod:`fsds.pipeline.grid`).

Each cell is a full ``dvc repro`` of the pipeline (every method of ``methods`` trained,
predicted, scored and reported) in DVC's experiment queue, run by ``dvc queue start -j N``.
Resuming is DVC's: a cell whose experiment exists is not queued again, a cell still queued
or running is left to its worker, and a cell that was killed half-way restarts with its
finished stages restored from DVC's run cache instead of being trained again.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Mapping

import yaml
from tqdm import tqdm

from fsds.config import MlflowConfig, parse_config
from fsds.errors import RunError
from fsds.pipeline.grid import Grid
from fsds.pipeline.grid_report import finished_cells
from fsds.pipeline.tracking import absolute_store, open_store


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
    unless it is set already): every worker taking all cores oversubscribes the CPU, and one-thread
    workers do more work together than one worker with all threads (lab/findings/history.md).
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
