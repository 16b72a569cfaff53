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


def random_dihedral(images: torch.Tensor, masks: torch.Tensor | None, rng) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply one of the 8 flips/90-degree rotations to each sample (the same one to its mask).

    Few-shot training sees each annotated defect hundreds of times; showing it in other
    orientations keeps the network from memorising one pose. ``rng`` is a numpy Generator,
    so the draw follows the training seed.
    """
    codes = rng.integers(0, 8, size=len(images))
    out_images = images.clone()
    out_masks = masks.clone() if masks is not None else None
    for i, code in enumerate(codes):
        out_images[i] = _dihedral(images[i], int(code))
        if masks is not None:
            out_masks[i] = _dihedral(masks[i], int(code))
    return out_images, out_masks


def _dihedral(x: torch.Tensor, code: int) -> torch.Tensor:
    """``code`` in 0..7: rotate by ``code % 4`` quarter turns, then flip left-right if ``code >= 4``."""
    x = torch.rot90(x, code % 4, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if code >= 4 else x
