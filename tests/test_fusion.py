"""The memory as a model: late fusion with the segmenter, checkpoints that carry the bank, and the
deployed model (fsds predict, MLflow, ONNX) computing what the predict stage computes."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from fsds.data.images import InputGeometry, InputStats, normalize
from fsds.deploy.cli import main
from fsds.deploy.model import deployed_from_checkpoint
from fsds.deploy.onnx_export import ONNX_TOLERANCE
from fsds.engine.checkpoint import load_checkpoint, memory_use, save_checkpoint
from fsds.engine.prediction import inference_model, predict_probabilities
from fsds.method.fusion import LateFusion, MemoryGuided, choose_gate, level_logits, logit
from fsds.method.memory import NormalMemory, empty_memory
from fsds.method.networks import build_model
from fsds.method.registry import IMAGENET, SIGNED


class ConstantSegmenter(nn.Module):
    """A stand-in segmenter: the same logit everywhere, and a record of its last input."""

    arch = ""

    def __init__(self, value: float, stats: InputStats = SIGNED) -> None:
        super().__init__()
        self.value, self.input_stats, self.seen = value, stats, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x
        return torch.full((x.shape[0], 1, *x.shape[-2:]), self.value)


class RecordingMemory(nn.Module):
    """A stand-in memory: a given logit map, and a record of its last input."""

    input_stats = SIGNED

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits, self.seen = logits, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x
        return self.logits


def test_late_fusion_believes_the_segmenter_where_the_memory_finds_the_pixel_unusual():
    """The memory everywhere; the segmenter (counted from its threshold) only where the memory's logit
    is at least -gate: gate 0 is the memory alone, an infinite gate the plain maximum."""
    memory_logits = torch.tensor([[[[-3.0, 0.5], [-0.5, -1.0]]]])
    x = torch.zeros(1, 3, 2, 2)
    seg = 2.0 - logit(0.5)  # the segmenter calls every pixel a defect

    def fused(gate):
        return LateFusion(ConstantSegmenter(2.0), RecordingMemory(memory_logits), logit(0.5), gate)(x)

    assert torch.equal(fused(0.0), memory_logits)  # the segmenter is never believed above the memory
    assert torch.allclose(fused(math.inf), torch.full((1, 1, 2, 2), seg).maximum(memory_logits))
    # gate 0.75: the segmenter lifts each pixel by up to 0.75, so it turns a pixel defective only where the
    # memory's logit is at least -0.75 (here -0.5); -1.0 and -3.0 stay normal
    out = fused(0.75)
    assert torch.allclose(out, memory_logits + 0.75)
    assert (out >= 0).tolist() == [[[[False, True], [True, False]]]]
    assert logit(1.0) == 20.0 and logit(0.0) == -20.0  # clipped, not infinite


def test_the_gate_is_the_largest_the_calibration_normals_allow():
    """Normal pixels: the memory's false alarms are 1%; the segmenter fires on 10% of them, where the
    memory's logit is -2 (quite normal): any gate below 2 keeps those out, 2 and above lets them in."""
    memory = np.full(1000, -5.0)
    memory[:10] = 0.5  # the memory's own false alarms: 1%
    memory[100:200] = -2.0
    segmenter = np.full(1000, -3.0)
    segmenter[100:200] = 1.0
    assert choose_gate(segmenter, memory, 0.02) == 1.75
    assert choose_gate(segmenter, memory, 0.2) == math.inf  # the maximum's 11% is allowed
    assert choose_gate(segmenter, memory, 0.005) == 0.0  # not even the memory alone keeps 0.5%: the memory
    assert level_logits([np.array([0, 128, 255], dtype=np.uint8)]).round(2).tolist() == [-6.23, 0.01, 6.23]


def test_late_fusion_gives_the_memory_the_image_in_its_own_statistics():
    segmenter, memory = ConstantSegmenter(0.0, IMAGENET), RecordingMemory(torch.zeros(1, 1, 8, 8))
    raw = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    LateFusion(segmenter, memory)(normalize(raw, IMAGENET))
    assert torch.allclose(segmenter.seen, normalize(raw, IMAGENET), atol=1e-5)
    assert torch.allclose(memory.seen, normalize(raw, SIGNED), atol=1e-5)


def _memory(seed: int = 0) -> NormalMemory:
    """A Lite0 memory (random encoder weights, a random bank) at strides 8 and 16."""
    torch.manual_seed(seed)
    layout = {"arch": "lite0_unet", "strides": [8, 16], "grid_stride": 8, "pool": 3, "k": 1, "sigma": 2.0,
              "bank_shape": [64, 40 + 112]}
    memory = empty_memory(layout)
    with torch.no_grad():
        x = normalize(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8), SIGNED)
        feats = memory.features(x)
        memory.bank.copy_(feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])[:64])
        memory.threshold.fill_(float(memory.distances(x + 0.5).median()))
    return memory.eval()


def _model(use: str) -> nn.Module:
    if use == "alone":
        return _memory()
    torch.manual_seed(1)
    if use == "late":
        return LateFusion(build_model("lite0_unet").eval(), _memory(), offset=0.7, gate=1.5)
    guided = MemoryGuided(build_model("lite0_unet"), _memory())
    with torch.no_grad():  # as if trained: the guide reaches every feature map and the logits
        for conv in (*guided.inject, guided.to_logit):
            conv.weight.normal_(0.0, 0.5)
    return guided.eval()


