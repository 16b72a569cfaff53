"""The CUDA path: training with autocast, prediction and checkpoints on a GPU.

Skipped where no CUDA device is (CI runs on CPUs); run where one is:
``pytest tests/test_cuda.py``.
"""

import dataclasses

import numpy as np
import pytest
import torch

from fsds.engine.batches import load_train_data, sample_batch
from fsds.engine.checkpoint import load_checkpoint
from fsds.engine.device import Runtime, resolve_precision
from fsds.engine.prediction import inference_model, predict_probabilities
from fsds.engine.training import train_step
from fsds.method.networks import build_model
from fsds.method.registry import IMAGENET, NETWORKS
from fsds.pipeline import plan
from fsds.pipeline.predict import predict_variant
from fsds.pipeline.tracking import Tracker
from fsds.pipeline.train import train_variant
from tests.params import recipe_for, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA = torch.device("cuda")


def _on_cuda(cfg, **train):
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device="cuda", **train))


@pytest.fixture(autouse=True)
def exact_fp32():
    """No TF32 in fp32 matrix products, so that fp32 on the GPU is comparable with the CPU."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_auto_precision_is_bf16_autocast_on_a_gpu_that_has_it():
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    assert resolve_precision("auto", CUDA) is expected
    assert resolve_precision("fp32", CUDA) is None


@pytest.mark.parametrize("arch", sorted(NETWORKS))
def test_training_with_autocast_on_the_gpu_is_finite_and_lowers_the_loss(tiny_config, tiny_split, arch):
    cfg = _on_cuda(tiny_config, precision="auto", iterations=40, image_size=64)
    assert plan.train_runtime(cfg).device.type == "cuda"
    data = load_train_data(tiny_split, "fabric", 64)
    model, _, history = train(cfg, cfg.variant("B_NBR_CaP"), data, arch=arch, seed=0)
    assert all(p.is_cuda for p in model.parameters())
    assert np.isfinite(history[["loss", "seg", "nbr"]].to_numpy()).all()
    assert history["seg"].tail(5).mean() < history["seg"].head(5).mean()


@pytest.mark.parametrize("variant", ["B", "B_NBR", "B_NBR_CaP"])
def test_a_gpu_step_in_fp32_computes_the_cpu_step(tiny_config, tiny_split, variant):
    """The same weights and the same draws give the same loss terms and gradients on both devices."""
    cfg = tiny_config
    data = load_train_data(tiny_split, "fabric", 64)
    v = dataclasses.replace(cfg.variant(variant), cap="weighted" if variant == "B_NBR_CaP" else "none")
    recipe = recipe_for(v, cfg, batch_size=2, cap_probability=1.0, augment=True, nbr_weight=1.0)
    results = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = build_model(recipe.arch).to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the step leaves the weights, grads stay
        rng = np.random.default_rng(1)
        batch = sample_batch(data, rng, recipe, IMAGENET, torch.device(device))
        terms = train_step(model, opt, batch, recipe, None)
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).cpu()
        results[device] = terms, grad
    (cpu_terms, cpu_grad), (gpu_terms, gpu_grad) = results["cpu"], results["cuda"]
    for key in ("loss", "seg", "nbr"):
        assert gpu_terms[key] == pytest.approx(cpu_terms[key], rel=1e-4, abs=1e-6), key
    # Batch norm over the 2 x 2 deepest maps of two 64 px images amplifies rounding: the H100 measured
    # 0.3-1.8% between the gradients (the loss terms agree to 1e-4); a device bug is far off.
    assert float((gpu_grad - cpu_grad).norm() / cpu_grad.norm()) < 0.05


def test_gpu_prediction_matches_the_cpu(tiny_config):
    torch.manual_seed(0)
    model = inference_model(build_model(tiny_config.model.arch))
    images = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8)
    cpu = predict_probabilities(model, images, batch_size=4).astype(int)
    gpu32 = predict_probabilities(model.to(CUDA), images, Runtime(CUDA, None, False), batch_size=4).astype(int)
    gpu16 = predict_probabilities(model, images, Runtime(CUDA, torch.bfloat16, True), batch_size=4).astype(int)
    assert np.abs(gpu32 - cpu).max() <= 1  # uint8 maps: rounding apart
    assert np.abs(gpu16 - cpu).mean() < 4.0  # bf16: a few levels of 255 on average (H100: 2.2)


def test_train_and_predict_stages_on_the_gpu_write_checkpoints_that_load_on_a_cpu(tmp_path, tiny_config, tiny_split):
    cfg = _on_cuda(tiny_config, precision="auto", iterations=6, checkpoint_every=3)
    train_variant(cfg, "B_NBR_CaP", tiny_split, tmp_path / "models", Tracker(cfg.mlflow), resume_dir=tmp_path / "resume")
    checkpoint = load_checkpoint(tmp_path / "models" / "fabric.pt", "cpu")
    assert checkpoint.state["iteration"] == 6 and all(not p.is_cuda for p in checkpoint.model.parameters())
    assert not list((tmp_path / "resume").rglob("*.pt"))  # snapshots removed once the stage is complete
    predict_variant(cfg, tiny_split, tmp_path / "models", tmp_path / "predictions")
    assert {p.name for p in (tmp_path / "predictions").iterdir()} == {"fabric.npz", "washer.npz", "scores.csv"}
