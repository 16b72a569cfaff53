"""The segmentation network: encoder -> decoder -> head.

The baseline B of the paper is AlbuNet-34, a U-Net whose encoder is ResNet-34; the
``segmentation_models_pytorch`` U-Net with a ResNet-34 encoder has the same shape. The
encoder is exposed on its own because Normal Background Regularization and the CaP weight
lambda both work on the deepest encoder feature map.
"""

from __future__ import annotations

from typing import Any

import segmentation_models_pytorch as smp
import torch
from torch import nn

from fsds.config import ModelConfig


class Segmenter(nn.Module):
    """A U-Net-like network whose ``encode`` returns the list of encoder feature maps."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.head = head

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps from full resolution down to stride 32; the last one is what NBR pools."""
        return list(self.encoder(x))

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Logits ``(B, 1, H, W)`` from the encoder's feature maps."""
        return self.head(self.decoder(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def build_model(cfg: ModelConfig) -> Segmenter:
    """Build the network named by ``model.arch`` with randomly initialised weights."""
    if cfg.arch == "albunet34":
        net = smp.Unet(encoder_name="resnet34", encoder_weights=None, classes=1, activation=None)
        return Segmenter(net.encoder, net.decoder, net.segmentation_head)
    raise ValueError(f"model.arch: unknown architecture {cfg.arch!r}")


def model_args(cfg: ModelConfig) -> dict[str, Any]:
    """What :func:`build_model` needs to rebuild the network from a checkpoint alone."""
    return {"arch": cfg.arch, "encoder_weights": cfg.encoder_weights}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
