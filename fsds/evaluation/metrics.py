"""Segmentation and detection metrics: the paper's, and those anomaly-segmentation tools report.

- ``iou`` / ``dice``: at a threshold, **per image, then averaged** over the defective test images
  (those whose mask is not empty); the paper's figures are most likely these (its Dice is
  below ``2 IoU / (1 + IoU)`` in 200 of its 203 per-category cells; pooled counts give it exactly).
  An empty prediction on an empty mask scores 1 (``zero_division``); defective images have
  non-empty masks, so this only matters for callers that pass normal images.
- ``iou_pooled`` / ``dice_pooled``: the same from TP, FP and FN summed over **all** test images
  of a category, normal ones included (their false positives count), as a dataset-level
  confusion matrix gives them.
- Image level: an image is anomalous iff at least one pixel is predicted defective.
  ``image_acc`` and ``image_auroc`` score it by the predicted defect area (the paper's rule);
  ``image_auroc_max`` by its highest pixel probability (what anomaly-detection tools use).
- ``pixel_auroc`` over every pixel of every test image of a category, and ``aupro``: the mean
  overlap of each connected ground-truth region (8-connectivity) with the prediction, against
  the false-positive rate on defect-free pixels, integrated up to 30% FPR and divided by 0.3
  (MVTec AD's definition). Probabilities are stored with 256 levels, so both are computed
  exactly from per-level counts.
- ``*_cal``: IoU, Dice, pooled IoU and image ACC again at the model's calibrated threshold
  (``threshold_cal``: the lowest keeping false alarms on held-out normal images under
  ``metrics.calibration_fpr``, see :mod:`fsds.evaluation.threshold`); NaN for a model without one.
  At image level the calibrated decision is the model's (``min_area``, calibrated for
  ``metrics.image_fpr``): ``image_fpr_cal`` is the share of normal test images it flags (false
  alarms), ``image_miss_cal`` the share of defective ones it passes.
"""

from __future__ import annotations

import math
from typing import Collection, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from fsds.data.images import resize_probabilities
from fsds.errors import InputError
from fsds.io import read_mask

# Every metric a category gets, with the header tables print it under: the one list of metrics.
# *_cal: at the model's calibrated threshold (fsds.evaluation.threshold) instead of metrics.threshold.
HEADERS = {"iou": "IoU", "dice": "Dice", "iou_pooled": "pooled IoU", "dice_pooled": "pooled Dice",
           "image_acc": "image ACC", "image_auroc": "image AUROC", "image_auroc_max": "image AUROC (max)",
           "pixel_auroc": "pixel AUROC", "aupro": "AUPRO (30% FPR)", "iou_cal": "IoU (cal.)", "dice_cal": "Dice (cal.)",
           "iou_pooled_cal": "pooled IoU (cal.)", "image_acc_cal": "image ACC (cal.)",
           "image_fpr_cal": "image false alarms (cal.)", "image_miss_cal": "image misses (cal.)",
           "threshold_cal": "threshold (cal.)"}
METRIC_NAMES = tuple(HEADERS)
CALIBRATED_NAMES = tuple(name for name in METRIC_NAMES if name.endswith("_cal"))
LEVELS = 256
AUPRO_MAX_FPR = 0.3
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def iou_dice(pred: np.ndarray, target: np.ndarray, zero_division: float = 1.0) -> tuple[float, float]:
    """IoU = TP / (TP + FP + FN) and Dice = 2 TP / (2 TP + FP + FN) of two boolean masks."""
    pred = np.asarray(pred, dtype=bool)
    target = np.asarray(target, dtype=bool)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and mask {target.shape} differ in shape")
    return iou_dice_from_counts(*confusion(pred, target), zero_division)


def confusion(pred: np.ndarray, target: np.ndarray) -> tuple[int, int, int]:
    """TP, FP and FN pixels of two boolean masks."""
    return (int(np.count_nonzero(pred & target)), int(np.count_nonzero(pred & ~target)),
            int(np.count_nonzero(~pred & target)))


def iou_dice_from_counts(tp: int, fp: int, fn: int, zero_division: float = 1.0) -> tuple[float, float]:
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


def _at_or_above(counts: np.ndarray) -> np.ndarray:
    """Per-level counts -> pixels at level >= t, for t = 255 down to 0 (last axis)."""
    return np.cumsum(counts[..., ::-1], axis=-1)


