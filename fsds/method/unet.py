"""The two baseline networks no maintained library ships: U-Net and Attention U-Net.

- U-Net (Ronneberger et al. 2015): four 2x2 max-pool downsamplings, two 3x3 convolutions per
  level (64 -> 1024 channels), transposed-convolution upsampling and concatenated skips. Padded
  convolutions and batch norm (the common modern form) so the output has the input's size.
- Attention U-Net (Oktay et al. 2018): the same U-Net with an additive attention gate on
  every skip connection: the upsampled decoder signal ``g`` and the skip ``x`` are projected
  to a common width, ``alpha = sigmoid(psi(relu(W_g g + W_x x)))`` and the skip passes as
  ``alpha * x``.

Both split into an encoder (returning the feature map of every level, deepest last, like
smp's encoders) and a decoder, so NBR and the CaP weight see them as they see AlbuNet-34.
"""

from __future__ import annotations

import torch
from torch import nn

WIDTHS = (64, 128, 256, 512, 1024)


def double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class UNetEncoder(nn.Module):
    """Contracting path; ``forward`` returns ``[level 0 (full size), ..., level 4 (1/16)]``."""

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = WIDTHS) -> None:
        super().__init__()
        self.out_channels = widths
        self.levels = nn.ModuleList(
            double_conv(c_in, c_out) for c_in, c_out in zip((in_channels, *widths[:-1]), widths)
        )
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, level in enumerate(self.levels):
            x = level(x if i == 0 else self.pool(x))
            features.append(x)
        return features


class AttentionGate(nn.Module):
    """Additive attention on a skip connection, gated by the decoder signal at the same size."""

    def __init__(self, c_gate: int, c_skip: int, c_inner: int) -> None:
        super().__init__()
        self.w_g = nn.Sequential(nn.Conv2d(c_gate, c_inner, 1, bias=False), nn.BatchNorm2d(c_inner))
        self.w_x = nn.Sequential(nn.Conv2d(c_skip, c_inner, 1, bias=False), nn.BatchNorm2d(c_inner))
        self.psi = nn.Sequential(nn.Conv2d(c_inner, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, gate: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        alpha = self.psi(torch.relu(self.w_g(gate) + self.w_x(skip)))
        return skip * alpha


class UNetDecoder(nn.Module):
    """Expanding path over :class:`UNetEncoder`'s features; optional attention gates on the skips."""

    def __init__(self, widths: tuple[int, ...] = WIDTHS, attention: bool = False) -> None:
        super().__init__()
        deep = list(reversed(widths))  # 1024, 512, 256, 128, 64
        self.ups = nn.ModuleList(nn.ConvTranspose2d(c, c // 2, 2, stride=2) for c in deep[:-1])
        self.convs = nn.ModuleList(double_conv(c, c // 2) for c in deep[:-1])
        self.gates = (
            nn.ModuleList(AttentionGate(c // 2, c // 2, c // 4) for c in deep[:-1]) if attention else None
        )
        self.out_channels = widths[0]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for i, skip in enumerate(reversed(features[:-1])):
            x = self.ups[i](x)
            if self.gates is not None:
                skip = self.gates[i](x, skip)
            x = self.convs[i](torch.cat([skip, x], dim=1))
        return x


def unet_parts(attention: bool) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(encoder, decoder, 1x1 head) of U-Net or Attention U-Net with one output channel."""
    return UNetEncoder(), UNetDecoder(attention=attention), nn.Conv2d(WIDTHS[0], 1, 1)
