"""The paper's figures as PNG files (matplotlib, headless).

- :func:`plot_curves`: one line per method over a shared x (the ROC of Fig. 7, the test IoU
  during training of Fig. 9);
- :func:`qualitative_grid`: test image, ground truth and each method's prediction (Figs. 6, 8);
- :func:`cap_examples`: defect image, normal image and their crop-and-paste with its lambda
  (Fig. 10; lambda is computed by the caller).

The data behind the line plots is also written as CSV for ``dvc plots``; these functions only draw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from fsds.data.images import load_images, load_masks  # noqa: E402
from fsds.io import atomic_path  # noqa: E402


def save_figure(fig: plt.Figure, path: str | Path) -> None:
    """Write ``fig`` as PNG atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_curves(
    frame: pd.DataFrame, x: str, labels: Mapping[str, str], *, title: str, xlabel: str, ylabel: str,
    diagonal: bool = False,
) -> plt.Figure:
    """One line per column of ``frame`` named in ``labels`` (column -> legend text) against ``x``."""
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    colors = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20").colors  # one colour per method
    for i, (column, label) in enumerate(labels.items()):
        if column in frame:
            part = frame[[x, column]].dropna()
            ax.plot(part[x], part[column], label=label, linewidth=1.6, color=colors[i % len(colors)],
                    linestyle="-" if i < 10 else "--")
    if diagonal:
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _rgb(path: str, size: int) -> np.ndarray:
    return load_images([path], size, desc="figure")[0].permute(1, 2, 0).numpy()


def qualitative_grid(
    rows: Sequence[tuple[str, str]],
    predictions: Mapping[str, Sequence[np.ndarray]],
    threshold: float,
    size: int = 128,
) -> plt.Figure:
    """Rows of (test image, ground truth, one binarised prediction per method).

    ``rows`` are (image path, mask path); ``predictions`` maps a method's label to its uint8
    probability maps (0-255), one per row, at any resolution.
    """
    methods = list(predictions)
    n_cols = 2 + len(methods)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.6 * n_cols, 1.6 * len(rows)), squeeze=False)
    masks = load_masks([m for _, m in rows], size)
    for r, (image, _) in enumerate(rows):
        panels = [_rgb(image, size), masks[r, 0].numpy()]
        for method in methods:
            prob = torch.from_numpy(predictions[method][r].astype(np.float32) / 255.0)[None, None]
            prob = torch.nn.functional.interpolate(prob, size=(size, size), mode="bilinear", align_corners=False)
            panels.append((prob[0, 0] >= threshold).numpy())
        for c, (ax, panel) in enumerate(zip(axes[r], panels)):
            ax.imshow(panel, cmap=None if panel.ndim == 3 else "gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title((["image", "ground truth"] + methods)[c], fontsize=7)
    fig.tight_layout()
    return fig


def cap_examples(rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]]) -> plt.Figure:
    """Fig. 10: rows of (defect image, its mask, normal image, their crop-and-paste, lambda), images
    as uint8 ``(H, W, 3)`` and the mask as ``(H, W)`` in {0, 1}; lambda (eq. 6) is written under the
    pasted image. The caller computes lambda with the trained encoder; this only draws."""
    fig, axes = plt.subplots(len(rows), 4, figsize=(6.4, 1.7 * len(rows)), squeeze=False)
    titles = ["defect image", "mask", "normal image", "crop-and-paste"]
    for r, (image, mask, normal, pasted, lam) in enumerate(rows):
        for c, (ax, panel) in enumerate(zip(axes[r], (image, mask * 255, normal, pasted))):
            ax.imshow(panel, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=8)
        axes[r, 3].set_xlabel(f"λ = {lam:.3f}", fontsize=9)
    fig.tight_layout()
    return fig
