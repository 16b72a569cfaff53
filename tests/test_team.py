"""A team's setup, against real processes: an MLflow tracking server, DVC and git remotes, DVC's
experiment queue with two workers. Nothing of MLflow or DVC is mocked."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from fsds.pipeline.grid_report import finished_experiments, git_file
from tests.conftest import run, tiny_repo

TINY = {
    "data": {"synthetic": {"n_train_good": 6, "n_test_good": 3, "n_per_defect": 3, "size": 64}, "categories": ["fabric"]},
    "split": {"calibration_normals": 2},  # of 6
    "profiles": {"fast256": {"image_size": 64, "iterations": 3}},
    "train": {"eval_every": 0, "precision": "fp32"},  # fp32 everywhere: predictions comparable across processes
    "methods": ["B", "B_NBR_CaP"],
}
RUNS = [("B", "fabric"), ("B_NBR_CaP", "fabric")]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def mlflow_server(tmp_path):
    """``mlflow server`` on loopback: SQLite backend store, local artifact store served by the server."""
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(tmp_path / "store")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        assert proc.poll() is None and time.time() < deadline, (tmp_path / "server.log").read_text()[-3000:]
        time.sleep(1)
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    log.close()


def test_pipeline_tracks_into_a_tracking_server_and_its_model_reloads_elsewhere(tmp_path, mlflow_server):
    repo, env = tiny_repo(tmp_path / "repo", TINY)
    env["MLFLOW_TRACKING_URI"] = mlflow_server
    run(["dvc", "repro"], repo, env)
    assert not (repo / "mlflow.db").exists()  # everything went to the server

    client = MlflowClient(tracking_uri=mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("fsds").experiment_id])
    assert sorted((r.data.tags["variant"], r.data.tags["category"]) for r in runs) == RUNS
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.params["shot"] == "1"
        assert len(client.get_metric_history(r.info.run_id, "loss")) == 3  # every iteration
        assert {"train_seconds", "test_iou", "test_dice", "test_image_auroc"} <= set(r.data.metrics)
        assert [a.path for a in client.list_artifacts(r.info.run_id)] == ["model"]
    ours = next(r for r in runs if r.data.tags["variant"] == "B_NBR_CaP")
    model_uri = f"runs:/{ours.info.run_id}/model"

    # A fresh process, outside the repository, loads the model through the server and predicts
    # the test images the predict stage predicted.
    script = textwrap.dedent(f"""
        import numpy as np, pandas as pd, torch, mlflow.pytorch, mlflow.pyfunc, mlflow.models
        from pathlib import Path
        from fsds.data.images import load_images
        info = mlflow.models.get_model_info({model_uri!r})
        assert info.signature.inputs.input_names() == ["image", "name"], info.signature
        model = mlflow.pytorch.load_model({model_uri!r})
        assert info.signature.params.params[0].default == model.threshold  # the served default: the model's own
        split = pd.read_csv({str(repo / "data" / "split.csv")!r}, keep_default_na=False)
        test = split[(split["split"] == "test") & (split["category"] == "fabric")]
        images = load_images([{str(repo)!r} + "/" + p for p in test["image"]], model.image_size).float() / 255
        with torch.no_grad():
            probs = model(images)[:, 0].numpy()
        np.save("probs.npy", (probs * 255).round().astype(np.uint8))
        # The served flavor (what `mlflow models serve -m runs:/...` answers) on the good test images.
        served = mlflow.pyfunc.load_model({model_uri!r}, model_config={{"precision": "fp32", "runtime": "torch"}})
        files = sorted(Path({str(repo / "data" / "raw" / "fabric" / "test" / "good")!r}).iterdir())
        answer = served.predict(pd.DataFrame({{"image": [f.read_bytes() for f in files], "name": [f.name for f in files]}}))
        answer[["image", "score", "decision"]].to_csv("served.csv", index=False)
    """)
    run([sys.executable, "-c", script], tmp_path, env)
    reloaded = np.load(tmp_path / "probs.npy")
    with np.load(repo / "data" / "predictions" / "B_NBR_CaP" / "fabric.npz") as stage:
        predicted = stage["probs"]
    assert reloaded.shape == predicted.shape
    assert np.abs(reloaded.astype(int) - predicted.astype(int)).max() <= 1  # uint8 rounding apart

    # `fsds predict` takes the same URI.
    images = repo / "data" / "raw" / "fabric" / "test" / "good"
    fp32 = ["--precision", "fp32", "--runtime", "torch"]
    run(["fsds", "predict", "--model", model_uri, str(images), "--out", str(tmp_path / "by_uri"), *fp32], tmp_path, env)
    run(["fsds", "predict", "--model", str(repo / "data" / "models" / "B_NBR_CaP" / "fabric.pt"), str(images),
         "--out", str(tmp_path / "by_checkpoint"), *fp32], tmp_path, env)
    assert (tmp_path / "by_uri" / "predictions.csv").read_text().replace("by_uri", "") == \
        (tmp_path / "by_checkpoint" / "predictions.csv").read_text().replace("by_checkpoint", "")
    served = {r["image"]: r for r in csv.DictReader(open(tmp_path / "served.csv", newline=""))}
    predicted = {Path(r["image"]).name: r for r in csv.DictReader(open(tmp_path / "by_uri" / "predictions.csv", newline=""))}
    assert sorted(served) == sorted(predicted) and len(served) == 3
    for name, row in predicted.items():
        assert f"{float(served[name]['score']):.6f}" == row["score"] and served[name]["decision"] == row["decision"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Engineer A's repository with a DVC remote and a bare git remote, the pipeline run and pushed."""
    root = tmp_path_factory.mktemp("team")
    repo, env = tiny_repo(root / "a", TINY)
    run(["git", "init", "-q", "--bare", str(root / "origin.git")], root, env)
    run(["git", "remote", "add", "origin", str(root / "origin.git")], repo, env)
    run(["dvc", "remote", "add", "-d", "shared", str(root / "dvc-storage")], repo, env)
    run(["dvc", "repro"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "baseline results"], repo, env)
    run(["dvc", "push"], repo, env)
    run(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], repo, env)
    return root, repo, env