class PixelHistogram:
    """Counts of quantised probabilities for defective and normal pixels, and per ground-truth region."""

    def __init__(self) -> None:
        self.positive = np.zeros(LEVELS, dtype=np.int64)
        self.negative = np.zeros(LEVELS, dtype=np.int64)
        self.regions: list[np.ndarray] = []  # one (LEVELS,) count per connected defect region

    def add(self, prob: np.ndarray, target: np.ndarray) -> None:
        target = np.asarray(target, dtype=bool)
        levels = np.clip(np.rint(np.asarray(prob) * (LEVELS - 1)), 0, LEVELS - 1).astype(np.int64)
        self.positive += np.bincount(levels[target], minlength=LEVELS)
        self.negative += np.bincount(levels[~target], minlength=LEVELS)
        regions, n = ndimage.label(target, structure=EIGHT_CONNECTED)
        if n:
            inside = regions > 0
            counts = np.bincount((regions[inside] - 1) * LEVELS + levels[inside], minlength=n * LEVELS)
            self.regions.extend(counts.reshape(n, LEVELS))

    def merged(self, other: "PixelHistogram") -> "PixelHistogram":
        """The counts of both (e.g. one defect type's images and the normal test images)."""
        out = PixelHistogram()
        out.positive, out.negative = self.positive + other.positive, self.negative + other.negative
        out.regions = [*self.regions, *other.regions]
        return out

    def aupro(self, max_fpr: float = AUPRO_MAX_FPR) -> float:
        """Area under the per-region-overlap curve up to ``max_fpr``, divided by ``max_fpr``.

        Thresholds are the 256 levels: at level ``t`` a pixel is predicted defective iff its level
        is ``>= t``. The curve runs from (0, 0) (nothing predicted) to (1, 1) and is integrated with
        the trapezoid rule, interpolated linearly at ``max_fpr``. NaN without regions or normal pixels.
        """
        if not self.regions or self.negative.sum() == 0:
            return math.nan
        fpr = np.r_[0.0, _at_or_above(self.negative) / self.negative.sum()]
        regions = np.stack(self.regions)
        pro = np.r_[0.0, (_at_or_above(regions) / regions.sum(axis=1, keepdims=True)).mean(axis=0)]
        end = int(np.searchsorted(fpr, max_fpr, side="right"))  # fpr is non-decreasing
        x, y = fpr[:end], pro[:end]
        if end < len(fpr) and x[-1] < max_fpr:
            step = (max_fpr - x[-1]) / (fpr[end] - x[-1])
            x, y = np.r_[x, max_fpr], np.r_[y, y[-1] + step * (pro[end] - y[-1])]
        return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2) / max_fpr)  # trapezoid rule

    def auroc(self) -> float:
        """Exact ROC AUC of the quantised scores: scikit-learn on the levels weighted by counts."""
        if self.positive.sum() == 0 or self.negative.sum() == 0:
            return math.nan
        levels = np.arange(LEVELS)
        labels = np.r_[np.ones(LEVELS), np.zeros(LEVELS)]
        weights = np.r_[self.positive, self.negative].astype(np.float64)
        keep = weights > 0
        return float(roc_auc_score(labels[keep], np.r_[levels, levels][keep], sample_weight=weights[keep]))


