"""Training crops at the working scale: ``size`` x ``size`` windows of images of any size.

A defect crop is drawn, with a stated probability, around a random defect pixel (uniformly among
the windows that contain it), else anywhere; its normal partner is cut at the same place of the
normal image (clamped to that image), so crop-and-paste (eq. 4) still pastes the defect where it
was, within the crop. An image smaller than the crop is first padded by repeating its edge pixels
(:func:`pad_to`), and its mask with zeros: the same padding prediction uses (:mod:`fsds.engine.prediction`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def pad_to(x: torch.Tensor, height: int, width: int, value: float | None = None) -> torch.Tensor:
    """``(..., C, h, w)`` padded at the bottom and right to at least ``height`` x ``width``: edge
    pixels repeated (``value`` None) or a constant ``value`` (masks: 0)."""
    dh, dw = max(0, height - x.shape[-2]), max(0, width - x.shape[-1])
    if not dh and not dw:
        return x
    if value is not None:
        return F.pad(x, (0, dw, 0, dh), value=value)
    squeeze = x.dim() == 3
    y = x[None] if squeeze else x
    y = F.pad(y.float(), (0, dw, 0, dh), mode="replicate").to(x.dtype)
    return y[0] if squeeze else y


def crop_origin(height: int, width: int, size: int, rng: np.random.Generator,
                mask: torch.Tensor | None = None) -> tuple[int, int]:
    """The top-left corner of a ``size`` x ``size`` window in a (padded) ``height`` x ``width`` image:
    around a random pixel of ``mask`` (``(h, w)``, non-zero = defect) if given and not empty, else
    uniform."""
    if mask is not None:
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(ys):
            k = int(rng.integers(0, len(ys)))
            y, x = int(ys[k]), int(xs[k])
            # windows holding (y, x): top in [y - size + 1, y], within the image
            top = int(rng.integers(max(0, y - size + 1), min(y, height - size) + 1))
            left = int(rng.integers(max(0, x - size + 1), min(x, width - size) + 1))
            return top, left
    return int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))


def window(x: torch.Tensor, top: int, left: int, size: int) -> torch.Tensor:
    return x[..., top : top + size, left : left + size]


def sample_crops(defect_images: Sequence[torch.Tensor], defect_masks: Sequence[torch.Tensor],
                 normal_images: Sequence[torch.Tensor], idx_d: np.ndarray, idx_n: np.ndarray, size: int,
                 defect_fraction: float, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crops for one iteration: uint8 defect crops ``(m, 3, size, size)``, their masks ``(m, 1, size,
    size)`` and normal crops at the same places (clamped to the normal image). Each defect crop is
    drawn around a defect pixel with probability ``defect_fraction`` (when its image has any), else
    anywhere (where it may hold defect pixels too)."""
    crops_d, crops_m, crops_n = [], [], []
    for i, j in zip(idx_d, idx_n):
        image = pad_to(defect_images[i], size, size)
        mask = pad_to(defect_masks[i], size, size, value=0)
        around = mask[0] if rng.random() < defect_fraction else None
        top, left = crop_origin(image.shape[-2], image.shape[-1], size, rng, around)
        crops_d.append(window(image, top, left, size))
        crops_m.append(window(mask, top, left, size))
        normal = pad_to(normal_images[j], size, size)
        top = min(top, normal.shape[-2] - size)
        left = min(left, normal.shape[-1] - size)
        crops_n.append(window(normal, top, left, size))
    return torch.stack(crops_d), torch.stack(crops_m), torch.stack(crops_n)