def test_another_engineer_gets_results_and_experiments_through_the_remotes(shared):
    root, a, env = shared
    for name, change in (("seed1", "seed=1"), ("shot2", "shot=2")):  # --temp: A's workspace stays as pushed
        run(["dvc", "exp", "run", "--temp", "--name", name, "-S", change], a, env)
    run(["dvc", "exp", "push", "origin", "seed1", "shot2"], a, env)  # git refs to origin, outputs to the DVC remote

    b = root / "b"
    run(["git", "clone", "-q", "-b", "main", str(root / "origin.git"), str(b)], root, env)
    run(["dvc", "pull"], b, env)
    assert "Data and pipelines are up to date" in run(["dvc", "status"], b, env)
    for rel in ("data/models/B_NBR_CaP/fabric.pt", "data/predictions/B/fabric.npz", "data/split.csv"):
        assert (b / rel).read_bytes() == (a / rel).read_bytes(), rel

    run(["dvc", "exp", "pull", "origin", "seed1", "shot2"], b, env)
    assert set(finished_experiments(b)) == {"seed1", "shot2"}
    diff = json.loads(run(["dvc", "metrics", "diff", "seed1", "shot2", "--json"], b, env))
    changes = diff["reports/metrics.json"]
    assert "B_NBR_CaP.fabric.iou" in changes
    ours = json.loads(git_file(b, finished_experiments(b)["shot2"], "reports/metrics.json"))
    assert changes["B_NBR_CaP.fabric.iou"]["new"] == pytest.approx(ours["B_NBR_CaP"]["fabric"]["iou"])
    # The experiment's outputs come from the DVC remote: applied in B, they are all there.
    run(["dvc", "exp", "apply", "shot2"], b, env)
    run(["dvc", "checkout"], b, env)
    assert "Data and pipelines are up to date" in run(["dvc", "status"], b, env)


def test_two_queued_experiments_run_in_parallel_without_touching_each_other(shared):
    _, a, env = shared
    for seed in (3, 4):
        run(["dvc", "exp", "run", "--queue", "--name", f"q{seed}", "-S", f"seed={seed}"], a, env)
    run(["dvc", "queue", "start", "--jobs", "2"], a, env)
    deadline = time.time() + 900
    while not {"q3", "q4"} <= set(finished_experiments(a)):
        status = run(["dvc", "queue", "status"], a, env)
        assert "Failed" not in status and time.time() < deadline, status
        time.sleep(3)
    done = finished_experiments(a)
    metrics = {s: json.loads(git_file(a, done[f"q{s}"], "reports/metrics.json")) for s in (3, 4)}
    params = {s: git_file(a, done[f"q{s}"], "params.yaml").decode() for s in (3, 4)}
    assert "seed: 3" in params[3] and "seed: 4" in params[4]
    assert metrics[3] != metrics[4]  # each experiment kept its own results

    # Both workers tracked into the repository's store (DVC_ROOT), one complete set of runs each.
    client = MlflowClient(tracking_uri=f"sqlite:///{a / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("fsds").experiment_id])
    for seed in (3, 4):
        mine = [r for r in runs if r.data.tags["seed"] == str(seed)]
        assert sorted((r.data.tags["variant"], r.data.tags["category"]) for r in mine) == RUNS
        assert all(r.info.status == "FINISHED" and "test_iou" in r.data.metrics for r in mine)
    # ... and in parallel: the two experiments' trainings overlap in time.
    spans = {s: [(r.info.start_time, r.info.end_time) for r in runs if r.data.tags["seed"] == str(s)] for s in (3, 4)}
    (start3, end3), (start4, end4) = ((min(a for a, _ in v), max(b for _, b in v)) for v in spans.values())
    assert start3 < end4 and start4 < end3
