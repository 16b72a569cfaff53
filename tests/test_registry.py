"""Every entry of the network registry: it builds, its stage map covers its encoder, and its folding
rule folds every batch norm without changing what the network computes."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from fsds.engine.prediction import inference_model
from fsds.errors import ConfigError
from fsds.method import registry
from fsds.method.networks import Segmenter, build_model
from fsds.method.registry import NETWORKS, network

ARCHS = sorted(NETWORKS)


def randomise_norms(model: nn.Module, seed: int = 0) -> int:
    """Give every batch norm running statistics and affine weights far from the identity, so that a
    norm folded into the wrong convolution, or not applied, changes the output; returns how many."""
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for norm in norms:
            n = norm.num_features
            norm.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
            norm.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)  # in [0.5, 2]
            if norm.affine:
                norm.weight.copy_(torch.rand(n, generator=gen) + 0.5)  # in [0.5, 1.5]
                norm.bias.copy_(torch.randn(n, generator=gen) * 0.2)
    return len(norms)


def fold_problems(arch: str) -> list[str]:
    """What is wrong with folding network ``arch`` by its registry entry's rule (empty: nothing):
    a batch norm left in the folded network, or an output that differs from the unfolded one's."""
    torch.manual_seed(0)
    model = build_model(arch).eval()
    assert randomise_norms(model) > 0
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
        folded = inference_model(copy.deepcopy(model))
        got = folded(x)
    problems = [f"batch norm left: {name}" for name, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)]
    tolerance = 1e-4 * max(1.0, expected.abs().max().item())
    difference = (got - expected).abs().max().item()
    if not difference <= tolerance:
        problems.append(f"output differs by {difference:.3g} (tolerance {tolerance:.3g})")
    return problems


@pytest.mark.parametrize("arch", ARCHS)
def test_an_entry_builds_a_segmenter_that_normalises_as_its_weights_expect(arch):
    entry = NETWORKS[arch]
    model = build_model(arch)
    assert isinstance(model, Segmenter) and model.arch == arch
    assert model.input_stats == entry.input_stats
    assert len(entry.input_stats.mean) == 3 and len(entry.input_stats.std) == 3
    assert all(0.0 <= m <= 1.0 for m in entry.input_stats.mean) and all(s > 0 for s in entry.input_stats.std)
    assert entry.label


@pytest.mark.parametrize("arch", ARCHS)
def test_an_entrys_stage_map_splits_its_encoder_into_five_stages(arch):
    """Five non-empty stages of the encoder's own modules, no module in two, together holding every
    encoder parameter that the features depend on (what train.frozen_encoder_stages freezes)."""
    model = build_model(arch)
    stages = NETWORKS[arch].stages(model.encoder)
    assert len(stages) == 5 and all(stages)
    encoder_modules = {id(m) for m in model.encoder.modules()}
    assert all(id(module) in encoder_modules for stage in stages for module in stage)
    staged = [id(p) for stage in stages for module in stage for p in module.parameters()]
    assert len(staged) == len(set(staged))  # no parameter in two stages
    assert all(any(True for module in stage for _ in module.parameters()) for stage in stages)
    features = model.encode(torch.randn(2, 3, 64, 64))
    sum(f.float().mean() for f in features if f.requires_grad).backward()
    used = {id(p) for p in model.encoder.parameters() if p.grad is not None}
    assert used and used <= set(staged)


@pytest.mark.parametrize("arch", ARCHS)
def test_an_entrys_folding_rule_folds_every_batch_norm_and_keeps_the_output(arch):
    assert fold_problems(arch) == []


def test_the_folding_check_fails_for_a_resnet_network_without_its_pairs(monkeypatch):
    """ResNet's blocks run conv1 -> bn1 outside an nn.Sequential: with no named pairs those norms stay."""
    monkeypatch.setitem(registry.NETWORKS, "albunet34_nofolds", dataclasses.replace(NETWORKS["albunet34"], folds={}))
    problems = fold_problems("albunet34_nofolds")
    assert problems and all(p.startswith("batch norm left: encoder.") for p in problems)


def test_the_folding_check_fails_for_norms_folded_into_the_wrong_convolution(monkeypatch):
    """Every norm gone, but each block's two folded crosswise: the random statistics make the output differ."""
    crossed = {**registry.RESNET_FOLDS, "BasicBlock": (("conv1", "bn2"), ("conv2", "bn1"))}
    monkeypatch.setitem(registry.NETWORKS, "albunet34_crossed", dataclasses.replace(NETWORKS["albunet34"], folds=crossed))
    problems = fold_problems("albunet34_crossed")
    assert len(problems) == 1 and problems[0].startswith("output differs")


def test_an_unknown_network_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"^model\.arch: unknown network 'nope'; expected one of albunet34, "):
        network("nope")
    with pytest.raises(ConfigError, match=r"^variants\.X\.arch: unknown network 'nope'"):
        network("nope", "variants.X.arch")
    with pytest.raises(ConfigError, match=r"^model\.arch: unknown network 'nope'"):
        build_model("nope")


def test_the_lite_networks_name_the_package_of_their_imagenet_weights():
    lites = [a for a, n in NETWORKS.items() if n.imagenet and n.imagenet.package]
    assert lites == ["lite0_unet"]
    assert all(NETWORKS[a].imagenet.holder and not NETWORKS[a].imagenet.url for a in lites)
    assert all(n.imagenet.url.startswith("https://") for n in NETWORKS.values() if n.imagenet and not n.imagenet.package)
    assert NETWORKS["unet"].imagenet is None and NETWORKS["attention_unet"].imagenet is None
