"""The experiment grid through DVC's queue: cells run once, an interrupted grid resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from fsds.config import MlflowConfig
from fsds.errors import ConfigError
from fsds.pipeline.grid import load_grid
from fsds.pipeline.grid_report import finished_experiments
from tests.conftest import REPO, run, tiny_repo

TINY = {
    "data": {"synthetic": {"n_train_good": 6, "n_test_good": 3, "n_per_defect": 3, "size": 64},
             "categories": ["fabric"]},
    "split": {"calibration_normals": 2},  # of 6
    "profiles": {"fast256": {"image_size": 64, "iterations": 3}},
    "train": {"eval_every": 0},
    "methods": ["B", "B_NBR_CaP"],
}


def _write_grid(repo, seeds):
    (repo / "grids").mkdir(exist_ok=True)
    (repo / "grids" / "g.yaml").write_text(yaml.safe_dump({"name": "g", "shots": [1], "seeds": seeds, "set": {"split.unit": "defect_type"}}))
    return "grids/g.yaml"


def _grid(args, repo, env, **kwargs):
    return run([sys.executable, "-m", "stages.grid", *args], repo, env, **kwargs)


def _runs(repo, seed):
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("fsds")
    if exp is None:
        return []
    return [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("seed") == str(seed)]


def _queue_line(repo, env, name):
    """The line of ``dvc queue status`` for experiment ``name`` ('' when it is not in the queue)."""
    out = run(["dvc", "queue", "status"], repo, env)
    return next((line for line in out.splitlines() if name in line.split()), "")


@pytest.mark.slow
def test_grid_runs_each_cell_once_and_resumes_after_a_kill(tmp_path):
    repo, env = tiny_repo(tmp_path / "repo", TINY)
    grid = _write_grid(repo, [0, 1])
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "grid"], repo, env)

    _grid(["run", grid, "--poll", "2"], repo, env)
    first = finished_experiments(repo)
    assert set(first) == {"g-k1-s0", "g-k1-s1"}
    assert {r.data.tags["variant"] for r in _runs(repo, 0)} == {"B", "B_NBR_CaP"}  # MLflow store of the repo

    # Again: nothing is queued or trained twice.
    out = _grid(["run", grid, "--poll", "2"], repo, env)
    assert "g-k1-s0: finished" in out and finished_experiments(repo) == first
    assert len(_runs(repo, 0)) == 2

    # A third seed, killed while its second method trains (DVC starts a stage once the one
    # before it is done and saved), then resumed.
    grid = _write_grid(repo, [0, 1, 2])
    proc = subprocess.Popen([sys.executable, "-m", "stages.grid", "run", grid, "--poll", "2"], cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while not any(r.data.tags["variant"] == "B_NBR_CaP" for r in _runs(repo, 2)):
        assert time.time() < deadline and proc.poll() is None, "the third cell never trained a method"
        time.sleep(0.5)
    run(["dvc", "queue", "kill", "g-k1-s2"], repo, env)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    assert "g-k1-s2" not in finished_experiments(repo)
    trained = {r.data.tags["variant"] for r in _runs(repo, 2) if r.info.status == "FINISHED"}
    assert "B" in trained

    # The worker outlives the runner and marks the killed cell failed in its own time: remove it once it is.
    deadline = time.time() + 120
    while "Failed" not in _queue_line(repo, env, "g-k1-s2"):
        assert time.time() < deadline, "dvc queue kill never marked the cell failed"
        time.sleep(1)
    run(["dvc", "queue", "remove", "--failed"], repo, env)
    _grid(["run", grid, "--poll", "2"], repo, env)
    done = finished_experiments(repo)
    assert set(done) == {"g-k1-s0", "g-k1-s1", "g-k1-s2"}
    assert {k: done[k] for k in first} == first  # finished cells untouched
    finished = [r.data.tags["variant"] for r in _runs(repo, 2) if r.info.status == "FINISHED"]
    for variant in trained:  # restored from DVC's run cache, not trained again
        assert finished.count(variant) == 1, variant
    assert sorted(set(finished)) == ["B", "B_NBR_CaP"]

    _grid(["report", grid, "reports/grid.md", "reports/grid"], repo, env)
    report = (repo / "reports" / "grid.md").read_text()
    assert "3 of 3 cells" in report and "## Table V" in report
    assert " (" in report.split("## Table V")[1].splitlines()[4]  # mean (std) over three seeds
    for name in ("roc_k1", "probe_iou_k1", "qualitative_k1", "cap_examples_k1"):
        assert (repo / "reports" / "grid" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    results = pd.read_csv(repo / "reports" / "grid" / "results.csv")
    assert sorted(results["seed"].unique()) == [0, 1, 2] and set(results["shot"]) == {1}
    assert sorted(results["method"].unique()) == ["B", "B_NBR_CaP"]

    # The archive is committed; a clone (which has no experiment refs) trains nothing and redraws the report.
    assert (repo / "reports" / "grids" / "g" / "g-k1-s0" / "qualitative.png").is_file()
    assert not (repo / "reports" / "grids" / "g" / "g-k1-s1" / "qualitative.png").exists()  # first seed only
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "grid results"], repo, env)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    out = _grid(["run", grid, "--poll", "2"], clone, env)
    assert all(f"g-k1-s{s}: finished" in out for s in (0, 1, 2)) and finished_experiments(clone) == {}
    _grid(["report", grid, "reports/grid.md", "reports/grid"], clone, env)
    assert (clone / "reports" / "grid.md").read_text() == report


def test_grid_file_is_checked_before_anything_runs(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"name": "g", "shots": [1], "seeds": [0], "set": {"methods": ["B", "Nope"]}}))
    with pytest.raises(ConfigError, match="methods: 'Nope' is not a variant"):
        load_grid(path, REPO / "params.yaml")
    path.write_text(yaml.safe_dump({"name": "g", "shots": "1", "seeds": [0]}))
    with pytest.raises(ConfigError, match="shots must be a non-empty list"):
        load_grid(path, REPO / "params.yaml")
    path.write_text(yaml.safe_dump({"name": "g", "shots": [1, 0], "seeds": [0]}))  # every method needs shots
    with pytest.raises(ConfigError, match=r"^shot: must be >= 1 \(K annotated defect images per defect type\), got 0"):
        load_grid(path, REPO / "params.yaml")
    path.write_text(yaml.safe_dump({"name": "g", "shots": [1], "seeds": [0],  # the report's check, before any cell runs
                                    "set": {"methods": ["B"], "variants.B.paper": "B_NBR_CaP2"}}))
    with pytest.raises(ConfigError, match=r"^variants\.B\.paper: 'B_NBR_CaP2' is no method of the paper's tables"):
        load_grid(path, REPO / "params.yaml")
    grid = load_grid(REPO / "grids" / "magnetic_tile.yaml", REPO / "params.yaml")
    assert len(grid.cells()) == 6 and "profile=quick" in grid.overrides(1, 0)


def test_committed_grids_load_and_do_not_share_experiment_names():
    grids = [load_grid(path, REPO / "params.yaml") for path in sorted((REPO / "grids").rglob("*.yaml"))]
    assert grids
    # experiment names and archived cells are <name>-k<shot>-s<seed>: distinct names keep both apart
    # (the lab's grids too: lab/tests/test_grids.py)
    assert len({g.name for g in grids}) == len(grids)


def _experiments(uri):
    """The experiment names of an SQLite MLflow store, read without MLflow (which would create it)."""
    import sqlite3

    path = uri.removeprefix("sqlite:///")
    if not Path(path).is_file():
        return None
    with sqlite3.connect(path) as db:
        return sorted(name for (name,) in db.execute("SELECT name FROM experiments"))


@pytest.fixture
def fake_queue(monkeypatch):
    """run_grid against a scripted `dvc queue status`: records the DVC commands it would run."""
    import fsds.pipeline.grid_queue
    import fsds.pipeline.grid_report

    calls, state = [], {"status": {}, "active": 0, "done": {}}
    monkeypatch.setattr(fsds.pipeline.grid_queue, "queue_status", lambda repo: (dict(state["status"]), state["active"]))
    monkeypatch.setattr(fsds.pipeline.grid_report, "finished_experiments", lambda repo: dict(state["done"]))
    state["store"] = MlflowConfig(enabled=False, tracking_uri="sqlite:////nonexistent/mlflow.db", experiment="fsds")
    monkeypatch.setattr(fsds.pipeline.grid_queue, "mlflow_store", lambda repo: state["store"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(fsds.pipeline.grid_report, "archive_cell", lambda *args: None)  # no experiment commits to read

    def dvc(args, cwd, env=None):
        calls.append(args)
        if args[:2] == ["queue", "start"]:
            state["worker_env"] = env
            state["store_at_start"] = _experiments(env["MLFLOW_TRACKING_URI"]) if state["store"].enabled else None
        if args[:2] == ["exp", "run"]:  # queued cells finish at once in this script
            state["done"][args[args.index("--name") + 1]] = "abc"
        return ""

    monkeypatch.setattr(fsds.pipeline.grid_queue, "_dvc", dvc)
    monkeypatch.setattr(fsds.pipeline.grid_queue, "_dvc_detaching", dvc)
    return calls, state


def test_starting_workers_does_not_wait_for_them(tmp_path, monkeypatch):
    """`dvc queue start` returns while its workers run on with its stdout: the runner must go on
    to its polls (and archive each cell as it finishes), not wait for the workers to exit."""
    import threading

    from fsds.pipeline.grid_queue import _dvc_detaching

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dvc").write_text("#!/bin/sh\necho starting $@\nsleep 60 &\nexit 0\n")
    (bin_dir / "dvc").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    worker = threading.Thread(target=_dvc_detaching, args=(["queue", "start", "--jobs", "1"], tmp_path), daemon=True)
    worker.start()
    worker.join(timeout=30)  # a hang detector, not a timing: the fake worker lives 60 s
    assert not worker.is_alive()
    assert (tmp_path / ".dvc" / "tmp" / "grid-queue-start.log").read_text() == "starting queue start --jobs 1\n"
    (bin_dir / "dvc").write_text("#!/bin/sh\necho no celery here\nexit 3\n")
    with pytest.raises(RuntimeError, match=r"dvc queue start --jobs 1 failed \(3\):\nno celery here"):
        _dvc_detaching(["queue", "start", "--jobs", "1"], tmp_path)


def test_a_cell_running_without_a_worker_is_refused_with_the_fix(fake_queue, tmp_path):
    from fsds.pipeline.grid import Grid
    from fsds.pipeline.grid_queue import run_grid

    _, state = fake_queue
    state["status"] = {"g-k1-s0": "Running"}  # the worker died: DVC still lists the cell as running
    with pytest.raises(RuntimeError, match=r"g-k1-s0 is marked running but no queue worker is alive; run "
                                           r"`dvc queue kill g-k1-s0` and `dvc queue remove --failed`"):
        run_grid(Grid("g", (1,), (0,)), tmp_path, poll=0, log=lambda line: None)


@pytest.mark.parametrize(("active", "started"), [(0, ["2"]), (1, ["1"]), (2, [])])
def test_run_brings_the_workers_up_to_jobs(fake_queue, tmp_path, active, started):
    from fsds.pipeline.grid import Grid
    from fsds.pipeline.grid_queue import run_grid

    calls, state = fake_queue
    state["active"] = active
    run_grid(Grid("g", (1,), (0, 1)), tmp_path, jobs=2, poll=0, log=lambda line: None)
    assert [c for c in calls if c[:2] == ["exp", "run"]] == [
        ["exp", "run", "--queue", "--name", f"g-k1-s{s}", "-S", "shot=1", "-S", f"seed={s}"] for s in (0, 1)]
    assert [c[-1] for c in calls if c[:2] == ["queue", "start"]] == started


@pytest.mark.parametrize(("jobs", "cores", "preset", "threads"),
                         [(1, 2, None, None), (2, 2, None, "1"), (2, 8, None, "4"), (3, 2, None, "1"), (2, 8, "2", "2")])
def test_parallel_workers_share_the_cores(fake_queue, tmp_path, monkeypatch, jobs, cores, preset, threads):
    """N workers each running torch on every core oversubscribe the CPU: each gets cores // N threads,
    unless OMP_NUM_THREADS says otherwise; one worker keeps torch's default."""
    import fsds.pipeline.grid_queue
    from fsds.pipeline.grid import Grid
    from fsds.pipeline.grid_queue import run_grid

    _, state = fake_queue
    monkeypatch.setattr(fsds.pipeline.grid_queue.os, "sched_getaffinity", lambda pid: set(range(cores)))
    if preset is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", preset)
    run_grid(Grid("g", (1,), (0,)), tmp_path, jobs=jobs, poll=0, log=lambda line: None)
    assert state["worker_env"].get("OMP_NUM_THREADS") == threads


