"""A killed training resumes from its last snapshot and ends where an uninterrupted one ends."""

import dataclasses
import io
import os
import signal
import subprocess
import time

import pandas as pd
import pytest
import torch

from fsds.config import Variant
from fsds.engine.batches import load_train_data
from fsds.engine.resume import ResumeStore, fingerprint
from fsds.pipeline import plan
from tests.params import train

from .conftest import run, tiny_repo


@pytest.fixture(scope="module")
def washer_data(tiny_split):
    return load_train_data(tiny_split, "washer", 64)


def _config(tiny_config, **train):
    return dataclasses.replace(tiny_config, train=dataclasses.replace(tiny_config.train, **train))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_resumed_from_a_snapshot_ends_where_an_uninterrupted_one_ends(tiny_config, washer_data, precision):
    cfg = _config(tiny_config, iterations=6, checkpoint_every=2, eval_every=0, precision=precision)
    variant = Variant("cosine", "weighted")
    snapshots = {}

    def keep(state):  # through torch.save/load like the real snapshot file (the state holds live tensors)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        snapshots[state["iteration"]] = buffer.getvalue()

    whole, _, whole_history = train(cfg, variant, washer_data, seed=5, on_checkpoint=keep)
    assert sorted(snapshots) == [2, 4, 6]
    state = torch.load(io.BytesIO(snapshots[4]), weights_only=False)
    resumed, _, history = train(cfg, variant, washer_data, seed=5, resume_state=state)
    assert history.equals(whole_history)  # the losses of iterations 1-4 come from the snapshot, 5-6 recomputed
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_snapshot_is_used_only_for_the_same_training(tiny_config, washer_data, tmp_path):
    tensors = [washer_data.defect_images, washer_data.defect_masks, washer_data.normal_images]

    def key_of(cfg, variant="B_NBR_CaP", category="washer", tensors=tensors, weights="none", recipe=None):
        """The snapshot key as the train stage computes it: its params and the variant's recipe."""
        recipe = recipe or plan.recipe(cfg, variant, pretrained=weights != "none")
        return fingerprint(plan.stage_params(cfg, variant), recipe, category, tensors, weights)

    def train_with(**values):
        return dataclasses.replace(tiny_config, train=dataclasses.replace(tiny_config.train, **values))

    key = key_of(tiny_config)
    assert key_of(tiny_config) == key
    # what the variant trains: its network, its losses, any resolved value
    other_net = dataclasses.replace(tiny_config, model=dataclasses.replace(tiny_config.model, arch="lite0_unet"))
    assert key_of(other_net) != key
    assert key_of(tiny_config, variant="B_NBR") != key
    assert key_of(tiny_config, recipe=dataclasses.replace(plan.recipe(tiny_config, "B_NBR_CaP", False),
                                                          frozen_stages=2)) != key
    assert key_of(tiny_config, weights="imagenet (lite0.pth)") != key
    assert key_of(train_with(lr=0.5)) != key
    assert key_of(tiny_config, category="fabric") != key
    changed = [t.clone() for t in tensors]
    changed[2][0, 0, 0, 0] ^= 1  # one pixel of one normal image
    assert key_of(tiny_config, tensors=changed) != key
    # knobs that do not change the model keep the snapshot usable
    chatty = dataclasses.replace(train_with(log_every=1, checkpoint_every=7),
                                 mlflow=dataclasses.replace(tiny_config.mlflow, enabled=True))
    assert key_of(chatty) == key

    store = ResumeStore(tmp_path / "resume")
    path = store.path("B", "washer", key)
    assert store.load(path) is None
    store.save(path, {"iteration": 3})
    assert store.load(path) == {"iteration": 3}
    path.write_bytes(b"not a snapshot")  # a damaged file means starting over, not failing
    assert store.load(path) is None
    store.discard([path])
    assert not (tmp_path / "resume").exists()


TINY = {"profile": "fast", "profiles": {"fast": {"image_size": 64, "iterations": 40}},
        "methods": ["B_NBR_CaP"], "train": {"checkpoint_every": 5, "eval_every": 0, "precision": "fp32"},
        "data": {"categories": ["washer"],
                 "synthetic": {"n_train_good": 6, "n_test_good": 3, "n_per_defect": 3, "size": 64}},
        "split": {"calibration_normals": 2}}  # of 6


def _models(dest):
    return torch.load(dest / "data" / "models" / "B_NBR_CaP" / "washer.pt", weights_only=False)


@pytest.mark.slow
def test_sigkilled_training_resumes_on_the_next_repro(tmp_path):
    """Kill `dvc repro` (the whole process group) mid-training; the next repro resumes from the
    snapshot and the model is the one an uninterrupted run produces."""
    dest, env = tiny_repo(tmp_path / "killed", TINY)
    run(["dvc", "repro", "split"], dest, env)
    snapshot_dir = dest / "data" / "resume" / "B_NBR_CaP"
    proc = subprocess.Popen(["dvc", "repro", "train@B_NBR_CaP"], cwd=dest, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    iteration = 0
    while time.time() < deadline and proc.poll() is None:
        snaps = list(snapshot_dir.glob("washer-*.pt")) if snapshot_dir.exists() else []
        if snaps:
            try:
                iteration = torch.load(snaps[0], weights_only=False)["iteration"]
            except Exception:  # never torn (atomic), but it may be replaced while read
                iteration = 0
            if 10 <= iteration < 40:
                break
        time.sleep(0.2)
    assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read()[-2000:]}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (dest / "data" / "models" / "B_NBR_CaP").exists()  # nothing that looks finished

    out = run(["dvc", "repro"], dest, env)
    assert "resuming at iteration" in out
    killed = _models(dest)
    assert not snapshot_dir.exists()  # a finished stage removes its snapshots
    history = pd.read_csv(dest / "data" / "models" / "B_NBR_CaP" / "washer_history.csv")
    assert history["iteration"].tolist() == list(range(1, 41))

    fresh, env2 = tiny_repo(tmp_path / "fresh", TINY)
    run(["dvc", "repro", "train@B_NBR_CaP"], fresh, env2)
    uninterrupted = _models(fresh)
    for name, tensor in uninterrupted["model"].items():
        assert torch.equal(tensor, killed["model"][name]), name
    pd.testing.assert_frame_equal(history, pd.read_csv(fresh / "data" / "models" / "B_NBR_CaP" / "washer_history.csv"))
