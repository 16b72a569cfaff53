"""Pseudo-defects from the normal pool (issue 20): the generator and how training mixes them in."""


import numpy as np
import pytest
import torch

import fsds.engine.batches as batches
from fsds.config import ConfigError, Variant
from fsds.data.split import k_shot_split
from fsds.engine.batches import TrainData, load_train_data, sample_batch
from fsds.errors import InputError
from fsds.method.pseudo_defects import KINDS, draw_region, foreground, pseudo_defect
from fsds.method.registry import IMAGENET
from tests.params import make_config, recipe_for, train

SYN = Variant("none", "none", synthetic=True)
SYN_CAP = Variant("cosine", "weighted", synthetic=True)
CPU = torch.device("cpu")


def draws(variant: Variant, m: int, cap_probability: float, augment: bool, defect_crop_fraction: float = 1.0,
          synthetic_fraction: float = 0.0, synthetic_confine: bool = False):
    """The recipe of ``variant`` with the values :func:`sample_batch` draws with."""
    return recipe_for(variant, batch_size=m, cap_probability=cap_probability, augment=augment,
                      defect_crop_fraction=defect_crop_fraction, synthetic_fraction=synthetic_fraction,
                      synthetic_confine=synthetic_confine)


def textured(seed: int, h: int = 64, w: int = 80) -> torch.Tensor:
    """A normal image with texture everywhere (so any change of a region shows)."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, size=(3, h, w), dtype=np.uint8))


def part_on_plain_background() -> torch.Tensor:
    """A textured square (the part) on a uniform grey background."""
    image = torch.full((3, 64, 64), 90, dtype=torch.uint8)
    rng = np.random.default_rng(5)
    image[:, 20:44, 16:48] = torch.from_numpy(rng.integers(160, 256, size=(3, 24, 32), dtype=np.uint8))
    return image


@pytest.mark.parametrize("seed", range(12))
def test_the_mask_is_exactly_the_pixels_that_changed(seed):
    pool = [textured(100 + i) for i in range(3)]
    image = textured(seed)
    out, mask = pseudo_defect(image, pool, np.random.default_rng(seed), confine=False)
    assert out.shape == image.shape and out.dtype == torch.uint8
    assert mask.shape == (1, 64, 80) and mask.dtype == torch.uint8
    changed = (out != image).any(dim=0)
    assert torch.equal(mask[0].bool(), changed)
    assert 0 < int(mask.sum()) < 0.5 * mask.numel()


def test_each_kind_of_change_is_drawn_and_leaves_a_mask():
    pool = [textured(100)]
    seen = set()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        state = rng.bit_generator.state
        _, mask = pseudo_defect(textured(seed), pool, rng, confine=False)
        assert mask.any()
        # the kind is the draw after the first region's: replay to find it
        replay = np.random.default_rng()
        replay.bit_generator.state = state
        draw_region(64, 80, replay)
        seen.add(KINDS[int(replay.integers(0, len(KINDS)))])
    assert seen == set(KINDS)


def test_the_same_seed_gives_the_same_pseudo_defects():
    pool = [textured(100 + i) for i in range(3)]
    a = [pseudo_defect(textured(s), pool, np.random.default_rng(7)) for s in range(3)]
    b = [pseudo_defect(textured(s), pool, np.random.default_rng(7)) for s in range(3)]
    for (img_a, mask_a), (img_b, mask_b) in zip(a, b):
        assert torch.equal(img_a, img_b) and torch.equal(mask_a, mask_b)
    other = pseudo_defect(textured(0), pool, np.random.default_rng(8))
    assert not torch.equal(other[1], a[0][1])


def test_the_foreground_of_a_part_on_a_plain_background():
    image = part_on_plain_background()
    part = foreground(image.permute(1, 2, 0).numpy())
    assert part is not None
    expected = np.zeros((64, 64), dtype=bool)
    expected[20:44, 16:48] = True
    assert (part == expected).mean() > 0.97
    # a texture filling the frame has no plain background: anywhere may hold a defect
    assert foreground(textured(0).permute(1, 2, 0).numpy()) is None


def test_confined_pseudo_defects_land_on_the_part_only():
    image = part_on_plain_background()
    pool = [textured(100)]
    outside = torch.ones((64, 64), dtype=torch.bool)
    outside[20:44, 16:48] = False
    hits = 0
    for seed in range(20):
        out, mask = pseudo_defect(image, pool, np.random.default_rng(seed), confine=True)
        assert not mask[0][outside].any()
        assert torch.equal(out[:, outside], image[:, outside])
        hits += int(mask.any())
    assert hits >= 15
    # unconfined, some land on the background
    spilled = sum(bool(pseudo_defect(image, pool, np.random.default_rng(s), confine=False)[1][0][outside].any())
                  for s in range(20))
    assert spilled >= 5


def _data(n_shots: int, n_normals: int = 4) -> TrainData:
    shots = torch.full((n_shots, 3, 64, 64), 250, dtype=torch.uint8)  # the shots: a colour no normal has
    masks = torch.zeros((n_shots, 1, 64, 64), dtype=torch.uint8)
    masks[:, :, 10:20, 10:20] = 1
    normals = torch.stack([textured(i, 64, 64) // 2 for i in range(n_normals)])  # values below 128
    return TrainData(shots, masks, [f"shot{i}.png" for i in range(n_shots)], normals)


def test_pseudo_defects_go_on_normal_images_with_textures_of_the_normal_pool(monkeypatch):
    data = _data(1)
    calls = []

    def spy(image, pool, rng, confine):
        calls.append((image, pool, confine))
        return pseudo_defect(image, pool, rng, confine)

    monkeypatch.setattr(batches, "pseudo_defect", spy)
    rng = np.random.default_rng(0)
    names = []
    for _ in range(20):
        batch = sample_batch(data, rng, draws(SYN, 4, 0.5, False, synthetic_fraction=0.5, synthetic_confine=True),
                             IMAGENET, CPU)
        names += batch.names
    assert 20 < len(calls) < 60 and names.count("pseudo-defect") == len(calls)
    assert set(names) == {"pseudo-defect", "shot0.png"}
    for image, pool, confine in calls:
        assert pool is data.normal_images  # textures come from the normal pool only
        assert any(torch.equal(image, normal) for normal in data.normal_images)  # hosts are normal images
        assert confine


def test_zero_shots_train_on_pseudo_defects_alone():
    data = _data(0)
    rng = np.random.default_rng(0)
    batch = sample_batch(data, rng, draws(SYN_CAP, 2, 1.0, False, synthetic_fraction=0.5), IMAGENET, CPU)
    assert batch.names == ["pseudo-defect"] * 2
    with pytest.raises(InputError, match="synthetic: true"):
        sample_batch(data, rng, draws(Variant("none", "none"), 2, 0.5, False), IMAGENET, CPU)


def test_variants_without_pseudo_defects_draw_as_before():
    """A variant without ``synthetic`` takes exactly the draws Algorithm 1 took before pseudo-defects
    existed (shots, normals, CaP, one dihedral per defect and per normal sample), whatever the
    synthetic params, and its batch holds only the shots."""
    data = _data(2)
    rng = np.random.default_rng(3)
    batch = sample_batch(data, rng, draws(Variant("cosine", "weighted"), 4, 0.5, True, synthetic_fraction=1.0,
                                          synthetic_confine=True), IMAGENET, CPU)
    replay = np.random.default_rng(3)
    replay.integers(0, 2, size=4), replay.integers(0, 4, size=4), replay.random()
    replay.integers(0, 8, size=4), replay.integers(0, 8, size=4)
    assert rng.bit_generator.state == replay.bit_generator.state
    assert all(name.startswith("shot") for name in batch.names)
    assert (batch.mask.flatten(1).sum(1) == 100).all()  # the shots' 10 x 10 defects, turned or not


def test_a_pseudo_defect_goes_on_another_normal_image_than_its_partner(monkeypatch):
    data = _data(0, n_normals=2)
    hosts = []
    monkeypatch.setattr(batches, "pseudo_defect", lambda image, pool, rng, confine: (
        hosts.append(image) or pseudo_defect(image, pool, rng, confine)))
    rng = np.random.default_rng(0)
    for _ in range(5):
        batch = sample_batch(data, rng, draws(SYN, 2, 0.5, False, synthetic_fraction=1.0), IMAGENET, CPU)
        normal = batch.normal  # normalised partners: compare by their source image
        for i in range(2):
            host = hosts[-2 + i]
            partner = [j for j in range(2) if torch.allclose(
                batches.normalize(data.normal_images[j : j + 1], IMAGENET)[0], normal[i])]
            assert partner and not torch.equal(host, data.normal_images[partner[0]])


def test_crops_of_pseudo_defects_hold_them(tiny_index):
    from fsds.data.images import InputGeometry
    table = k_shot_split(tiny_index, 1, 0)
    data = load_train_data(table, "washer", InputGeometry(32, 1.0))
    rng = np.random.default_rng(0)
    for _ in range(5):
        batch = sample_batch(data, rng, draws(SYN, 2, 0.5, False, defect_crop_fraction=1.0, synthetic_fraction=1.0),
                             IMAGENET, CPU)
        assert batch.defect.shape == (2, 3, 32, 32)
        assert (batch.mask.flatten(1).sum(1) > 0).all()  # around a pseudo-defect pixel


def test_a_synthetic_variant_trains_with_zero_shots(tiny_index):
    cfg = make_config({"shot": 0, "methods": ["S"], "train": {"image_size": 64, "iterations": 2, "log_every": 1},
                       "variants": {"S": {"nbr": "cosine", "cap": "weighted", "synthetic": True}},
                       "mlflow": {"enabled": False}})
    table = k_shot_split(tiny_index, 0, 0)
    assert not (table["split"] == "train_defect").any()
    data = load_train_data(table, "washer", 64)
    assert len(data.defect_images) == 0 and len(data.normal_images) > 0
    with pytest.raises(InputError, match="no defect shots to train on .*synthetic: true"):
        train(cfg, Variant("cosine", "weighted"), data, seed=0)  # a variant of the paper's needs shots
    _, _, history = train(cfg, cfg.variant("S"), data, seed=0)
    assert history["loss"].notna().all() and len(history) == 2


def test_zero_shots_need_synthetic_variants_and_the_fraction_is_checked():
    with pytest.raises(ConfigError, match="shot: 0 trains on pseudo-defects alone.*B"):
        make_config({"shot": 0, "methods": ["B"], "variants": {"B": {"nbr": "none", "cap": "none"}}})
    with pytest.raises(ConfigError, match="train.synthetic_fraction"):
        make_config({"train": {"synthetic_fraction": 0.0}})
    with pytest.raises(ConfigError, match="variants.B.synthetic: expected true or false"):
        make_config({"variants": {"B": {"nbr": "none", "cap": "none", "synthetic": "yes"}}, "methods": ["B"]})