def test_archived_cells_are_not_run_again_unless_their_params_changed(fake_queue, tmp_path):
    """A clone has no experiment refs: the committed archive says which cells are finished."""
    from fsds.pipeline.grid import Grid
    from fsds.pipeline.grid_queue import run_grid

    calls, _ = fake_queue
    grid = Grid("g", (1,), (0, 1, 2), {"profile": "quick"}, archive="reports/g")
    for seed, params in ((0, grid.overrides(1, 0)), (1, ["profile=fast", "shot=1", "seed=1"])):
        cell = tmp_path / "reports" / "g" / f"g-k1-s{seed}"
        cell.mkdir(parents=True)
        (cell / "cell.json").write_text(json.dumps({"commit": f"c{seed}", "params": params}))
    lines = []
    done = run_grid(grid, tmp_path, poll=0, log=lines.append)
    assert lines[0] == "g-k1-s0: finished"
    queued = [c[c.index("--name") + 1] for c in calls if c[:2] == ["exp", "run"]]
    assert queued == ["g-k1-s1", "g-k1-s2"]  # s1 was archived with other params: stale, run again
    assert done["g-k1-s0"] == "c0"


def test_workers_that_went_away_are_started_again(fake_queue, tmp_path, monkeypatch):
    """Cells still queued, no worker and nothing running for two polls: the runner starts workers."""
    import fsds.pipeline.grid_queue
    from fsds.pipeline.grid import Grid
    from fsds.pipeline.grid_queue import run_grid

    calls, state = fake_queue
    state["status"] = {"g-k1-s0": "Queued"}
    state["active"] = 1  # a worker is up at the start, so none is started then
    polls = iter(range(100))

    def status(repo):
        n = next(polls)
        if n >= 1:
            state["active"] = 0  # ... then it exits without taking the cell
        if any(c[:2] == ["queue", "start"] for c in calls):
            state["done"]["g-k1-s0"] = "abc"  # the new worker runs it
        return dict(state["status"]), state["active"]

    monkeypatch.setattr(fsds.pipeline.grid_queue, "queue_status", status)
    lines = []
    run_grid(Grid("g", (1,), (0,)), tmp_path, jobs=1, poll=0, log=lines.append)
    assert [c for c in calls if c[:2] == ["queue", "start"]] == [["queue", "start", "--jobs", "1"]]
    assert any("no worker is running" in line for line in lines)


