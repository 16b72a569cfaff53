"""The segmentation network: encoder -> decoder -> head, built from its entry in
:mod:`fsds.method.registry` (``model.arch`` or a variant's ``arch`` names it).

Every network is a :class:`Segmenter` whose ``encode`` returns the encoder's feature maps,
deepest last: Normal Background Regularization and the CaP weight lambda work on that one.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from fsds.data.images import InputStats
from fsds.method.registry import network
from fsds.method.weights import load_encoder_weights


class Segmenter(nn.Module):
    """A U-Net-like network whose ``encode`` returns the list of encoder feature maps."""

    def __init__(self, arch: str, encoder: nn.Module, decoder: nn.Module, head: nn.Module,
                 input_stats: InputStats) -> None:
        super().__init__()
        self.arch = arch  # its key in fsds.method.registry.NETWORKS
        self.encoder = encoder
        self.decoder = decoder
        self.head = head
        self.input_stats = input_stats  # how its input is normalised (fsds.data.images.normalize)
        self.frozen_stages: list[nn.Module] = []  # set by freeze_encoder_stages (a plain list: not registered twice)

    def freeze_encoder_stages(self, n: int) -> "Segmenter":
        """Keep the encoder's first ``n`` stages (its registry entry's ``stages``) as loaded: no gradients for
        their weights and their batch norms at the stored statistics. Autograd then records nothing
        below the first trainable stage, so the backward pass skips the full-resolution layers, where
        most of a CPU step goes."""
        stages = network(self.arch).stages(self.encoder)
        if not 0 <= n <= len(stages):
            raise ValueError(f"train.frozen_encoder_stages: {n} of an encoder with {len(stages)} stages")
        self.frozen_stages = [module for stage in stages[:n] for module in stage]
        for module in self.frozen_stages:
            module.requires_grad_(False)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "Segmenter":
        super().train(mode)
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

    def segment(self, features: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Logits of images ``x`` from their encoder ``features`` (the images themselves are for models
        that also read them: :class:`fsds.method.fusion.MemoryGuided`)."""
        return self.decode(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def build_model(arch: str, encoder_state: Mapping[str, torch.Tensor] | None = None) -> Segmenter:
    """The network ``arch`` of :data:`fsds.method.registry.NETWORKS`: random weights, or the given encoder weights."""
    entry = network(arch)
    model = Segmenter(arch, *entry.parts(), entry.input_stats)
    if encoder_state is not None:
        load_encoder_weights(model, encoder_state)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
