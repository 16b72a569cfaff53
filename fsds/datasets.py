"""Datasets on disk: fetch or generate them, then index them as one table.

Every source ends as a folder in MVTec AD layout::

    <root>/<category>/train/good/<name>.png
    <root>/<category>/test/good/<name>.png
    <root>/<category>/test/<defect_type>/<name>.png
    <root>/<category>/ground_truth/<defect_type>/<name>_mask.png

and :func:`index_dataset` turns such a folder into a table with one row per image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from fsds.config import Config
from fsds.io import atomic_dir, image_size, read_mask
from fsds.synthetic import generate_synthetic

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
INDEX_COLUMNS = ["category", "source", "defect_type", "image", "mask", "label", "mask_area", "height", "width"]


def prepare_dataset(cfg: Config, out: str | Path) -> Path:
    """Materialise the configured dataset under ``out`` (atomically) and return the path."""
    out = Path(out)
    if cfg.dataset == "synthetic":
        syn = cfg.data.synthetic
        categories = None if cfg.data.categories == "all" else list(cfg.data.categories)
        with atomic_dir(out) as tmp:
            generate_synthetic(
                tmp,
                cfg.seed,
                n_train_good=syn.n_train_good,
                n_test_good=syn.n_test_good,
                n_per_defect=syn.n_per_defect,
                size=syn.size,
                categories=categories,
            )
        return out
    raise ValueError(f"dataset: {cfg.dataset!r} is not supported")  # config already rejects it


def list_categories(root: str | Path) -> list[str]:
    """Categories are the sub-folders of ``root`` that hold ``train/good``."""
    root = Path(root)
    return sorted(p.name for p in root.iterdir() if (p / "train" / "good").is_dir())


def index_dataset(root: str | Path, categories: Sequence[str] | str = "all") -> pd.DataFrame:
    """One row per image of an MVTec-layout folder, with its mask and defect area.

    Raises ``ValueError`` naming the file when a defect image has no mask, when a mask's size
    differs from its image, or when a requested category does not exist.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"dataset folder {root} does not exist; run the download stage first")
    available = list_categories(root)
    if not available:
        raise ValueError(f"{root} holds no category folder with train/good inside (MVTec AD layout expected)")
    wanted = available if categories == "all" else list(categories)
    missing = [c for c in wanted if c not in available]
    if missing:
        raise ValueError(f"data.categories: unknown category {missing[0]!r}; {root} has: {', '.join(available)}")

    rows: list[dict] = []
    for category in wanted:
        base = root / category
        for source in ("train", "test"):
            for type_dir in sorted(p for p in (base / source).iterdir() if p.is_dir()):
                if source == "train" and type_dir.name != "good":
                    continue  # MVTec's train split holds only good images
                for image in _images(type_dir):
                    rows.append(_row(base, category, source, type_dir.name, image))
        if not any(r["category"] == category and r["source"] == "train" for r in rows):
            raise ValueError(f"category {category!r} has no normal images in {base / 'train' / 'good'}")
    table = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    _measure(table)
    return table


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _row(base: Path, category: str, source: str, defect_type: str, image: Path) -> dict:
    label = int(defect_type != "good")
    mask = ""
    if label:
        gt_dir = base / "ground_truth" / defect_type
        candidates = [gt_dir / f"{image.stem}_mask{s}" for s in IMAGE_SUFFIXES] + [gt_dir / f"{image.stem}{s}" for s in IMAGE_SUFFIXES]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ValueError(f"defect image {image} has no mask; expected {gt_dir / (image.stem + '_mask.png')}")
        mask = str(found)
    return {"category": base.name, "source": source, "defect_type": defect_type, "image": str(image), "mask": mask, "label": label}


def _measure(table: pd.DataFrame) -> None:
    """Fill image size and mask area; check that each mask matches its image."""
    heights, widths, areas = [], [], []
    for row in tqdm(table.itertuples(), total=len(table), desc="index", unit="img", leave=False):
        h, w = image_size(row.image)
        area = 0
        if row.mask:
            mask = read_mask(row.mask)
            if mask.shape != (h, w):
                raise ValueError(
                    f"mask {row.mask} is {mask.shape[1]}x{mask.shape[0]} but image {row.image} is {w}x{h}; "
                    "they must have the same size"
                )
            area = int(np.count_nonzero(mask))
        heights.append(h)
        widths.append(w)
        areas.append(area)
    table["height"] = heights
    table["width"] = widths
    table["mask_area"] = areas
