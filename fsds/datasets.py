"""Datasets on disk: fetch or generate them, then index them as one table.

Every source ends as folders in MVTec AD layout::

    <root>/<category>/train/good/<name>.png
    <root>/<category>/test/good/<name>.png
    <root>/<category>/test/<defect_type>/<name>.png
    <root>/<category>/ground_truth/<defect_type>/<name>_mask.png

The download stage writes its output folder in one of two ways: the dataset itself
(``synthetic``, and ``magnetic_tile`` converted to that layout), or a ``SOURCE.json`` that
points at data kept elsewhere (an MVTec extraction under ``data.root`` or in the download
cache, a user's folder), so that gigabytes are not copied into the DVC cache.
:func:`index_dataset` turns the folders into a table with one row per image.
"""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from fsds.config import Config
from fsds.download import ARCHIVES, MVTEC_CATEGORIES, extract, fetch
from fsds.io import atomic_dir, image_size, read_mask, write_json
from fsds.synthetic import generate_synthetic

SOURCE_FILE = "SOURCE.json"
# Magnetic Tile: folder -> (defect type, image count published with the data set).
MAGNETIC_TILE = {
    "MT_Blowhole": ("blowhole", 115),
    "MT_Break": ("break", 85),
    "MT_Crack": ("crack", 57),
    "MT_Fray": ("fray", 32),
    "MT_Uneven": ("uneven", 103),
    "MT_Free": ("good", 952),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
INDEX_COLUMNS = ["category", "source", "defect_type", "image", "mask", "label", "mask_area", "height", "width"]


def prepare_dataset(cfg: Config, out: str | Path, downloads: str | Path) -> Path:
    """Materialise the configured dataset as ``out`` (atomically); archives are cached in ``downloads``."""
    out, downloads = Path(out), Path(downloads)
    categories = None if cfg.data.categories == "all" else list(cfg.data.categories)
    if cfg.dataset == "synthetic":
        syn = cfg.data.synthetic
        with atomic_dir(out) as tmp:
            generate_synthetic(
                tmp, cfg.seed, n_train_good=syn.n_train_good, n_test_good=syn.n_test_good,
                n_per_defect=syn.n_per_defect, size=syn.size, categories=categories,
            )
    elif cfg.dataset == "magnetic_tile":
        source = Path(cfg.data.root) if cfg.data.root else extract(fetch(ARCHIVES["magnetic_tile"], downloads), downloads / "magnetic_tile")
        with atomic_dir(out) as tmp:
            convert_magnetic_tile(source, tmp, cfg.data.test_normal_fraction)
    elif cfg.dataset == "mvtec":
        roots = [Path(cfg.data.root)] if cfg.data.root else _fetch_mvtec(cfg.data.mvtec_download, categories, downloads)
        _write_source(out, roots, categories)
    elif cfg.dataset == "folder":
        _write_source(out, [Path(cfg.data.root)], categories)
    else:  # pragma: no cover - the config rejects unknown datasets
        raise ValueError(f"dataset: {cfg.dataset!r} is not supported")
    return out


def dataset_roots(prepared: str | Path) -> list[Path]:
    """The folders in MVTec layout behind the download stage's output."""
    prepared = Path(prepared)
    source = prepared / SOURCE_FILE
    if source.is_file():
        return [Path(r) for r in json.loads(source.read_text())["roots"]]
    return [prepared]


def _fetch_mvtec(how: str, categories: list[str] | None, downloads: Path) -> list[Path]:
    if how == "full":
        return [_category_parent(extract(fetch(ARCHIVES["mvtec"], downloads), downloads / "mvtec"))]
    wanted = categories or list(MVTEC_CATEGORIES)
    unknown = [c for c in wanted if c not in MVTEC_CATEGORIES]
    if unknown:
        raise ValueError(f"data.categories: unknown MVTec AD category {unknown[0]!r}; allowed: {', '.join(MVTEC_CATEGORIES)}")
    roots = []
    for category in wanted:
        folder = extract(fetch(ARCHIVES[f"mvtec/{category}"], downloads), downloads / f"mvtec_{category}")
        roots.append(_category_parent(folder))
    return roots


def _category_parent(folder: Path) -> Path:
    """The folder holding the category folders: the extraction itself or its single top folder."""
    if list_categories(folder):
        return folder
    subdirs = [p for p in folder.iterdir() if p.is_dir()]
    if len(subdirs) == 1 and list_categories(subdirs[0]):
        return subdirs[0]
    raise ValueError(f"{folder} holds no category folder with train/good inside (MVTec AD layout expected)")


def _write_source(out: Path, roots: list[Path], categories: list[str] | None) -> None:
    """Check the roots now (a wrong data.root fails here, not in a later stage) and point at them."""
    resolved = []
    for root in roots:
        if not root.is_dir():
            raise ValueError(f"data.root: {root} does not exist or is not a folder")
        resolved.append(str(_category_parent(root).resolve()))
    found = sorted({c for r in resolved for c in list_categories(r)})
    missing = [c for c in categories or [] if c not in found]
    if missing:
        raise ValueError(f"data.categories: unknown category {missing[0]!r}; {', '.join(resolved)} has: {', '.join(found)}")
    with atomic_dir(out) as tmp:
        write_json(tmp / SOURCE_FILE, {"roots": resolved, "categories": found})


def convert_magnetic_tile(source: str | Path, out: str | Path, test_normal_fraction: float) -> None:
    """Lay the Magnetic Tile set out as one MVTec category, ``magnetic_tile``, with five defect types.

    ``source`` is the extracted repository (``MT_*/Imgs/<name>.jpg`` + ``<name>.png`` masks).
    Image counts are checked against the published ones (the zip's bytes are not stable, its
    content is). Masks are anti-aliased: they are binarised at 128. The defect-free ``MT_Free``
    images are split into the normal pool and the normal test images by a hash of their name,
    so the split never depends on the seed or on file order.
    """
    source, out = _magnetic_tile_top(Path(source)), Path(out) / "magnetic_tile"
    for folder, (defect_type, expected) in MAGNETIC_TILE.items():
        images = sorted((source / folder / "Imgs").glob("*.jpg"))
        if len(images) != expected:
            raise ValueError(f"Magnetic Tile {folder}: expected {expected} images, found {len(images)} in {source / folder}")
        for image in tqdm(images, desc=f"magnetic_tile {defect_type}", unit="img", leave=False):
            mask_path = image.with_suffix(".png")
            if not mask_path.is_file():
                raise ValueError(f"Magnetic Tile image {image} has no mask {mask_path.name}")
            if defect_type == "good":
                held_out = zlib.crc32(image.stem.encode()) % 10_000 < test_normal_fraction * 10_000
                dest = out / ("test" if held_out else "train") / "good"
            else:
                dest = out / "test" / defect_type
                masks = out / "ground_truth" / defect_type
                masks.mkdir(parents=True, exist_ok=True)
                binary = (read_mask(mask_path).astype(np.uint8)) * 255
                Image.fromarray(binary).save(masks / f"{image.stem}_mask.png")
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image, dest / image.name)