@pytest.mark.parametrize("finishes", [True, False])
def test_a_cell_the_queue_lost_is_queued_again(fake_queue, tmp_path, monkeypatch, finishes):
    """A DVC worker that shuts down as it takes a task loses it: the cell is then neither finished,
    queued nor running. The runner queues it again (a few times at most), not raise at once."""
    import fsds.pipeline.grid_queue
    from fsds.pipeline.grid import Grid
    from fsds.pipeline.grid_queue import MAX_REQUEUES, run_grid

    calls, state = fake_queue
    state["active"] = 1

    def dvc(args, cwd, env=None):
        calls.append(args)
        queued = sum(c[:2] == ["exp", "run"] for c in calls)
        if args[:2] == ["exp", "run"] and finishes and queued == 2:  # the first task is lost, the second runs
            state["done"]["g-k1-s0"] = "abc"
        return ""

    monkeypatch.setattr(fsds.pipeline.grid_queue, "_dvc", dvc)
    lines = []
    if finishes:
        assert run_grid(Grid("g", (1,), (0,)), tmp_path, poll=0, log=lines.append) == {"g-k1-s0": "abc"}
        assert sum("queueing it again" in line for line in lines) == 1
    else:
        with pytest.raises(RuntimeError, match=f"g-k1-s0 neither finished nor queued after {MAX_REQUEUES} re-queues"):
            run_grid(Grid("g", (1,), (0,)), tmp_path, poll=0, log=lines.append)
        assert sum(c[:2] == ["exp", "run"] for c in calls) == 1 + MAX_REQUEUES


