"""A team's setup, against the real services a plant would run: an MLflow tracking server on
PostgreSQL, a DVC remote over SSH, DVC's experiment queue with two workers. Nothing of MLflow, DVC,
PostgreSQL or OpenSSH is mocked; the servers are started as the README's team section says
(tests/services.py)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from fsds.pipeline.grid_report import finished_experiments, git_file
from tests.conftest import run, tiny_repo
from tests.services import free_port, mlflow_server, postgres_server, sshd_server

TINY = {
    "data": {"synthetic": {"n_train_good": 6, "n_test_good": 3, "n_per_defect": 3, "size": 64}, "categories": ["fabric"]},
    "split": {"calibration_normals": 2},  # of 6
    "profiles": {"fast256": {"image_size": 64, "iterations": 3}},
    "train": {"eval_every": 0, "precision": "fp32"},  # fp32 everywhere: predictions comparable across processes
    "methods": ["B", "B_NBR_CaP"],
}
RUNS = [("B", "fabric"), ("B_NBR_CaP", "fabric")]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as db:
        yield db


@pytest.fixture(scope="module")
def tracking(postgres, tmp_path_factory):
    """``mlflow server`` on the PostgreSQL database (its schema created by MLflow's migrations on the
    fresh database), artifacts proxied by the server."""
    with mlflow_server(postgres.uri(), tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


def _runs(uri: str, seed: int) -> list:
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("fsds").experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("seed") == str(seed)]


def _landed_once(uri: str, seed: int) -> list:
    """Every run of ``seed`` once, finished, with its metrics, its full loss history and one model."""
    client = MlflowClient(tracking_uri=uri)
    runs = _runs(uri, seed)
    assert sorted((r.data.tags["variant"], r.data.tags["category"]) for r in runs) == RUNS
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.params["shot"] == "1"
        assert [m.step for m in client.get_metric_history(r.info.run_id, "loss")] == [1, 2, 3]  # each iteration once
        assert {"train_seconds", "test_iou", "test_dice", "test_image_auroc"} <= set(r.data.metrics)
        assert [a.path for a in client.list_artifacts(r.info.run_id)] == ["model"]
    return runs


def test_pipeline_tracks_into_a_server_on_postgresql_and_its_model_reloads_elsewhere(tmp_path, tracking):
    repo, env = tiny_repo(tmp_path / "repo", TINY)
    env["MLFLOW_TRACKING_URI"] = tracking
    run(["dvc", "repro"], repo, env)
    assert not (repo / "mlflow.db").exists()  # everything went to the server
    runs = _landed_once(tracking, seed=0)
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
def sshd(tmp_path_factory):
    with sshd_server(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def _ssh_env(env: dict[str, str], home: Path, sshd) -> dict[str, str]:
    """The engineer's environment with a home whose ``~/.ssh/known_hosts`` trusts the server's host
    key, taken with ``ssh-keyscan`` as the README says (DVC's SSH client refuses an unknown host)."""
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    scanned = subprocess.run(["ssh-keyscan", "-p", str(sshd.port), "-t", "ed25519", "127.0.0.1"],
                             capture_output=True, text=True, timeout=60).stdout
    assert sshd.known_hosts_line.split()[-1] in scanned, scanned  # the key the server was given
    (home / ".ssh" / "known_hosts").write_text(scanned)
    return {**env, "HOME": str(home), "GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@fsds",
            "GIT_COMMITTER_NAME": "ci", "GIT_COMMITTER_EMAIL": "ci@fsds"}


def _ssh_remote(repo: Path, env: dict[str, str], sshd, storage: Path) -> None:
    """The DVC remote over SSH: its URL in the repository's config, the key in ``config.local``."""
    run(["dvc", "remote", "add", "-d", "shared", sshd.url(storage)], repo, env)
    run(["dvc", "remote", "modify", "--local", "shared", "keyfile", str(sshd.keyfile)], repo, env)


@pytest.fixture(scope="module")
def shared(tmp_path_factory, sshd):
    """Engineer A's repository with a DVC remote over SSH and a bare git remote, the pipeline run and pushed."""
    root = tmp_path_factory.mktemp("team")
    repo, env = tiny_repo(root / "a", TINY)
    env = _ssh_env(env, root / "home", sshd)
    run(["git", "init", "-q", "--bare", str(root / "origin.git")], root, env)
    run(["git", "remote", "add", "origin", str(root / "origin.git")], repo, env)
    _ssh_remote(repo, env, sshd, root / "dvc-storage")
    run(["dvc", "repro"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "baseline results"], repo, env)
    run(["dvc", "push"], repo, env)
    assert any((root / "dvc-storage" / "files" / "md5").iterdir())  # over SSH, into the server's folder
    run(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], repo, env)
    return root, repo, env