def _magnetic_tile_top(source: Path) -> Path:
    if (source / "MT_Free").is_dir():
        return source
    for child in sorted(p for p in source.iterdir() if p.is_dir()):
        if (child / "MT_Free").is_dir():
            return child
    raise ValueError(f"{source} does not look like the Magnetic Tile data set: no MT_Free folder in it or below it")


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
            raise ValueError(f"dataset folder {root} does not exist; run the download stage first")
        for category in list_categories(root):
            found.setdefault(category, root / category)
    if not found:
        raise ValueError(f"{', '.join(map(str, roots))}: no category folder with train/good inside (MVTec AD layout expected)")
    wanted = sorted(found) if categories == "all" else list(categories)
    missing = [c for c in wanted if c not in found]
    if missing:
        raise ValueError(f"data.categories: unknown category {missing[0]!r}; the dataset has: {', '.join(sorted(found))}")

    rows: list[dict] = []
    for category in wanted:
        base = found[category]
        normals = _images(base / "train" / "good")
        if not normals:
            raise ValueError(f"category {category!r} has no normal images in {base / 'train' / 'good'}")
        rows += [_row(base, "train", "good", image) for image in normals]
        test = base / "test"
        for type_dir in sorted(p for p in test.iterdir() if p.is_dir()) if test.is_dir() else []:
            gt_dir = base / "ground_truth" / type_dir.name
            if type_dir.name != "good" and not gt_dir.is_dir():
                raise ValueError(f"defect folder {type_dir} has no mask folder {gt_dir}")
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