@pytest.mark.parametrize("use", ["alone", "late", "input"])
def test_a_checkpoint_carries_the_bank_and_rebuilds_the_same_model(tmp_path, use):
    model = _model(use)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, InputGeometry(64), 0.4, encoder_weights="imagenet", config={}, iteration=0)
    loaded = load_checkpoint(path)
    assert memory_use(loaded.model) == use and loaded.state["memory"]["use"] == use
    if use == "input":
        assert torch.equal(loaded.model.to_logit.weight, model.to_logit.weight)
    memory = loaded.model if use == "alone" else loaded.model.memory
    original = model if use == "alone" else model.memory
    assert torch.equal(memory.bank, original.bank) and float(memory.threshold) == float(original.threshold)
    if use == "late":
        assert (float(loaded.model.gate), float(loaded.model.offset)) == (1.5, model.offset.item())
    x = normalize(torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8), SIGNED)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), model(x), atol=1e-4)


@pytest.mark.parametrize("use", ["alone", "late", "input"])
def test_the_deployed_model_draws_the_predict_stages_map(tmp_path, use):
    """fsds predict's and the MLflow model's DeployedModel (folded, fp32) against the predict stage's
    path (inference_model + predict_probabilities): the same probabilities, to a uint8 level."""
    path = tmp_path / "model.pt"
    save_checkpoint(path, _model(use), InputGeometry(64), 0.5, encoder_weights="imagenet", config={}, iteration=0)
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    stage = predict_probabilities(inference_model(load_checkpoint(path).model), images, batch_size=2)
    with torch.no_grad():
        deployed = deployed_from_checkpoint(path)(images.float() / 255.0)[:, 0].numpy()
    assert np.abs(stage.astype(np.float32) - deployed * 255).max() <= 1.0
    assert (stage > 0).any() and (stage < 255).any()


@pytest.mark.parametrize("use", ["late", "input"])
def test_onnx_export_of_a_fused_model_matches_pytorch(tmp_path, use):
    import onnxruntime as ort

    model_path, onnx_path = tmp_path / "model.pt", tmp_path / "model.onnx"
    save_checkpoint(model_path, _model(use), InputGeometry(64), 0.5, encoder_weights="imagenet", config={},
                    iteration=0)
    main(["export", "--model", str(model_path), "--format", "onnx", "--out", str(onnx_path)])
    images = torch.rand((2, 3, 64, 64), generator=torch.Generator().manual_seed(3))
    got = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"images": images.numpy()})[0]
    with torch.no_grad():
        expected = deployed_from_checkpoint(model_path)(images).numpy()
    assert np.abs(got - expected).max() <= ONNX_TOLERANCE



def test_a_guided_segmenter_starts_as_the_plain_segmenter():
    """The guide's convolutions start at zero: before training, the guided model's logits are the
    segmenter's, and its encoder features (what NBR and the CaP weight compare) are the segmenter's."""
    torch.manual_seed(2)
    segmenter = build_model("lite0_unet").eval()
    guided = MemoryGuided(segmenter, _memory()).eval()
    x = normalize(torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8), SIGNED)
    with torch.no_grad():
        assert torch.equal(guided(x), segmenter(x))
        assert all(torch.equal(a, b) for a, b in zip(guided.encode(x), segmenter.encode(x)))
        guided.to_logit.bias.fill_(1.0)
        assert torch.allclose(guided(x), segmenter(x) + 1.0)


def test_the_guide_is_the_memorys_map_and_moves_the_logits_where_it_differs():
    """The guide's channels are the memory's clipped logit (scaled to +-1) and its sigmoid; a guide weight
    on the first channel moves each logit by the memory's logit there."""
    memory = _memory()
    guided = MemoryGuided(build_model("lite0_unet"), memory).eval()
    x = normalize(torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8), SIGNED)
    with torch.no_grad():
        m = memory(x)
        g = guided.guide(x)
        assert torch.allclose(g[:, 0:1], m.clamp(-4, 4) / 4) and torch.allclose(g[:, 1:2], torch.sigmoid(2 * m))
        plain = guided(x)
        guided.to_logit.weight[0, 0] = 4.0
        assert torch.allclose(guided(x) - plain, m.clamp(-4, 4), atol=1e-5)


def test_guided_training_trains_the_guide_and_leaves_the_memory_as_built(tiny_config, tiny_split):
    """Algorithm 1 with a memory (NBR and CaP on): the guide's convolutions learn, the memory's encoder,
    bank and threshold stay as the memory stage built them, and the memory given is not touched."""
    from fsds.config import Variant
    from fsds.engine.batches import load_train_data
    from tests.params import train

    memory = _memory()
    before = {k: v.clone() for k, v in memory.state_dict().items()}
    cfg = dataclasses.replace(tiny_config, train=dataclasses.replace(tiny_config.train, iterations=3, eval_every=0,
                                                                      cap_probability=1.0))
    model, _, history = train(cfg, Variant("cosine", "weighted", memory="input"), load_train_data(tiny_split, "washer", 64),
                              arch="lite0_unet", seed=0, memory=memory)
    assert isinstance(model, MemoryGuided) and memory_use(model) == "input"
    assert history["nbr"].abs().gt(0).all() and history["cap"].eq(1).all()
    assert any(conv.weight.abs().sum() > 0 for conv in (*model.inject, model.to_logit))
    for key, value in model.memory.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(torch.equal(v, before[k]) for k, v in memory.state_dict().items())
