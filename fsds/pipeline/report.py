"""The report of one run: the paper-format tables and the data behind the DVC plots and figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_curve

from fsds.config import Config
from fsds.data.images import Images, InputGeometry, load_images, load_masks, normalize, resize_image
from fsds.engine.checkpoint import load_checkpoint
from fsds.evaluation.figures import (
    cap_examples,
    plot_curves,
    qualitative_grid,
    save_figure,
)
from fsds.evaluation.tables import (HEADERS, category_means, check_variants, fmt, markdown_table, paper_tables,
                                    present_metrics, results_frame)
from fsds.io import atomic_path, load_probabilities, write_text
from fsds.method.augmentation import crop_and_paste
from fsds.method.losses import cap_lambda
from fsds.method.networks import Segmenter, build_model, count_parameters
from fsds.pipeline import plan

FPR_GRID = np.linspace(0.0, 1.0, 101)


def settings_line(cfg: Config) -> str:
    """The settings a reader needs to compare a report with the paper's."""
    tc = cfg.train
    batch = (f"{plan.batch_size(cfg, 1)} (1-shot) / {plan.batch_size(cfg, 5)} (more shots)"
             if tc.batch_size == "auto" else str(tc.batch_size))
    return (
        f"Dataset `{cfg.dataset}`, K per {cfg.split.unit}; profile `{cfg.profile}`: {plan.input_description(cfg)}, "
        f"{tc.iterations} iterations, batch {batch}, "
        f"Adam lr {tc.lr:g}, CaP probability {tc.cap_probability:g}, flip/rotate augmentation {'on' if tc.augment else 'off'}, "
        f"precision {tc.precision}, threshold {cfg.metrics.threshold:g}"
        + (f" and calibrated (the lowest keeping at most {cfg.metrics.calibration_fpr:g} of the pixels of "
           f"{cfg.split.calibration_normals} held-out normal images per category defective: the *cal.* columns)"
           if cfg.split.calibration_normals else "")
        + f"; networks (encoder weights): {networks_line(cfg)}. "
        "IoU and Dice are per-image means over the defective test images; image ACC/AUC treat an image as "
        "anomalous iff any pixel is predicted defective, scored by predicted area; every figure is a mean over "
        "categories unless it is per category."
    )


def networks_line(cfg: Config) -> str:
    """Each network the run's methods train, with its encoder weights and the methods on it."""
    groups: dict[tuple[str, str], list[str]] = {}
    for m in cfg.methods:
        model = plan.model_of(cfg, m)
        groups.setdefault((model.arch, model.encoder_weights), []).append(m)
    return "; ".join(f"`{arch}` (`{weights}`): {', '.join(ms)}" for (arch, weights), ms in groups.items())


def parameter_counts(cfg: Config, methods: Iterable[str]) -> dict[str, int]:
    """Trainable parameters of each method's network (NBR and CaP add none)."""
    return {m: count_parameters(build_model(plan.model_of(cfg, m).arch)) for m in methods}


def run_report(
    metrics: Mapping[str, Mapping[str, Mapping[str, float]]],
    cfg: Config,
    counts: Mapping[str, Mapping[str, int]],
    train_seconds: Mapping[str, float] | None = None,
) -> str:
    """``reports/ablation.md`` of one run: the paper's tables its methods can fill, then details."""
    frame = results_frame(metrics, cfg.shot, cfg.seed)
    categories = [c for c in next(iter(metrics.values())) if c != "mean"] if metrics else []
    parts = [
        f"# Results: {cfg.shot}-shot, seed {cfg.seed}",
        "",
        settings_line(cfg),
        "",
        paper_tables(frame, cfg.variants, paper=cfg.dataset == "mvtec", parameters=parameter_counts(cfg, metrics)),
    ]
    for name in present_metrics(category_means(frame)):
        parts += [
            f"## {HEADERS[name]} by category",
            "",
            markdown_table(
                ["category"] + [cfg.label(v) for v in metrics],
                [[c] + [fmt(metrics[v][c][name], missing="n/a") for v in metrics] for c in categories]
                + [["**mean**"] + [fmt(metrics[v]["mean"][name], missing="n/a") for v in metrics]],
            ),
            "",
        ]
    if train_seconds:
        parts += [
            "## Training wall time (all categories)",
            "",
            markdown_table(["method", "seconds"], [[cfg.label(v), f"{t:.0f}"] for v, t in train_seconds.items()]),
            "",
        ]
    if counts:
        parts += [
            "## Test images",
            "",
            markdown_table(["category", "defective", "normal"], [[c, str(n["defective"]), str(n["normal"])] for c, n in counts.items()]),
            "",
        ]
    return "\n".join(parts)


