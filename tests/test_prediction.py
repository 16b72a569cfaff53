"""Prediction made fast: batch norms folded into convolutions give the same maps."""

import dataclasses

import pytest
import torch
from torch import nn

from fsds.engine.prediction import CPU, inference_model, predict_probabilities
from fsds.method.networks import build_model
from fsds.method.registry import NETWORKS


@pytest.mark.parametrize("arch", sorted(NETWORKS))
def test_folding_batch_norms_keeps_the_output(arch):
    torch.manual_seed(0)
    model = build_model(arch)
    model.train()
    with torch.no_grad():  # give every batch norm real running statistics
        for _ in range(3):
            model(torch.randn(2, 3, 64, 64) * 2 + 0.5)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        fast = inference_model(model, channels_last=True)
        assert sum(isinstance(m, nn.BatchNorm2d) for m in fast.modules()) == 0 < norms
        got = fast(x.contiguous(memory_format=torch.channels_last))
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= 1e-4 * max(scale, 1.0)


def test_predicted_maps_are_the_same_after_folding():
    torch.manual_seed(1)
    model = build_model("albunet34").eval()
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    before = predict_probabilities(model, images, batch_size=2)
    nhwc = dataclasses.replace(CPU, channels_last=True)
    after = predict_probabilities(inference_model(model, channels_last=True), images, nhwc, batch_size=2)
    assert before.shape == (3, 64, 64) and before.dtype == after.dtype
    assert abs(before.astype(int) - after.astype(int)).max() <= 1  # uint8 probabilities: one step at most
