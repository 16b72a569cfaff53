"""Where datasets come from: the download stage materialises the configured one.

The output folder is the dataset itself in MVTec AD layout (``synthetic``, generated; and
``magnetic_tile``, converted), or a ``SOURCE.json`` that points at data kept elsewhere (an MVTec
extraction under ``data.root`` or in the download cache, a user's folder), so that gigabytes are
not copied into the DVC cache. :mod:`fsds.data.datasets` indexes either.
"""

from __future__ import annotations

import shutil
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from fsds.config import Config
from fsds.data.datasets import SOURCE_FILE, list_categories
from fsds.data.archives import ARCHIVES, MVTEC_CATEGORIES
from fsds.data.download import fetch
from fsds.data.extract import extract
from fsds.data.synthetic import CATEGORIES as SYNTHETIC_CATEGORIES, generate_synthetic
from fsds.errors import InputError
from fsds.io import atomic_dir, read_mask, write_json

MAGNETIC_TILE = {
    "MT_Blowhole": ("blowhole", 115),
    "MT_Break": ("break", 85),
    "MT_Crack": ("crack", 57),
    "MT_Fray": ("fray", 32),
    "MT_Uneven": ("uneven", 103),
    "MT_Free": ("good", 952),
}

def prepare_dataset(cfg: Config, out: str | Path, downloads: str | Path) -> Path:
    """Materialise the configured dataset as ``out`` (atomically); archives are cached in ``downloads``."""
    out, downloads = Path(out), Path(downloads)
    categories = None if cfg.data.categories == "all" else list(cfg.data.categories)
    if cfg.dataset == "synthetic":
        syn = cfg.data.synthetic
        key, wanted = ("data.categories", categories) if categories else ("data.synthetic.categories", list(syn.categories))
        unknown = [c for c in wanted if c not in SYNTHETIC_CATEGORIES]
        if unknown:
            raise InputError(f"{key}: the embedded data has no category {unknown[0]!r}; "
                             f"allowed: {', '.join(SYNTHETIC_CATEGORIES)}")
        with atomic_dir(out) as tmp:
            generate_synthetic(
                tmp, syn.seed, n_train_good=syn.n_train_good, n_test_good=syn.n_test_good,
                n_per_defect=syn.n_per_defect, size=syn.size, categories=wanted,
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
        raise InputError(f"dataset: {cfg.dataset!r} is not supported")
    return out

def _fetch_mvtec(how: str, categories: list[str] | None, downloads: Path) -> list[Path]:
    if how == "full":
        return [_category_parent(extract(fetch(ARCHIVES["mvtec"], downloads), downloads / "mvtec"))]
    wanted = categories or list(MVTEC_CATEGORIES)
    unknown = [c for c in wanted if c not in MVTEC_CATEGORIES]
    if unknown:
        raise InputError(f"data.categories: unknown MVTec AD category {unknown[0]!r}; allowed: {', '.join(MVTEC_CATEGORIES)}")
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
    raise InputError(f"{folder} holds no category folder with train/good inside (MVTec AD layout expected)")

def _write_source(out: Path, roots: list[Path], categories: list[str] | None) -> None:
    """Check the roots now (a wrong data.root fails here, not in a later stage) and point at them."""
    resolved = []
    for root in roots:
        if not root.is_dir():
            raise InputError(f"data.root: {root} does not exist or is not a folder")
        resolved.append(str(_category_parent(root).resolve()))
    found = sorted({c for r in resolved for c in list_categories(r)})
    missing = [c for c in categories or [] if c not in found]
    if missing:
        raise InputError(f"data.categories: unknown category {missing[0]!r}; {', '.join(resolved)} has: {', '.join(found)}")
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
            raise InputError(f"Magnetic Tile {folder}: expected {expected} images, found {len(images)} in {source / folder}")
        for image in tqdm(images, desc=f"magnetic_tile {defect_type}", unit="img", leave=False):
            mask_path = image.with_suffix(".png")
            if not mask_path.is_file():
                raise InputError(f"Magnetic Tile image {image} has no mask {mask_path.name}")
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
    raise InputError(f"{source} does not look like the Magnetic Tile data set: no MT_Free folder in it or below it")
