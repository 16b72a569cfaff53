"""A threshold from normal images: the lowest that keeps false alarms under a target rate.

The train stage predicts each category's calibration normals (normal training images the split
held out, never trained on) and picks, among the 256 levels its probability maps are stored with,
the lowest threshold at which at most ``max_fpr`` of their pixels are predicted defective.
A line operator reads it as: on parts like these, about ``max_fpr`` of a good part's pixels
raise an alarm. The threshold sits half a level below its level ``t`` (``(t - 0.5) / 255``), so
a pixel stored at level ``t`` or above is defective and one below is not, with no rounding at
the boundary.

The rate is a pixel rate, measured where it is cheap: on the maps at network resolution, under
the training precision (bf16 where the CPU has it). Applied at the images' own sizes (bilinear
upsampling) and by ``fsds predict`` in fp32, the realised rate differs a little. An image is
flagged when any pixel reaches the threshold (the paper's rule), so a pixel rate of 0.1% can
still flag many good images: ``image_fpr`` says how many of the calibration normals it flags.

The image decision is calibrated too (``min_area``): a part is defective when its predicted defect
area (the share of its pixels at or above the threshold) exceeds ``min_area``, the ``k``-th largest
area of the ``n`` calibration normals with ``k = floor(max_image_fpr * (n + 1))``. For a new good
part exchangeable with them, the chance its area exceeds the ``k``-th largest of ``n`` is ``k / (n +
1)`` (order statistics, no assumption on the scores' distribution), at most ``max_image_fpr``. With
fewer than ``1 / max_image_fpr - 1`` normals no ``k`` does; ``min_area`` is then their largest area
and ``image_reached`` False (it holds about ``1 / (n + 1)``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

LEVELS = 256
THRESHOLDS_FILE = "thresholds.json"  # the predict stage's {category: calibrated threshold or null} per variant


@dataclass(frozen=True)
class Calibration:
    threshold: float  # a pixel at or above it is a defect
    fpr: float  # the share of calibration pixels at or above it
    max_fpr: float  # the target
    images: int  # how many normal images it was picked on
    image_fpr: float  # the share of those images with at least one pixel at or above it ("any pixel" flags them)
    reached: bool  # False when even the highest level leaves more than max_fpr of the pixels defective
    min_area: float = 0.0  # the image decision: defective when the defect area exceeds it (0: any pixel)
    max_image_fpr: float = 0.0  # its target (0: not calibrated)
    image_reached: bool = False  # False when too few normals to hold max_image_fpr

    def to_dict(self) -> dict:
        return asdict(self)


def level_threshold(level: int) -> float:
    """The threshold that makes level ``level`` (of 0..255) and above defective, and nothing below."""
    return (level - 0.5) / (LEVELS - 1)


def image_threshold(areas: Sequence[float], max_image_fpr: float) -> tuple[float, bool]:
    """``(min_area, reached)`` from the defect areas of normal images: the ``k``-th largest with ``k =
    floor(max_image_fpr * (n + 1))``, so a new normal image's area exceeds it with chance ``k / (n + 1)
    <= max_image_fpr``; the largest, and ``reached`` False, when ``k`` is 0 (too few images)."""
    if not 0.0 < max_image_fpr < 1.0:
        raise ValueError(f"max_image_fpr must be in (0, 1), got {max_image_fpr}")
    ordered = np.sort(np.asarray(areas, dtype=np.float64))[::-1]
    if not len(ordered):
        raise ValueError("no calibration images: give at least one normal image")
    k = int(math.floor(max_image_fpr * (len(ordered) + 1) + 1e-9))
    return float(ordered[max(k, 1) - 1]), k >= 1


def calibrate_threshold(probs: np.ndarray | Sequence[np.ndarray], max_fpr: float,
                        max_image_fpr: float | None = None) -> Calibration:
    """The lowest threshold keeping at most ``max_fpr`` of the pixels of ``probs`` (uint8 maps of
    normal images, ``round(255 p)``: stacked ``(N, H, W)``, or a list of maps of their own sizes) at
    or above it. When no level does (more than ``max_fpr`` of the pixels at level 255), the highest
    level's threshold, with ``reached`` False. With ``max_image_fpr``, the image decision's
    ``min_area`` at that threshold too (:func:`image_threshold`)."""
    if isinstance(probs, np.ndarray):
        maps = list(probs.reshape(-1, *probs.shape[-2:])) if probs.ndim >= 2 else [probs.reshape(1, -1)]
    else:
        maps = [np.asarray(p) for p in probs]
    if any(p.dtype != np.uint8 for p in maps):
        bad = next(p.dtype for p in maps if p.dtype != np.uint8)
        raise ValueError(f"expected uint8 probability maps (round(255 p)), got {bad}")
    pixels = sum(p.size for p in maps)
    if pixels == 0:
        raise ValueError("no calibration pixels: give at least one normal image")
    if not 0.0 < max_fpr < 1.0:
        raise ValueError(f"max_fpr must be in (0, 1), got {max_fpr}")
    counts = sum(np.bincount(p.ravel(), minlength=LEVELS) for p in maps)
    share = np.cumsum(counts[::-1])[::-1] / pixels  # share[t]: pixels at level >= t
    ok = np.flatnonzero(share[1:] <= max_fpr)
    level = int(ok[0]) + 1 if len(ok) else LEVELS - 1
    flagged = np.array([bool((p >= level).any()) for p in maps])
    image = {}
    if max_image_fpr is not None:
        min_area, image_reached = image_threshold([float((p >= level).mean()) for p in maps], max_image_fpr)
        image = {"min_area": min_area, "max_image_fpr": float(max_image_fpr), "image_reached": image_reached}
    return Calibration(threshold=level_threshold(level), fpr=float(share[level]), max_fpr=float(max_fpr),
                       images=len(maps), image_fpr=float(flagged.mean()), reached=bool(len(ok)), **image)
