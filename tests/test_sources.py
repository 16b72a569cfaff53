"""Real data sources mapped to the MVTec layout: Magnetic Tile, MVTec AD under data.root, a user's folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fsds.data.datasets import SOURCE_FILE, dataset_roots, index_dataset
from fsds.data.sources import MAGNETIC_TILE, convert_magnetic_tile, prepare_dataset
from fsds.data.split import k_shot_split
from fsds.errors import ConfigError
from tests.params import make_config

MIRROR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "magnetic_tile"
EMPTY_UNEVEN = 4


@pytest.fixture(scope="module")
def fake_magnetic_tile(tmp_path_factory) -> Path:
    """The repository's layout and counts, with tiny grayscale images of varying size."""
    top = tmp_path_factory.mktemp("mt") / "Magnetic-tile-defect-datasets.-master"
    rng = np.random.default_rng(0)
    for folder, (defect_type, count) in MAGNETIC_TILE.items():
        imgs = top / folder / "Imgs"
        imgs.mkdir(parents=True)
        for i in range(count):
            # Not square, not all the same; large enough that the anti-aliased edge below stays a
            # small share of the mask (masks that are mostly mid-grey are refused as images).
            h, w = 30 + i % 7, 40 + i % 5
            Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8), mode="L").save(imgs / f"exp{i}_num_{i}.jpg")
            mask = np.zeros((h, w), dtype=np.uint8)
            if defect_type != "good" and not (defect_type == "uneven" and i < EMPTY_UNEVEN):
                mask[2:5, 3:7] = 255
                mask[5, 3:7] = 90  # anti-aliased edge: below the binarisation threshold
                mask[1, 3:7] = 200  # above it
            Image.fromarray(mask, mode="L").save(imgs / f"exp{i}_num_{i}.png")
    (top / "README.md").write_text("not data")
    return top.parent


def test_magnetic_tile_becomes_one_mvtec_category(fake_magnetic_tile, tmp_path):
    convert_magnetic_tile(fake_magnetic_tile, tmp_path, test_normal_fraction=0.2)
    index = index_dataset(tmp_path)
    assert set(index["category"]) == {"magnetic_tile"}
    defects = index[index["label"] == 1]
    assert defects.groupby("defect_type").size().to_dict() == {"blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 103}
    normals = index[index["label"] == 0]
    assert len(normals) == 952
    assert 0.15 < (normals["source"] == "test").mean() < 0.25
    assert (defects["mask_area"] == 0).sum() == EMPTY_UNEVEN
    # binarised at 128: rows 1-4 of the mask, 4 columns
    assert set(defects.loc[defects["mask_area"] > 0, "mask_area"]) == {16}
    assert index["height"].nunique() > 1 and index["width"].nunique() > 1
    mask = np.asarray(Image.open(defects["mask"].iloc[-1]))
    assert set(np.unique(mask)) <= {0, 255}


def test_magnetic_tile_counts_are_checked(fake_magnetic_tile, tmp_path):
    victim = next((fake_magnetic_tile / "Magnetic-tile-defect-datasets.-master" / "MT_Fray" / "Imgs").glob("*.jpg"))
    moved = victim.with_suffix(".bak")
    victim.rename(moved)
    try:
        with pytest.raises(ValueError, match="MT_Fray: expected 32 images, found 31"):
            convert_magnetic_tile(fake_magnetic_tile, tmp_path, 0.2)
    finally:
        moved.rename(victim)


def test_empty_masks_are_never_shots_on_magnetic_tile(fake_magnetic_tile, tmp_path):
    convert_magnetic_tile(fake_magnetic_tile, tmp_path, 0.2)
    index = index_dataset(tmp_path)
    for unit in ("defect_type", "category"):
        table = k_shot_split(index, shot=5, seed=0, unit=unit)
        assert (table.loc[table["split"] == "train_defect", "mask_area"] > 0).all()


def test_mvtec_with_data_root_points_at_the_extraction(tiny_root, tmp_path):
    cfg = make_config({"dataset": "mvtec", "data": {"root": str(tiny_root), "categories": ["washer"]}})
    out = prepare_dataset(cfg, tmp_path / "raw", tmp_path / "downloads")
    assert [p.name for p in out.iterdir()] == [SOURCE_FILE]  # nothing copied
    assert dataset_roots(out) == [tiny_root.resolve()]
    assert set(index_dataset(dataset_roots(out), ["washer"])["category"]) == {"washer"}


def test_mvtec_bad_root_or_category_fails_early(tiny_root, tmp_path):
    missing = make_config({"dataset": "mvtec", "data": {"root": str(tmp_path / "nope")}})
    with pytest.raises(ValueError, match=r"data\.root: .*nope does not exist"):
        prepare_dataset(missing, tmp_path / "raw", tmp_path / "downloads")
    wrong = make_config({"dataset": "mvtec", "data": {"root": str(tiny_root), "categories": ["bottle"]}})
    with pytest.raises(ValueError, match=r"unknown category 'bottle'; .* has: fabric, washer"):
        prepare_dataset(wrong, tmp_path / "raw", tmp_path / "downloads")
    assert not (tmp_path / "raw").exists()


def test_folder_dataset_needs_a_root(tiny_root, tmp_path):
    with pytest.raises(ConfigError, match=r"^data\.root: dataset 'folder' needs data\.root"):
        make_config({"dataset": "folder"})
    cfg = make_config({"dataset": "folder", "data": {"root": str(tiny_root)}})
    out = prepare_dataset(cfg, tmp_path / "raw", tmp_path / "downloads")
    assert len(index_dataset(dataset_roots(out))) > 0


def test_defect_folder_without_mask_folder(tiny_root, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(tiny_root, root)
    shutil.rmtree(root / "fabric" / "ground_truth" / "stain")
    with pytest.raises(ValueError, match=r"defect folder .*test/stain has no mask folder .*ground_truth/stain"):
        index_dataset(root)


@pytest.mark.skipif(not (MIRROR / "Magnetic-tile-defect-datasets.-master.zip").is_file(), reason="no local mirror")
def test_magnetic_tile_from_the_mirror(tmp_path, monkeypatch):
    monkeypatch.setenv("FSDS_DATA_MIRROR", str(MIRROR))
    cfg = make_config({"dataset": "magnetic_tile"})
    out = prepare_dataset(cfg, tmp_path / "raw", tmp_path / "downloads")
    index = index_dataset(dataset_roots(out))
    assert index[index["label"] == 1].groupby("defect_type").size().sum() == 392
    assert ((index["label"] == 1) & (index["mask_area"] == 0)).sum() == EMPTY_UNEVEN
    # a second run reuses the download and the extraction
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "downloads").iterdir()}
    prepare_dataset(cfg, tmp_path / "raw", tmp_path / "downloads")
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "downloads").iterdir()} == before


