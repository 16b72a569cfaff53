"""Late fusion: the few-shot segmenter and the memory of normal patches, each calibrated on the same
held-out normals, read as one map.

The memory's logit ``log(d / threshold)`` is 0 where a pixel reaches the distance that at most
``metrics.calibration_fpr`` of the held-out normals' pixels reach. The segmenter's logit is shifted by
the logit of its own calibrated threshold, so that 0 means the same there: "as unusual as the rarest
``calibration_fpr`` of normal pixels". The fused logit is the larger of the two: a pixel is defective
when either calls it so at its calibrated rate, so on normal parts the false alarms stay within
twice that rate, and each finds what it can (the segmenter its shots' defect types, sharply; the
memory anything unlike the normals).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fsds.method.memory import NormalMemory
from fsds.method.networks import Segmenter

MAX_OFFSET = 20.0  # |logit| of a calibrated threshold at a probability of 0 or 1


def logit(p: float) -> float:
    """The logit of probability ``p``, clipped to +-MAX_OFFSET."""
    p = min(max(p, 1e-9), 1 - 1e-9)
    return max(-MAX_OFFSET, min(MAX_OFFSET, math.log(p / (1 - p))))


class LateFusion(nn.Module):
    """``max(segmenter logit - offset, memory logit)``, pixel-wise, for normalised images (the
    segmenter's ``input_stats``; the memory gets its own)."""

    def __init__(self, segmenter: Segmenter, memory: NormalMemory, offset: float = 0.0) -> None:
        super().__init__()
        self.segmenter = segmenter
        self.memory = memory
        self.input_stats = segmenter.input_stats
        self.register_buffer("offset", torch.tensor(float(offset)))
        mine, theirs = segmenter.input_stats, memory.input_stats
        # x_memory = (x * std_s + mean_s - mean_m) / std_m: the same image in the memory's statistics
        scale = torch.tensor(mine.std) / torch.tensor(theirs.std)
        shift = (torch.tensor(mine.mean) - torch.tensor(theirs.mean)) / torch.tensor(theirs.std)
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)

    @property
    def arch(self) -> str:  # the segmenter's network names the model (checkpoints, MLflow tags)
        return self.segmenter.arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seg = self.segmenter(x).float() - self.offset
        mem = self.memory(x * self.scale + self.shift)
        return torch.maximum(seg, mem)
