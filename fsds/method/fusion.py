"""The few-shot segmenter and the memory of normal patches as one model: late fusion of their maps
(:class:`LateFusion`), or the segmenter guided by the memory's map (:class:`MemoryGuided`).

The memory's logit ``log(d / threshold)`` is 0 where a pixel reaches the distance that at most
``metrics.calibration_fpr`` of the held-out normals' pixels reach: it finds anything unlike the
normals, of any defect type, but draws blurry masks. The segmenter draws sharp masks of the types its
shots showed, and on some parts also fires on normal structure. The fused logit is

    max(memory, min(segmenter - offset, memory + gate))

the memory everywhere, and the segmenter (counted from its threshold, ``offset``) where the memory
finds the pixel at least a little unusual: its distance at least ``exp(-gate)`` of the memory's
threshold. ``gate`` 0 is the memory alone, an infinite gate the plain maximum of the two. The gate is
calibrated on the held-out normals (:func:`choose_gate`): the largest that keeps their false alarms
within twice the memory's own, so the segmenter adds at most as many false alarms as the memory has.
(A maximum with the segmenter counted from its own calibrated threshold instead was measured first:
on transistor at 5 shots it fell to the memory's IoU, the calibrated segmenter missing most defects;
``reports/normal_memory.md``.)
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fsds.data.images import InputStats

from fsds.method.memory import NormalMemory
from fsds.method.networks import Segmenter

MAX_LOGIT = 20.0  # |logit| of a probability of 0 or 1
GATES = tuple(np.round(np.arange(0.0, 6.01, 0.25), 2)) + (math.inf,)  # the gates choose_gate tries


def logit(p: float) -> float:
    """The logit of probability ``p``, clipped to +-MAX_LOGIT."""
    p = min(max(p, 1e-9), 1 - 1e-9)
    return max(-MAX_LOGIT, min(MAX_LOGIT, math.log(p / (1 - p))))


def level_logits(maps: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 probability maps (round(255 p)) -> the logits of their levels, flattened; levels 0 and 255
    taken as half a level inside."""
    p = np.concatenate([np.asarray(m, dtype=np.float64).ravel() for m in maps]) / 255.0
    p = np.clip(p, 0.5 / 255, 254.5 / 255)
    return np.log(p / (1 - p))


def choose_gate(segmenter: np.ndarray, memory: np.ndarray, max_rate: float, gates: Sequence[float] = GATES) -> float:
    """The largest of ``gates`` at which at most ``max_rate`` of the pixels are fused defective, given the
    segmenter's logits (counted from its threshold) and the memory's at the same pixels of normal images;
    0 (the memory alone) when none is."""
    memory_hits = memory >= 0
    best = 0.0
    for gate in sorted(gates):
        rate = float((memory_hits | ((segmenter >= 0) & (memory >= -gate))).mean())
        if rate <= max_rate:
            best = gate
    return best


def restats(mine: InputStats, theirs: InputStats) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)``, each ``(1, 3, 1, 1)``, that take an image normalised in ``mine`` to the same
    image in ``theirs``: ``x * scale + shift = (x * std_m + mean_m - mean_t) / std_t``."""
    scale = torch.tensor(mine.std) / torch.tensor(theirs.std)
    shift = (torch.tensor(mine.mean) - torch.tensor(theirs.mean)) / torch.tensor(theirs.std)
    return scale.view(1, 3, 1, 1), shift.view(1, 3, 1, 1)


class LateFusion(nn.Module):
    """``max(memory, min(segmenter - offset, memory + gate))`` pixel-wise, for normalised images (the
    segmenter's ``input_stats``; the memory gets the image in its own)."""

    def __init__(self, segmenter: Segmenter, memory: NormalMemory, offset: float = 0.0, gate: float = math.inf) -> None:
        super().__init__()
        self.segmenter = segmenter
        self.memory = memory
        self.input_stats = segmenter.input_stats
        self.register_buffer("offset", torch.tensor(float(offset)))
        self.register_buffer("gate", torch.tensor(min(float(gate), 1e4)))  # finite: ONNX and state dicts keep it
        scale, shift = restats(segmenter.input_stats, memory.input_stats)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)

    @property
    def arch(self) -> str:  # the segmenter's network names the model (checkpoints, MLflow tags)
        return self.segmenter.arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seg = self.segmenter(x).float() - self.offset
        mem = self.memory(x * self.scale + self.shift)
        return torch.maximum(mem, torch.minimum(seg, mem + self.gate))


GUIDE_CLIP = 4.0  # the memory's logit is read within +-GUIDE_CLIP (a distance within e^-4..e^4 of its threshold)


class MemoryGuided(nn.Module):
    """The segmenter with the memory's map as a second input (PRN's idea, written here with the map
    instead of the feature residuals): two guide channels, the memory's logit clipped to
    +-``GUIDE_CLIP`` and scaled to +-1, and its sigmoid at twice the slope, are resized to each of the
    encoder's feature maps and added to it through a 1 x 1 convolution before the decoder, and to the
    logits through another. Every guide convolution starts at zero, so training starts from the plain
    segmenter; trained with the shots (and NBR, CaP: pasted defects are unlike the normals too), the
    decoder learns what the memory's "unlike normal" means for this part and draws its sharp masks
    there. NBR and the CaP weight see the encoder's own features (:meth:`encode`); the memory is
    frozen and gets no gradient."""

    def __init__(self, segmenter: Segmenter, memory: NormalMemory) -> None:
        super().__init__()
        self.segmenter = segmenter
        self.memory = memory
        self.input_stats = segmenter.input_stats
        scale, shift = restats(segmenter.input_stats, memory.input_stats)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)
        self.inject = nn.ModuleList(nn.Conv2d(2, c, 1) for c in encoder_widths(segmenter))
        self.to_logit = nn.Conv2d(2, 1, 1)
        for conv in (*self.inject, self.to_logit):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    @property
    def arch(self) -> str:  # the segmenter's network names the model (checkpoints, MLflow tags)
        return self.segmenter.arch

    def guide(self, x: torch.Tensor) -> torch.Tensor:
        """The guide channels ``(B, 2, H, W)`` of images ``x`` (no gradient)."""
        with torch.no_grad():
            m = self.memory(x * self.scale + self.shift).float()
        return torch.cat([m.clamp(-GUIDE_CLIP, GUIDE_CLIP) / GUIDE_CLIP, torch.sigmoid(2.0 * m)], dim=1)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The segmenter's encoder features, unguided: what NBR and the CaP weight compare."""
        return self.segmenter.encode(x)

    def segment(self, features: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 1, H, W)`` of images ``x`` from their encoder ``features``, guided by the memory."""
        g = self.guide(x)
        guided = [f + conv(F.interpolate(g, size=f.shape[-2:], mode="bilinear", align_corners=False)).to(f.dtype)
                  for f, conv in zip(features, self.inject)]
        return self.segmenter.decode(guided) + self.to_logit(g).to(features[-1].dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segment(self.encode(x), x)


def encoder_widths(segmenter: Segmenter) -> list[int]:
    """The channels of each of the segmenter's encoder feature maps (from a small probe, in eval mode)."""
    was_training = segmenter.training
    segmenter.eval()
    param = next(segmenter.parameters())
    with torch.no_grad():
        widths = [f.shape[1] for f in segmenter.encode(torch.zeros(1, 3, 64, 64, device=param.device))]
    segmenter.train(was_training)
    return widths
