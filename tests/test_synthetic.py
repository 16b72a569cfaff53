"""Tests for the embedded synthetic MVTec-style dataset (fsds.data.synthetic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fsds.data.synthetic import (
    _R_IN,
    _R_OUT,
    _SHIFT,
    CATEGORIES,
    _render_sample,
    generate_synthetic,
)

SMALL = dict(n_train_good=3, n_test_good=2, n_per_defect=2, size=64)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(root, seed=7, **SMALL)
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_layout_and_file_names(dataset: Path) -> None:
    expected = set()
    for cat, types in CATEGORIES.items():
        expected |= {f"{cat}/train/good/{i:03d}.png" for i in range(3)}
        expected |= {f"{cat}/test/good/{i:03d}.png" for i in range(2)}
        for t in types:
            expected |= {f"{cat}/test/{t}/{i:03d}.png" for i in range(2)}
            expected |= {f"{cat}/ground_truth/{t}/{i:03d}_mask.png" for i in range(2)}
    assert set(_files(dataset)) == expected
    assert len(CATEGORIES) == 2 and all(len(t) == 3 for t in CATEGORIES.values())


def test_images_are_rgb_and_masks_binary_nonempty(dataset: Path) -> None:
    for img_path in dataset.glob("*/*/*/*.png"):
        if "ground_truth" in img_path.parts:
            continue
        with Image.open(img_path) as im:
            assert (im.mode, im.size) == ("RGB", (64, 64)), img_path
    for cat, types in CATEGORIES.items():
        for t in types:
            for i in range(2):
                with Image.open(dataset / cat / "ground_truth" / t / f"{i:03d}_mask.png") as m:
                    assert (m.mode, m.size) == ("L", (64, 64))
                    values = np.asarray(m)
                assert set(np.unique(values)) <= {0, 255}
                assert (values == 255).sum() >= 20, (cat, t, i)


@pytest.mark.parametrize("category,defect", [(c, t) for c, ts in CATEGORIES.items() for t in ts])
def test_mask_equals_changed_pixels(dataset: Path, category: str, defect: str) -> None:
    for i in range(2):
        on_disk = _load(dataset / category / "test" / defect / f"{i:03d}.png")
        mask = _load(dataset / category / "ground_truth" / defect / f"{i:03d}_mask.png") == 255
        clean, _, _ = _render_sample(7, category, defect, i, 64, apply_defect=False)
        changed = (on_disk != clean).any(axis=2)
        assert changed.sum() > 0
        np.testing.assert_array_equal(changed, mask)


def test_pixel_exact_at_default_size() -> None:
    # default resolution exercises the anti-aliased edges and the min-change nudge more
    for category, types in CATEGORIES.items():
        for t in types:
            img, mask, _ = _render_sample(3, category, t, 5, 256)
            clean, _, _ = _render_sample(3, category, t, 5, 256, apply_defect=False)
            np.testing.assert_array_equal((img != clean).any(axis=2), mask)


def test_same_seed_is_byte_identical(dataset: Path, tmp_path: Path) -> None:
    generate_synthetic(tmp_path, seed=7, **SMALL)
    assert _files(tmp_path) == _files(dataset)


def test_different_seed_differs(dataset: Path, tmp_path: Path) -> None:
    generate_synthetic(tmp_path, seed=8, **SMALL)
    a, b = _files(dataset), _files(tmp_path)
    assert a.keys() == b.keys()
    images = [k for k in a if not k.endswith("_mask.png")]
    assert all(a[k] != b[k] for k in images)


def test_independent_of_requested_categories(dataset: Path, tmp_path: Path) -> None:
    generate_synthetic(tmp_path, seed=7, categories=["washer"], **SMALL)
    only = _files(tmp_path)
    assert only and all(k.startswith("washer/") for k in only)
    full = _files(dataset)
    assert all(full[k] == v for k, v in only.items())


def test_unknown_category_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="carpet") as err:
        generate_synthetic(tmp_path, seed=0, categories=["fabric", "carpet"], **SMALL)
    assert "fabric" in str(err.value) and "washer" in str(err.value)
    assert not any(tmp_path.iterdir())  # validated before writing anything


def test_normal_images_all_differ(dataset: Path) -> None:
    for cat in CATEGORIES:
        normals = [_load(p) for p in sorted((dataset / cat).glob("t*/good/*.png"))]
        assert len(normals) == 5
        for i in range(len(normals)):
            for j in range(i + 1, len(normals)):
                diff = np.abs(normals[i].astype(int) - normals[j]).mean()
                assert diff > 1.0, (cat, i, j)


def test_washer_defects_lie_on_the_part(dataset: Path) -> None:
    size = 64
    yy, xx = np.mgrid[0:size, 0:size] + 0.0
    for t in CATEGORIES["washer"]:
        for i in range(2):
            mask = _load(dataset / "washer" / "ground_truth" / t / f"{i:03d}_mask.png") == 255
            _, _, part = _render_sample(7, "washer", t, i, size)
            assert not (mask & ~part).any()
            # independent geometric check: inside the ring allowing for the max centre shift
            rho = np.hypot(xx - size / 2, yy - size / 2)[mask]
            slack = _SHIFT * size * np.sqrt(2)
            assert rho.min() >= 0.97 * _R_IN * size - slack
            assert rho.max() <= 1.015 * _R_OUT * size + slack
            # and the pixels really are bright metal, not the dark conveyor or the bore
            clean, _, _ = _render_sample(7, "washer", t, i, size, apply_defect=False)
            assert clean.mean(axis=2)[mask].min() > 80
