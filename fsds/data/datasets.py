"""Datasets on disk, indexed as one table (the download stage's output: see :mod:`fsds.data.sources`).

Every source ends as folders in MVTec AD layout::

    <root>/<category>/train/good/<name>.png
    <root>/<category>/test/good/<name>.png
    <root>/<category>/test/<defect_type>/<name>.png
    <root>/<category>/ground_truth/<defect_type>/<name>_mask.png

The download stage's output folder is such a dataset, or a ``SOURCE.json`` naming where the
folders are. :func:`index_dataset` turns the folders into a table with one row per image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from fsds.errors import InputError
from fsds.io import image_size, read_mask

SOURCE_FILE = "SOURCE.json"
# Magnetic Tile: folder -> (defect type, image count published with the data set).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
INDEX_COLUMNS = ["category", "source", "defect_type", "image", "mask", "label", "mask_area", "height", "width"]


def dataset_roots(prepared: str | Path) -> list[Path]:
    """The folders in MVTec layout behind the download stage's output."""
    prepared = Path(prepared)
    source = prepared / SOURCE_FILE
    if source.is_file():
        return [Path(r) for r in json.loads(source.read_text())["roots"]]
    return [prepared]


def list_categories(root: str | Path) -> list[str]:
    """Categories are the sub-folders of ``root`` that hold ``train/good``."""
    root = Path(root)
    return sorted(p.name for p in root.iterdir() if (p / "train" / "good").is_dir())


def index_dataset(roots: str | Path | Sequence[str | Path], categories: Sequence[str] | str = "all") -> pd.DataFrame:
    """One row per image of MVTec-layout folders, with its mask, size and defect area.

    Raises ``ValueError`` naming the file when a defect image has no mask, when a mask's size
    differs from its image, when a file cannot be read, or when a requested category or a
    category's normal images are missing.
    """
    roots = [Path(roots)] if isinstance(roots, (str, Path)) else [Path(r) for r in roots]
    found: dict[str, Path] = {}
    for root in roots:
        if not root.is_dir():
            raise InputError(f"dataset folder {root} does not exist; run the download stage first")
        for category in list_categories(root):
            found.setdefault(category, root / category)
    if not found:
        raise InputError(f"{', '.join(map(str, roots))}: no category folder with train/good inside (MVTec AD layout expected)")
    wanted = sorted(found) if categories == "all" else list(categories)
    missing = [c for c in wanted if c not in found]
    if missing:
        raise InputError(f"data.categories: unknown category {missing[0]!r}; the dataset has: {', '.join(sorted(found))}")

    rows: list[dict] = []
    for category in wanted:
        base = found[category]
        normals = _images(base / "train" / "good")
        if not normals:
            raise InputError(f"category {category!r} has no normal images in {base / 'train' / 'good'}")
        rows += [_row(base, "train", "good", image) for image in normals]
        test = base / "test"
        for type_dir in sorted(p for p in test.iterdir() if p.is_dir()) if test.is_dir() else []:
            gt_dir = base / "ground_truth" / type_dir.name
            if type_dir.name != "good" and not gt_dir.is_dir():
                raise InputError(f"defect folder {type_dir} has no mask folder {gt_dir}")
            rows += [_row(base, "test", type_dir.name, image) for image in _images(type_dir)]
    table = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    _measure(table)
    return table


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _row(base: Path, source: str, defect_type: str, image: Path) -> dict:
    label = int(defect_type != "good")
    mask = ""
    if label:
        gt_dir = base / "ground_truth" / defect_type
        candidates = [gt_dir / f"{image.stem}_mask{s}" for s in IMAGE_SUFFIXES] + [gt_dir / f"{image.stem}{s}" for s in IMAGE_SUFFIXES]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise InputError(f"defect image {image} has no mask; expected {gt_dir / (image.stem + '_mask.png')}")
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
                raise InputError(
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


def empty_mask_warning(index: pd.DataFrame) -> str | None:
    """A warning listing defect images filed with an empty mask, or None if there are none."""
    empty = index[(index["label"] == 1) & (index["mask_area"] == 0)]
    if empty.empty:
        return None
    shown = ", ".join(empty["image"].head(10)) + (" ..." if len(empty) > 10 else "")
    return (
        f"warning: {len(empty)} defect images have an empty mask; they are never drawn as shots and "
        f"count at image level only: {shown}"
    )
