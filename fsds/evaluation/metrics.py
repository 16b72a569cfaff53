"""Segmentation and detection metrics, as the paper reports them.

- IoU and Dice at a threshold, **per image, then averaged** over the defective test images
  (those whose mask is not empty).
  An empty prediction on an empty mask scores 1 (``zero_division``); defective images have
  non-empty masks, so this only matters for callers that pass normal images.
- Image level: an image is anomalous iff at least one pixel is predicted defective; its score
  is the predicted defect area. Accuracy and ROC AUC over defective + normal test images.
- Pixel AUROC over every pixel of every test image of a category (probabilities are stored
  with 256 levels, so it is computed exactly from per-level counts).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from fsds.data.images import resize_probabilities
from fsds.errors import InputError
from fsds.io import read_mask

METRIC_NAMES = ("iou", "dice", "image_acc", "image_auroc", "pixel_auroc")
LEVELS = 256


def iou_dice(pred: np.ndarray, target: np.ndarray, zero_division: float = 1.0) -> tuple[float, float]:
    """IoU = TP / (TP + FP + FN) and Dice = 2 TP / (2 TP + FP + FN) of two boolean masks."""
    pred = np.asarray(pred, dtype=bool)
    target = np.asarray(target, dtype=bool)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and mask {target.shape} differ in shape")
    tp = int(np.count_nonzero(pred & target))
    fp = int(np.count_nonzero(pred & ~target))
    fn = int(np.count_nonzero(~pred & target))
    if tp + fp + fn == 0:
        return zero_division, zero_division
    return tp / (tp + fp + fn), 2 * tp / (2 * tp + fp + fn)


def defect_area(prob: np.ndarray, threshold: float) -> float:
    """The paper's image score: the share of the image's pixels predicted defective (probability at
    or above ``threshold``), on the probability map at the image's original size."""
    return float((np.asarray(prob) >= threshold).mean())


def image_accuracy(labels: np.ndarray, scores: np.ndarray) -> float:
    """Accuracy of "anomalous iff predicted area > 0"."""
    labels = np.asarray(labels, dtype=bool)
    predicted = np.asarray(scores) > 0
    return float(np.mean(predicted == labels))


def safe_auroc(labels: np.ndarray, scores: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
    """ROC AUC, or NaN when only one class is present (AUC is undefined then)."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return math.nan
    return float(roc_auc_score(labels, scores, sample_weight=sample_weight))


class PixelHistogram:
    """Counts of quantised probabilities for defective and normal pixels."""

    def __init__(self) -> None:
        self.positive = np.zeros(LEVELS, dtype=np.int64)
        self.negative = np.zeros(LEVELS, dtype=np.int64)

    def add(self, prob: np.ndarray, target: np.ndarray) -> None:
        levels = np.clip(np.rint(np.asarray(prob) * (LEVELS - 1)), 0, LEVELS - 1).astype(np.int64).ravel()
        target = np.asarray(target, dtype=bool).ravel()
        self.positive += np.bincount(levels[target], minlength=LEVELS)
        self.negative += np.bincount(levels[~target], minlength=LEVELS)

    def auroc(self) -> float:
        """Exact ROC AUC of the quantised scores: scikit-learn on the levels weighted by counts."""
        if self.positive.sum() == 0 or self.negative.sum() == 0:
            return math.nan
        levels = np.arange(LEVELS)
        labels = np.r_[np.ones(LEVELS), np.zeros(LEVELS)]
        weights = np.r_[self.positive, self.negative].astype(np.float64)
        keep = weights > 0
        return float(roc_auc_score(labels[keep], np.r_[levels, levels][keep], sample_weight=weights[keep]))


def evaluate_category(probs: np.ndarray, test: pd.DataFrame, threshold: float) -> tuple[dict[str, float], pd.DataFrame]:
    """Metrics of one category from its uint8 probability maps (rows of ``probs`` follow ``test``)."""
    if len(probs) != len(test):
        raise InputError(f"{len(probs)} probability maps for {len(test)} test images")
    hist = PixelHistogram()
    rows = []
    for prob_u8, row in zip(probs, test.itertuples()):
        h, w = int(row.height), int(row.width)
        prob = resize_probabilities(prob_u8, h, w)
        target = read_mask(row.mask) if row.label else np.zeros((h, w), dtype=bool)
        if target.shape != (h, w):
            raise InputError(f"mask {row.mask} is {target.shape[::-1]} but its image is {w}x{h}")
        pred = prob >= threshold
        hist.add(prob, target)
        # A defect filed with an empty mask has nothing to segment: it counts at image level only.
        iou, dice = iou_dice(pred, target) if row.label and target.any() else (math.nan, math.nan)
        rows.append(
            {
                "category": row.category,
                "defect_type": row.defect_type,
                "image": row.image,
                "label": int(row.label),
                "score": defect_area(prob, threshold),
                "anomalous": int(pred.any()),
                "iou": iou,
                "dice": dice,
            }
        )
    per_image = pd.DataFrame(rows)
    defective = per_image[per_image["iou"].notna()]
    summary = {
        "iou": float(defective["iou"].mean()) if len(defective) else math.nan,
        "dice": float(defective["dice"].mean()) if len(defective) else math.nan,
        "image_acc": image_accuracy(per_image["label"].to_numpy(), per_image["score"].to_numpy()),
        "image_auroc": safe_auroc(per_image["label"].to_numpy(), per_image["score"].to_numpy()),
        "pixel_auroc": hist.auroc(),
    }
    return summary, per_image


def mean_over_categories(per_category: dict[str, dict[str, float]]) -> dict[str, float]:
    """The paper's "Mean" row: the unweighted mean of the per-category figures (NaNs skipped)."""
    out = {}
    for name in METRIC_NAMES:
        values = [m[name] for m in per_category.values() if not math.isnan(m[name])]
        out[name] = float(np.mean(values)) if values else math.nan
    return out