def loss_curves(histories: Mapping[str, Mapping[str, pd.DataFrame]], window: int = 10) -> pd.DataFrame:
    """Training loss per variant (mean over categories, moving average): columns iteration, <variant>..."""
    return _history_curves(histories, "loss", window)


def probe_curves(histories: Mapping[str, Mapping[str, pd.DataFrame]]) -> pd.DataFrame:
    """Test IoU during training (Fig. 9) per variant, mean over categories, at the evaluated iterations."""
    frame = _history_curves(histories, "probe_iou", 1)
    return frame.dropna(how="all", subset=[c for c in frame.columns if c != "iteration"])


def _history_curves(histories: Mapping[str, Mapping[str, pd.DataFrame]], column: str, window: int) -> pd.DataFrame:
    columns = {}
    for variant, per_category in histories.items():
        if not per_category:
            continue
        stacked = pd.concat([h.set_index("iteration")[column] for h in per_category.values() if column in h], axis=1)
        if stacked.empty:
            continue
        columns[variant] = stacked.mean(axis=1).rolling(window, min_periods=1).mean()
    frame = pd.DataFrame(columns)
    frame.index.name = "iteration"
    return frame.reset_index().round(5)


def roc_curves(per_image: pd.DataFrame) -> pd.DataFrame:
    """Image-level ROC per variant, averaged over categories on a fixed FPR grid (as the paper's Fig. 7)."""
    columns = {"fpr": FPR_GRID}
    for variant, part in per_image.groupby("variant", sort=False):
        tprs = []
        for _, cat in part.groupby("category"):
            if cat["label"].nunique() < 2:
                continue
            fpr, tpr, _ = roc_curve(cat["label"], cat["score"])
            tprs.append(np.interp(FPR_GRID, fpr, tpr))
        if tprs:
            columns[variant] = np.mean(tprs, axis=0)
    return pd.DataFrame(columns).round(5)