@pytest.mark.parametrize("how", ["per_category", "full"])
def test_mvtec_download_flow_through_the_mirror(tiny_root, tmp_path, monkeypatch, how):
    """fetch -> verify -> extract -> SOURCE.json -> index, with a fake archive in the mirror folder."""
    import tarfile

    import fsds.data.sources as datasets
    from fsds.data.archives import Archive

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    name = "washer.tar.xz" if how == "per_category" else "mvtec_anomaly_detection.tar.xz"
    with tarfile.open(mirror / name, "w:xz") as tar:
        if how == "per_category":
            tar.add(tiny_root / "washer", arcname="washer")  # MVTec's per-category archives hold <category>/...
        else:
            for category in ("fabric", "washer"):
                tar.add(tiny_root / category, arcname=category)
    key = "mvtec/washer" if how == "per_category" else "mvtec"
    fake = {**datasets.ARCHIVES, key: Archive(name, f"http://127.0.0.1:9/{name}", (mirror / name).stat().st_size)}
    monkeypatch.setattr(datasets, "ARCHIVES", fake)
    monkeypatch.setattr(datasets, "MVTEC_CATEGORIES", ("fabric", "washer"))
    monkeypatch.setenv("FSDS_DATA_MIRROR", str(mirror))
    cfg = make_config({"dataset": "mvtec", "data": {"categories": ["washer"], "mvtec_download": how}})
    out = prepare_dataset(cfg, tmp_path / "raw", tmp_path / "downloads")
    roots = dataset_roots(out)
    assert all(str(r).startswith(str((tmp_path / "downloads").resolve())) for r in roots)
    index = index_dataset(roots, ["washer"])
    assert set(index["category"]) == {"washer"} and (index["label"] == 1).sum() == 12
    with pytest.raises(ValueError, match="unknown MVTec AD category 'bottle'"):
        prepare_dataset(make_config({"dataset": "mvtec", "data": {"categories": ["bottle"]}}), tmp_path / "r2", tmp_path / "downloads")
