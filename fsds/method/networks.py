"""The segmentation networks: encoder -> decoder -> head.

``model.arch`` (or a variant's ``arch``) names one of the paper's six networks, or a lighter one:

- ``albunet34``: the baseline B, a U-Net whose encoder is ResNet-34 (smp ``Unet``, resnet34);
- ``ternausnet11`` / ``ternausnet16``: U-Net with a VGG-11 / VGG-16 encoder (smp ``Unet``, vgg11/vgg16);
- ``unetplusplus``: U-Net++ with nested dense skips (smp ``UnetPlusPlus``, resnet34 encoder);
- ``unet`` / ``attention_unet``: the original U-Net and Attention U-Net (:mod:`fsds.method.unet`);
- ``lite0_unet`` / ``lite2_unet``: U-Net with an EfficientNet-Lite0 / -Lite2 encoder (smp ``Unet``,
  ``timm-tf_efficientnet_lite0/2``), whose ImageNet weights ship inside registry packages (no download).

Every network is a :class:`Segmenter` whose ``encode`` returns the encoder's feature maps,
deepest last: Normal Background Regularization and the CaP weight lambda work on that one.
"""

from __future__ import annotations

from typing import Mapping

import segmentation_models_pytorch as smp
import torch
from torch import nn

from fsds.config import ModelConfig
from fsds.data.images import IMAGENET, SIGNED, InputStats
from fsds.method.unet import unet_parts
from fsds.method.weights import load_encoder_weights


class Segmenter(nn.Module):
    """A U-Net-like network whose ``encode`` returns the list of encoder feature maps."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, head: nn.Module, input_stats: InputStats) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.head = head
        self.input_stats = input_stats  # how its input is normalised (fsds.data.images.normalize)
        self.frozen_encoder_norms = False  # set by freeze_encoder_norms
        self.frozen_stages: list[nn.Module] = []  # set by freeze_encoder_stages (a plain list: not registered twice)

    def freeze_encoder_norms(self) -> "Segmenter":
        """Keep the encoder's batch norms at their stored running statistics in train mode too (their
        affine weights still learn): batch statistics of the 2-4 images of a few-shot batch would
        replace the pretrained ones."""
        self.frozen_encoder_norms = True
        return self.train(self.training)

    def freeze_encoder_stages(self, n: int) -> "Segmenter":
        """Keep the encoder's first ``n`` stages (:func:`encoder_stages`) as loaded: no gradients for
        their weights and their batch norms at the stored statistics. Autograd then records nothing
        below the first trainable stage, so the backward pass skips the full-resolution layers, where
        most of a CPU step goes."""
        stages = encoder_stages(self.encoder)
        if not 0 <= n <= len(stages):
            raise ValueError(f"train.frozen_encoder_stages: {n} of an encoder with {len(stages)} stages")
        self.frozen_stages = [module for stage in stages[:n] for module in stage]
        for module in self.frozen_stages:
            module.requires_grad_(False)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "Segmenter":
        super().train(mode)
        if mode and self.frozen_encoder_norms:
            for module in self.encoder.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        if mode:
            for module in self.frozen_stages:
                module.eval()
        return self

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps from full resolution down to stride 32; the last one is what NBR pools."""
        return list(self.encoder(x))

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Logits ``(B, 1, H, W)`` from the encoder's feature maps."""
        return self.head(self.decoder(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


# The input normalisation each encoder's weights expect; the rest take ImageNet's mean and std.
INPUT_STATS = {"lite0_unet": SIGNED, "lite2_unet": SIGNED}
_SMP = {  # arch -> (smp model class, encoder name)
    "albunet34": (smp.Unet, "resnet34"),
    "ternausnet11": (smp.Unet, "vgg11"),
    "ternausnet16": (smp.Unet, "vgg16"),
    "unetplusplus": (smp.UnetPlusPlus, "resnet34"),
    "lite0_unet": (smp.Unet, "timm-tf_efficientnet_lite0"),
    "lite2_unet": (smp.Unet, "timm-tf_efficientnet_lite2"),
}
# smp's decoder widths (deepest block first), made for ResNet-34's 64-512 channels; the paper's networks keep them.
SMP_DECODER_CHANNELS = (256, 128, 64, 32, 16)
# model.decoder_channels: auto, per network (reports/benchmark.md measures speed and accuracy of the widths)
DECODER_CHANNELS = {arch: SMP_DECODER_CHANNELS for arch in _SMP}


def encoder_stages(encoder: nn.Module) -> list[list[nn.Module]]:
    """The encoder's own submodules by stage, from the input: stage ``i`` (1-5) makes the feature map
    at stride ``2**i`` (the U-Nets of :mod:`fsds.method.unet`: at stride ``2**(i-1)``)."""
    if hasattr(encoder, "layer4"):  # smp's ResNet encoders
        return [[encoder.conv1, encoder.bn1], [encoder.layer1], [encoder.layer2], [encoder.layer3], [encoder.layer4]]
    if hasattr(encoder, "_stage_idxs"):  # smp's timm EfficientNet(-Lite) encoders
        bounds = [0, *encoder._stage_idxs, len(encoder.blocks)]
        return [[encoder.conv_stem, encoder.bn1]] + [list(encoder.blocks[a:b]) for a, b in zip(bounds, bounds[1:])]
    if hasattr(encoder, "features"):  # smp's VGG encoders: a stage ends at each max pool
        pools = [i for i, m in enumerate(encoder.features) if isinstance(m, nn.MaxPool2d)]
        return [list(encoder.features[a:b]) for a, b in zip([0, *pools], pools)]
    if hasattr(encoder, "levels"):  # fsds.method.unet
        return [[level] for level in encoder.levels]
    raise ValueError(f"no stage map for the encoder {type(encoder).__name__}")


def decoder_channels(cfg: ModelConfig) -> tuple[int, ...] | None:
    """The decoder widths ``cfg`` builds: its own list, else the network's (``auto``); None for the
    U-Nets of :mod:`fsds.method.unet`, whose widths are fixed."""
    if cfg.arch not in _SMP:
        return None
    return DECODER_CHANNELS[cfg.arch] if cfg.decoder_channels == "auto" else tuple(cfg.decoder_channels)


def build_model(cfg: ModelConfig, encoder_state: Mapping[str, torch.Tensor] | None = None) -> Segmenter:
    """Build the network named by ``model.arch``: random weights, or the given encoder weights."""
    if cfg.arch in _SMP:
        cls, encoder = _SMP[cfg.arch]
        net = cls(encoder_name=encoder, encoder_weights=None, classes=1, activation=None,
                  decoder_channels=list(decoder_channels(cfg)))
        model = Segmenter(net.encoder, net.decoder, net.segmentation_head, INPUT_STATS.get(cfg.arch, IMAGENET))
    elif cfg.arch in ("unet", "attention_unet"):
        model = Segmenter(*unet_parts(attention=cfg.arch == "attention_unet"), IMAGENET)
    else:
        raise ValueError(f"model.arch: unknown architecture {cfg.arch!r}")
    if encoder_state is not None:
        load_encoder_weights(model, encoder_state)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
