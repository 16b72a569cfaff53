"""Losses of Algorithm 1: segmentation BCE, Normal Background Regularization, CaP weight; and
two segmentation losses beyond the paper for defects that cover a few pixels (``seg_loss``).

Each loss is a pure function of tensors.
Feature maps are the deepest encoder output, ``(B, C, h, w)``; masks are ``(B, 1, H, W)`` in {0, 1}.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-8


def downsample_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Mask at feature resolution: a cell is defective if any pixel inside it is.

    Max-pooling (rather than averaging) keeps features that saw a defect out of the
    "normal background" that NBR pulls towards normal images.
    """
    return F.adaptive_max_pool2d(mask.float(), size)


def masked_average(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Average of ``features`` over the positions where ``weights`` is 1: ``(B, C, h, w) -> (B, C)``."""
    total = (features * weights).sum(dim=(2, 3))
    count = weights.sum(dim=(2, 3)).clamp_min(EPS)
    return total / count


def nbr_loss(
    defect_features: torch.Tensor,
    normal_features: torch.Tensor,
    defect_mask: torch.Tensor,
    kind: str = "cosine",
) -> torch.Tensor:
    """Eqs. 1-3: pull the pooled defect-free part of defect images towards pooled normal images.

    ``cosine`` is the paper's loss, the negative cosine similarity (in [-1, 1], -1 when the two
    pooled vectors point the same way). ``euclidean`` is the Table VII ablation, the distance of
    the pooled vectors divided by sqrt(C) so its scale does not grow with the channel count.
    Masked positions do not count: the pooled vector is the mean over background cells only
    (cosine is scale-free, so this equals the paper's GAP of ``F * (1 - M)`` there).
    Samples whose whole feature map is covered by the defect have no background and are left
    out; with none left the loss is 0. Returns the mean over the batch.
    """
    background = 1.0 - downsample_mask(defect_mask, defect_features.shape[-2:])
    b = masked_average(defect_features.float(), background)  # (B, C)
    f = normal_features.float().mean(dim=(2, 3))  # (B, C)
    if kind == "cosine":
        per_sample = -F.cosine_similarity(b, f, dim=1, eps=EPS)
    elif kind == "euclidean":
        per_sample = (b - f).norm(dim=1) / math.sqrt(b.shape[1])
    else:
        raise ValueError(f"unknown NBR kind {kind!r}; expected cosine or euclidean")
    valid = background.sum(dim=(1, 2, 3)) > 0
    if not bool(valid.any()):
        return per_sample.sum() * 0.0
    return per_sample[valid].mean()


@torch.no_grad()
def cap_lambda(defect_features: torch.Tensor, pasted_features: torch.Tensor) -> torch.Tensor:
    """Eq. 6: |cos| of the pooled features of the original and the pasted image, ``(B,)`` in [0, 1].

    Computed without gradient: lambda weighs the loss, it is not itself optimised.
    """
    a = defect_features.float().mean(dim=(2, 3))
    b = pasted_features.float().mean(dim=(2, 3))
    return F.cosine_similarity(a, b, dim=1, eps=EPS).abs().clamp(0.0, 1.0)


def bce_per_image(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 7 per image, as a per-pixel mean: ``(B, 1, H, W) -> (B,)``.

    The paper writes a sum over pixels; the mean keeps the BCE on the same scale as the NBR
    term whatever the image size.
    """
    loss = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    return loss.mean(dim=(1, 2, 3))


def dice_per_image(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per image, ``1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s)``: ``(B, 1, H, W) -> (B,)``.

    Unlike the per-pixel BCE its scale does not shrink with the defect's share of the image, so a
    defect of a few pixels is not outweighed by the background. ``smooth`` keeps an empty mask
    finite: there the loss is ``sum(p) / (sum(p) + s)``, 0 for an empty prediction.
    """
    p = torch.sigmoid(logits.float())
    t = target.float()
    inter = (p * t).sum(dim=(1, 2, 3))
    total = p.sum(dim=(1, 2, 3)) + t.sum(dim=(1, 2, 3))
    return 1.0 - (2.0 * inter + smooth) / (total + smooth)


def focal_per_image(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017), ``(1 - p_t)^gamma`` times the per-pixel BCE, as a per-pixel mean:
    ``(B, 1, H, W) -> (B,)``. Easy background pixels (p_t near 1) count almost nothing; ``gamma``
    0 is the BCE."""
    logits, t = logits.float(), target.float()
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    p_t = torch.exp(-bce)  # the probability given to the true class
    return ((1.0 - p_t) ** gamma * bce).mean(dim=(1, 2, 3))


SEG_LOSSES = {
    "bce": bce_per_image,  # the paper's (eq. 7)
    "bce_dice": lambda logits, target: bce_per_image(logits, target) + dice_per_image(logits, target),
    "focal": focal_per_image,
}


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                      kind: str = "bce") -> torch.Tensor:
    """Eq. 5 (with ``weight`` = lambda per image) or eq. 7 (``weight`` None) with the per-image loss
    ``kind`` (``bce``: the paper's; ``bce_dice``; ``focal``), averaged over the batch."""
    if kind not in SEG_LOSSES:
        raise ValueError(f"unknown segmentation loss {kind!r}; expected one of {', '.join(SEG_LOSSES)}")
    per_image = SEG_LOSSES[kind](logits, target)
    if weight is not None:
        per_image = per_image * weight.to(per_image.dtype)
    return per_image.mean()


def weighted_bce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 5 (with ``weight`` = lambda per image) or eq. 7 (``weight`` None), averaged over the batch."""
    return segmentation_loss(logits, target, weight, "bce")