def test_another_engineer_gets_results_and_experiments_through_the_remotes(shared, sshd):
    root, a, env = shared
    for name, change in (("seed1", "seed=1"), ("shot2", "shot=2")):  # --temp: A's workspace stays as pushed
        run(["dvc", "exp", "run", "--temp", "--name", name, "-S", change], a, env)
    run(["dvc", "exp", "push", "origin", "seed1", "shot2"], a, env)  # git refs to origin, outputs to the DVC remote

    b = root / "b"
    run(["git", "clone", "-q", "-b", "main", str(root / "origin.git"), str(b)], root, env)
    run(["dvc", "remote", "modify", "--local", "shared", "keyfile", str(sshd.keyfile)], b, env)
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


def test_two_queued_experiments_track_into_postgresql_at_once(shared, tracking):
    _, a, env = shared
    env = {**env, "MLFLOW_TRACKING_URI": tracking}  # the queue's workers inherit it
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

    # Both workers wrote into the server at once: every run, metric, loss history and model once.
    runs = {seed: _landed_once(tracking, seed) for seed in (3, 4)}
    assert not _runs(f"sqlite:///{a / 'mlflow.db'}", 3)  # none went to A's own store
    # ... and in parallel: the two experiments' trainings overlap in time.
    (start3, end3), (start4, end4) = ((min(r.info.start_time for r in v), max(r.info.end_time for r in v))
                                      for v in runs.values())
    assert start3 < end4 and start4 < end3


def test_a_push_over_ssh_killed_half_way_completes_on_the_next_and_the_clone_is_whole(tmp_path, sshd):
    """A transfer cut half-way (the ``dvc push`` process killed while the remote is filling) leaves
    the remote incomplete; the next ``dvc push`` completes it, and a clone pulls every file whole."""
    repo, env = tiny_repo(tmp_path / "a", TINY)
    env = _ssh_env(env, tmp_path / "home", sshd)
    storage = tmp_path / "dvc-storage"
    _ssh_remote(repo, env, sshd, storage)
    rng = np.random.default_rng(0)
    (repo / "data").mkdir(exist_ok=True)
    for i in range(4):  # incompressible, large enough that the upload takes a while over SSH
        (repo / "data" / f"frames_{i}.bin").write_bytes(rng.bytes(48 << 20))
    run(["dvc", "add", *(f"data/frames_{i}.bin" for i in range(4))], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "frames"], repo, env)

    push = subprocess.Popen(["dvc", "push", "--jobs", "1"], cwd=repo, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (storage.exists() and any(p.is_file() for p in storage.rglob("*"))):  # bytes are arriving
        assert push.poll() is None and time.monotonic() < deadline, "dvc push ended before it was cut"
        time.sleep(0.02)
    os.killpg(push.pid, signal.SIGKILL)
    push.wait()
    status = run(["dvc", "status", "--cloud"], repo, env)
    assert "new:" in status, status  # the remote is incomplete: the cut was half-way

    run(["dvc", "push"], repo, env)
    assert "Cache and remote 'shared' are in sync" in run(["dvc", "status", "--cloud"], repo, env)
    clone = tmp_path / "b"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    run(["dvc", "remote", "modify", "--local", "shared", "keyfile", str(sshd.keyfile)], clone, env)
    frames = [f"data/frames_{i}.bin.dvc" for i in range(4)]  # the pipeline itself was never run here
    run(["dvc", "pull", *frames], clone, env)
    for i in range(4):
        rel = f"data/frames_{i}.bin"
        assert (clone / rel).read_bytes() == (repo / rel).read_bytes(), rel
    assert sorted(p.name for p in (clone / "data").iterdir() if not p.name.startswith(".git")) == \
        sorted([f"frames_{i}.bin" for i in range(4)] + [f"frames_{i}.bin.dvc" for i in range(4)])
    assert "Data and pipelines are up to date" in run(["dvc", "status", *frames], clone, env)


def test_a_store_that_is_down_or_refuses_the_password_stops_dvc_repro_before_training(tmp_path, postgres):
    """Straight at PostgreSQL with a wrong password, or at a tracking server that is not running:
    ``dvc repro`` fails in the train stage with one line naming the store (its password hidden),
    before any model is trained."""
    repo, env = tiny_repo(tmp_path / "repo", {**TINY, "methods": ["B"]})
    for uri, said in ((postgres.uri(password="wrong-one"), "password authentication failed"),
                      (f"http://127.0.0.1:{free_port()}", "is not answering")):
        proc = subprocess.run(["dvc", "repro"], cwd=repo, env={**env, "MLFLOW_TRACKING_URI": uri},
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode != 0
        errors = [line for line in proc.stderr.splitlines() if "MLflow tracking" in line]
        assert len(errors) == 1 and said in errors[0], proc.stderr[-3000:]
        assert "wrong-one" not in proc.stderr + proc.stdout
        assert "Traceback" not in proc.stderr
        assert not (repo / "data" / "models").exists()