def evaluate_category(probs: np.ndarray, test: pd.DataFrame, threshold: float,
                      calibrated: float | None = None, min_area: float = 0.0) -> tuple[dict[str, float], pd.DataFrame]:
    """Metrics of one category from its uint8 probability maps (rows of ``probs`` follow ``test``), at
    ``threshold`` and, for the ``*_cal`` metrics, at the ``calibrated`` threshold (NaN without one),
    where an image is defective when its defect area exceeds ``min_area``."""
    if len(probs) != len(test):
        raise InputError(f"{len(probs)} probability maps for {len(test)} test images")
    hist = PixelHistogram()
    counts = np.zeros(3, dtype=np.int64)  # TP, FP, FN over every test image
    counts_cal = np.zeros(3, dtype=np.int64)  # the same at the calibrated threshold
    rows = []
    for prob_u8, row in zip(probs, test.itertuples()):
        h, w = int(row.height), int(row.width)
        prob = resize_probabilities(prob_u8, h, w)
        target = read_mask(row.mask) if row.label else np.zeros((h, w), dtype=bool)
        if target.shape != (h, w):
            raise InputError(f"mask {row.mask} is {target.shape[::-1]} but its image is {w}x{h}")
        pred = prob >= threshold
        hist.add(prob, target)
        counts += confusion(pred, target)
        # A defect filed with an empty mask has nothing to segment: it counts at image level only.
        iou, dice = iou_dice(pred, target) if row.label and target.any() else (math.nan, math.nan)
        iou_cal = dice_cal = math.nan
        anomalous_cal = -1
        if calibrated is not None:
            pred_cal = prob >= calibrated
            counts_cal += confusion(pred_cal, target)
            anomalous_cal = int(pred_cal.mean() > min_area)
            if row.label and target.any():
                iou_cal, dice_cal = iou_dice(pred_cal, target)
        rows.append(
            {
                "category": row.category,
                "defect_type": row.defect_type,
                "image": row.image,
                "label": int(row.label),
                "score": defect_area(prob, threshold),
                "max_probability": float(prob.max()),
                "anomalous": int(pred.any()),
                "iou": iou,
                "dice": dice,
                "anomalous_cal": anomalous_cal,  # -1: no calibrated threshold
                "iou_cal": iou_cal,
                "dice_cal": dice_cal,
            }
        )
    per_image = pd.DataFrame(rows)
    defective = per_image[per_image["iou"].notna()]
    labels = per_image["label"].to_numpy()
    pooled = iou_dice_from_counts(*(int(c) for c in counts)) if counts[0] + counts[2] else (math.nan, math.nan)
    summary = {
        "iou": float(defective["iou"].mean()) if len(defective) else math.nan,
        "dice": float(defective["dice"].mean()) if len(defective) else math.nan,
        "iou_pooled": pooled[0],
        "dice_pooled": pooled[1],
        "image_acc": image_accuracy(labels, per_image["score"].to_numpy()),
        "image_auroc": safe_auroc(labels, per_image["score"].to_numpy()),
        "image_auroc_max": safe_auroc(labels, per_image["max_probability"].to_numpy()),
        "pixel_auroc": hist.auroc(),
        "aupro": hist.aupro(),
        **dict.fromkeys(CALIBRATED_NAMES, math.nan),
    }
    if calibrated is not None:
        pooled_cal = iou_dice_from_counts(*(int(c) for c in counts_cal)) if counts_cal[0] + counts_cal[2] else \
            (math.nan, math.nan)
        summary.update({
            "iou_cal": float(defective["iou_cal"].mean()) if len(defective) else math.nan,
            "dice_cal": float(defective["dice_cal"].mean()) if len(defective) else math.nan,
            "iou_pooled_cal": pooled_cal[0],
            "image_acc_cal": float(np.mean(per_image["anomalous_cal"].to_numpy() == labels)),
            "image_fpr_cal": float(np.mean(per_image["anomalous_cal"].to_numpy()[labels == 0])) if (labels == 0).any()
            else math.nan,
            "image_miss_cal": float(np.mean(1 - per_image["anomalous_cal"].to_numpy()[labels == 1])) if (labels == 1).any()
            else math.nan,
            "threshold_cal": float(calibrated),
        })
    return summary, per_image


def by_defect_type(probs: Sequence[np.ndarray], test: pd.DataFrame, per_image: pd.DataFrame,
                   seen: Collection[str]) -> dict[str, dict[str, float]]:
    """Per defect type of a category's test images, and over the types ``seen`` in the shots and
    those not (``"seen"`` / ``"unseen"``): mean per-image IoU (from ``per_image``, as
    :func:`evaluate_category` returns it), pixel AUROC and AUPRO of that type's images together
    with every normal test image, and the number of images (``n``); ``seen`` 1 or 0 per type."""
    normal, per_type = PixelHistogram(), {}
    for prob_u8, row in zip(probs, test.itertuples()):
        prob = resize_probabilities(prob_u8, int(row.height), int(row.width))
        if row.label:
            per_type.setdefault(row.defect_type, PixelHistogram()).add(prob, read_mask(row.mask))
        else:
            normal.add(prob, np.zeros(prob.shape, dtype=bool))
    seen = set(seen)
    out = {}
    groups = {t: [t] for t in sorted(per_type)}
    groups["seen"] = [t for t in per_type if t in seen]
    groups["unseen"] = [t for t in per_type if t not in seen]
    for name, types in groups.items():
        if not types:
            continue
        hist = normal
        for t in types:
            hist = hist.merged(per_type[t])
        images = per_image[per_image["defect_type"].isin(types) & per_image["label"].astype(bool)]
        out[name] = {"iou": float(images["iou"].mean()) if images["iou"].notna().any() else math.nan,
                     "pixel_auroc": hist.auroc(), "aupro": hist.aupro(), "n": int(len(images))}
        if name in per_type:
            out[name]["seen"] = int(name in seen)
    return out


def mean_over_categories(per_category: dict[str, dict[str, float]]) -> dict[str, float]:
    """The paper's "Mean" row: the unweighted mean of the per-category figures (NaNs and metrics a
    category lacks, as in results from before a metric existed, skipped)."""
    out = {}
    for name in METRIC_NAMES:
        values = [m.get(name, math.nan) for m in per_category.values()]
        values = [v for v in values if not math.isnan(v)]
        out[name] = float(np.mean(values)) if values else math.nan
    return out
