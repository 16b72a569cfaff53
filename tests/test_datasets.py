import io
import shutil

import numpy as np
import pytest
from PIL import Image

from fsds.data.datasets import index_dataset, list_categories
from fsds.data.sources import prepare_dataset
from tests.params import make_config


def test_index_of_the_synthetic_layout(tiny_root, tiny_index):
    assert list_categories(tiny_root) == ["fabric", "washer"]
    counts = tiny_index.groupby(["category", "source", "label"]).size()
    assert counts[("fabric", "train", 0)] == 6
    assert counts[("fabric", "test", 0)] == 3
    assert counts[("fabric", "test", 1)] == 12  # 3 types x 4
    defects = tiny_index[tiny_index["label"] == 1]
    assert (defects["mask_area"] > 0).all()
    assert (tiny_index.loc[tiny_index["label"] == 0, "mask"] == "").all()
    assert ((tiny_index["height"] == 64) & (tiny_index["width"] == 64)).all()


def test_category_selection_and_unknown_category(tiny_root):
    assert set(index_dataset(tiny_root, ["washer"])["category"]) == {"washer"}
    with pytest.raises(ValueError, match="unknown category 'carpet'; .* has: fabric, washer"):
        index_dataset(tiny_root, ["carpet"])
    with pytest.raises(ValueError, match="does not exist; run the download stage first"):
        index_dataset(tiny_root / "nope")


@pytest.fixture()
def copy_of(tiny_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    return root


def test_missing_mask_is_named(copy_of):
    mask = next((copy_of / "fabric" / "ground_truth" / "hole").iterdir())
    mask.unlink()
    with pytest.raises(ValueError, match=r"defect image .*hole/000\.png has no mask; expected .*000_mask\.png"):
        index_dataset(copy_of)


def test_mask_of_another_size_names_both_files(copy_of):
    mask = copy_of / "washer" / "ground_truth" / "dent" / "001_mask.png"
    Image.fromarray(np.zeros((32, 64), dtype=np.uint8)).save(mask)
    with pytest.raises(ValueError, match=r"mask .*001_mask\.png is 64x32 but image .*dent/001\.png is 64x64"):
        index_dataset(copy_of)


def test_unreadable_image_is_named(copy_of):
    (copy_of / "fabric" / "ground_truth" / "stain" / "002_mask.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read mask .*002_mask\.png"):
        index_dataset(copy_of)


def test_category_without_normals(copy_of):
    for p in (copy_of / "fabric" / "train" / "good").iterdir():
        p.unlink()
    with pytest.raises(ValueError, match=r"category 'fabric' has no normal images"):
        index_dataset(copy_of, ["fabric"])


def test_prepare_synthetic_is_atomic_and_deterministic(tmp_path):
    cfg = make_config({"data": {"categories": ["fabric"], "synthetic": {"n_train_good": 2, "n_test_good": 1, "n_per_defect": 2, "size": 32}}})
    out = prepare_dataset(cfg, tmp_path / "raw", tmp_path / "downloads")
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*.png")}
    assert list_categories(out) == ["fabric"]
    prepare_dataset(cfg, out, tmp_path / "downloads")  # replaces the folder as a whole
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*.png")} == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no temporary folder left


def _good_image(copy_of):
    return sorted((copy_of / "fabric" / "train" / "good").glob("*.png"))[0]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_is_named_when_indexed(copy_of, fmt):
    """A file cut off mid-write has an intact header: the index checks the whole file, not only its size."""
    image = _good_image(copy_of)
    data = io.BytesIO()
    Image.open(image).convert("RGB").save(data, fmt)
    blob = data.getvalue()
    image.write_bytes(blob[: len(blob) * 2 // 3])  # same name: the layout still lists it
    with pytest.raises(ValueError, match=rf"cannot read image .*{image.name}.*replace or remove the file"):
        index_dataset(copy_of)


def test_colour_mask_is_refused_by_name(copy_of):
    mask = sorted((copy_of / "fabric" / "ground_truth" / "stain").glob("*.png"))[0]
    grey = np.asarray(Image.open(mask).convert("L"))
    rgb = np.stack([grey, np.zeros_like(grey), np.zeros_like(grey)], axis=-1)  # a red annotation
    Image.fromarray(rgb).save(mask)
    with pytest.raises(ValueError, match=rf"mask .*{mask.name} is a colour image; masks must be grayscale"):
        index_dataset(copy_of)


def test_image_filed_as_a_mask_is_refused(copy_of):
    mask = sorted((copy_of / "fabric" / "ground_truth" / "stain").glob("*.png"))[0]
    h, w = np.asarray(Image.open(mask)).shape[:2]
    ramp = np.tile(np.linspace(0, 255, w, dtype=np.uint8), (h, 1))  # a grey photograph, not a mask
    Image.fromarray(ramp).save(mask)
    with pytest.raises(ValueError, match=rf"mask .*{mask.name} is not binary: \d+% of its pixels are mid-grey"):
        index_dataset(copy_of)


def test_grey_mask_saved_as_rgb_and_antialiased_edges_are_accepted(copy_of):
    mask = sorted((copy_of / "fabric" / "ground_truth" / "stain").glob("*.png"))[0]
    grey = np.asarray(Image.open(mask).convert("L")).copy()
    edge = np.argwhere(grey > 127)[:3]
    grey[tuple(edge.T)] = 160  # a few anti-aliased pixels
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(mask)
    index = index_dataset(copy_of)
    assert index.loc[index["mask"] == str(mask), "mask_area"].item() == np.count_nonzero(grey > 127)