def count_test_images(per_image: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Defective and normal test images per category (from one variant: all share the test set)."""
    first = per_image[per_image["variant"] == per_image["variant"].iloc[0]]
    return {
        category: {"defective": int(part["label"].sum()), "normal": int((part["label"] == 0).sum())}
        for category, part in first.groupby("category")
    }


def training_seconds(models_dir: str | Path, variants: Iterable[str]) -> dict[str, float]:
    """Training wall time of each variant, summed over categories (from the train stage's timing.json)."""
    out = {}
    for variant in variants:
        timing = Path(models_dir) / variant / "timing.json"
        if timing.is_file():
            out[variant] = float(sum(json.loads(timing.read_text()).values()))
    return out


def load_histories(models_dir: str | Path, variants: Iterable[str]) -> dict[str, dict[str, pd.DataFrame]]:
    """``{variant: {category: loss history}}`` from the train stage's ``<category>_history.csv`` files."""
    return {
        v: {p.name.removesuffix("_history.csv"): pd.read_csv(p) for p in sorted((Path(models_dir) / v).glob("*_history.csv"))}
        for v in variants
    }


def example_rows(part: pd.DataFrame, categories: list[str], n: int) -> pd.DataFrame:
    """Up to ``n`` defect images with non-empty masks, taken round-robin over categories and defect types."""
    part = part[part["mask"] != ""].sort_values(["category", "defect_type", "image"])
    queues = [group for _, group in part.groupby(["category", "defect_type"], sort=True) if group["category"].iloc[0] in categories]
    picked, depth = [], 0
    while len(picked) < n and any(depth < len(q) for q in queues):
        picked += [q.iloc[depth] for q in queues if depth < len(q)][: n - len(picked)]
        depth += 1
    return pd.DataFrame(picked)


def write_figures(cfg: Config, table: pd.DataFrame, curves: Mapping[str, pd.DataFrame],
                  predictions_dir: str | Path, models_dir: str | Path, out_dir: str | Path, n_examples: int = 4) -> None:
    """The paper's figures for one run: ROC (Fig. 7), test IoU during training (Fig. 9),
    a qualitative grid (Figs. 6, 8) and crop-and-paste examples with lambda (Fig. 10)."""
    out_dir, predictions_dir, models_dir = Path(out_dir), Path(predictions_dir), Path(models_dir)
    labels = {m: cfg.label(m) for m in cfg.methods}
    shot = f"{cfg.shot}-shot, seed {cfg.seed}"
    save_figure(plot_curves(curves["roc"], "fpr", labels, title=f"Image-level ROC ({shot})",
                            xlabel="false positive rate", ylabel="true positive rate", diagonal=True), out_dir / "roc.png")
    save_figure(plot_curves(curves["probe_iou"], "iteration", labels, title=f"Test IoU during training ({shot})",
                            xlabel="iteration", ylabel=f"IoU on up to {cfg.train.eval_images} test images"),
                out_dir / "probe_iou.png")

    categories = sorted(table["category"].unique())
    test = table[table["split"] == "test"]
    rows = example_rows(test, categories, n_examples)
    predictions = {}
    for method in cfg.methods:
        maps = {}
        for category in rows["category"].unique():
            probs, images = load_probabilities(predictions_dir / method / f"{category}.npz")
            maps.update(zip(images, probs))
        predictions[labels[method]] = [maps[image] for image in rows["image"]]
    save_figure(qualitative_grid(list(zip(rows["image"], rows["mask"])), predictions, cfg.metrics.threshold),
                out_dir / "qualitative.png")

    cap_methods = [m for m in cfg.methods if cfg.variant(m).cap == "weighted"] or \
        [m for m in cfg.methods if cfg.variant(m).cap != "none"]
    if not cap_methods:
        return
    shots = table[table["split"] == "train_defect"]
    if shots.empty:  # zero shots (pseudo-defects alone): no real defect to paste
        return
    shots = example_rows(shots, categories, n_examples)
    rng = np.random.default_rng(cfg.seed)
    rows = []
    for category, group in shots.groupby("category", sort=True):
        checkpoint = load_checkpoint(models_dir / cap_methods[0] / f"{category}.pt")
        normals = table[(table["split"] == "train_normal") & (table["category"] == category)]["image"].tolist()
        picks = rng.choice(len(normals), size=len(group), replace=len(normals) < len(group))
        rows += [(checkpoint.model, checkpoint.geometry, image, mask, normals[i])
                 for image, mask, i in zip(group["image"], group["mask"], picks)]
    save_figure(cap_examples(crop_and_paste_examples(rows)), out_dir / "cap_examples.png")


@torch.no_grad()
def crop_and_paste_examples(rows: Sequence[tuple[Segmenter, InputGeometry, str, str, str]]
                            ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]]:
    """Fig. 10's panels: rows of (trained model, its input geometry, defect image, its mask, normal
    image) -> (defect image, mask, normal image, their crop-and-paste (eq. 4), lambda (eq. 6) under
    that row's model), each image as the model sees it (at a working scale, the normal image is
    resized to the defect image's shape, as the paste needs one).

    Lambda is ``|cos|`` of the pooled deepest features of the original and the pasted image.
    """
    out = []
    for model, geometry, defect, mask_path, normal_path in rows:
        model.eval()
        device = next(model.parameters()).device
        image, mask = _stacked(load_images([defect], geometry, desc="figure")), _stacked(load_masks([mask_path], geometry))
        normal = _stacked(load_images([normal_path], geometry, desc="figure"))
        if normal.shape[-2:] != image.shape[-2:]:
            normal = resize_image(normal[0].permute(1, 2, 0).numpy(), tuple(image.shape[-2:]))[None]
        pasted = (crop_and_paste(image.float(), normal.float(), mask) + 0.5).clamp(0, 255).to(torch.uint8)
        feats = model.encode(normalize(torch.cat([image, pasted]).to(device), model.input_stats))[-1].float()
        lam = float(cap_lambda(feats[:1], feats[1:])[0])
        hwc = [t[0].permute(1, 2, 0).numpy() for t in (image, normal, pasted)]
        out.append((hwc[0], mask[0, 0].numpy(), hwc[1], hwc[2], lam))
    return out


def _stacked(images: Images) -> torch.Tensor:
    """One image as a ``(1, C, H, W)`` tensor, whether loaded squashed (stacked) or at a working scale (a list)."""
    return images if isinstance(images, torch.Tensor) else torch.stack(list(images))


def write_report(cfg: Config, table: pd.DataFrame, metrics: Mapping[str, Any], per_image: pd.DataFrame,
                 predictions_dir: str | Path, models_dir: str | Path, report: str | Path, plots_dir: str | Path,
                 figures_dir: str | Path) -> None:
    """Stage report's work: the markdown tables, the plot data (CSV, for ``dvc plots``) and the figures."""
    check_variants(cfg.variants, cfg.methods)
    histories = load_histories(models_dir, cfg.methods)
    seconds = training_seconds(models_dir, cfg.methods)
    write_text(report, run_report(metrics, cfg, count_test_images(per_image), seconds))
    curves = {"train_loss": loss_curves(histories), "roc": roc_curves(per_image), "probe_iou": probe_curves(histories)}
    for name, frame in curves.items():
        with atomic_path(Path(plots_dir) / f"{name}.csv") as tmp:
            frame.to_csv(tmp, index=False)
    write_figures(cfg, table, curves, predictions_dir, models_dir, figures_dir)