def test_queue_status_prefers_a_cells_live_task(monkeypatch):
    """A cell run again is listed twice (its old task below): the queued or running one counts."""
    import fsds.pipeline.grid_queue
    from fsds.pipeline.grid_queue import queue_status

    listing = ("Task     Name      Created    Status\n"
               "083b3c3  g-k1-s1   04:55 PM   Running\n"
               "9c283b0  g-k1-s0   09:21 AM   Success\n"
               "1c283b0  g-k1-s1   09:20 AM   Failed\n"
               "2c283b0  g-k1-s2   09:20 AM   Success\n"
               "3c283b0  g-k1-s2   09:22 AM   Failed\n\n"
               "Worker status: 1 active, 0 idle\n")
    monkeypatch.setattr(fsds.pipeline.grid_queue, "_dvc", lambda args, cwd, env=None: listing)
    assert queue_status(None) == ({"g-k1-s0": "Success", "g-k1-s1": "Running", "g-k1-s2": "Failed"}, 1)


def test_the_mlflow_store_exists_before_the_workers_start(fake_queue, tmp_path):
    """Two workers creating a new SQLite store at once race in MLflow's schema migration (seen:
    every cell of a --jobs 2 grid failed with "table _alembic_tmp_metrics already exists")."""
    from fsds.pipeline.grid import Grid
    from fsds.pipeline.grid_queue import run_grid

    _, state = fake_queue
    state["store"] = MlflowConfig(enabled=True, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="grid")
    run_grid(Grid("g", (1,), (0, 1)), tmp_path, jobs=2, poll=0, log=lambda line: None)
    assert state["worker_env"]["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert state["store_at_start"] == ["Default", "grid"]
    assert "MLFLOW_TRACKING_URI" not in os.environ  # the runner's own process is left as it was
