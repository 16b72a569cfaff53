"""Crop-and-Paste (CaP): move the defect of an anomalous image onto a normal image."""

from __future__ import annotations

import torch


def crop_and_paste(defect: torch.Tensor, normal: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 4 of the paper: ``I_cap = I_d * M + I_n * (1 - M)``.

    The defect keeps its position (the paper pastes at the same place to keep the result
    realistic). ``defect`` and ``normal`` are ``(B, C, H, W)``; ``mask`` is ``(B, 1, H, W)`` in
    {0, 1} and broadcasts over channels.
    """
    if defect.shape != normal.shape:
        raise ValueError(f"defect and normal batches differ in shape: {tuple(defect.shape)} vs {tuple(normal.shape)}")
    mask = mask.to(defect.dtype)
    return defect * mask + normal * (1 - mask)
