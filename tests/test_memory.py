"""The memory of normal patches (fsds.method.memory, fsds.engine.memory_bank) on hand-made features."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from fsds.data.images import InputStats
from fsds.engine.memory_bank import (
    build_memory,
    choose_bank,
    memory_distances,
    patch_vectors,
)
from fsds.method.memory import (
    MemorySpec,
    NormalMemory,
    calibrated_distance,
    gaussian_blur,
    greedy_coreset,
    nearest_distances,
    patch_features,
    stride_index,
)

PLAIN = InputStats((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


class PixelEncoder(nn.Module):
    """A stand-in encoder whose maps are the input itself at strides 1..32 (average-pooled): a patch
    vector is then the mean colour around it, so tests can say which patches are alike."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x] + [nn.functional.avg_pool2d(x, 2 ** i) for i in range(1, 6)]


def memory_of(bank: torch.Tensor, threshold: float = 1.0, k: int = 1, sigma: float = 0.0, pool: int = 1) -> NormalMemory:
    return NormalMemory(PixelEncoder(), PLAIN, (8,), bank, threshold, grid_stride=8, pool=pool, k=k, sigma=sigma)


def test_a_patch_equal_to_a_normal_one_scores_zero():
    bank = torch.randn(50, 16)
    assert torch.allclose(nearest_distances(bank[[3, 7, 11]], bank), torch.zeros(3), atol=1e-3)
    other = bank[[3]] + 0.5
    assert nearest_distances(other, bank)[0] > 0


@pytest.mark.parametrize("k", [1, 3])
def test_nearest_distances_match_brute_force(k):
    gen = torch.Generator().manual_seed(0)
    queries, bank = torch.randn(37, 8, generator=gen), torch.randn(120, 8, generator=gen)
    expected = torch.cdist(queries, bank).topk(k, largest=False).values.mean(1)
    assert torch.allclose(nearest_distances(queries, bank, k, chunk=10), expected, atol=1e-4)
    with pytest.raises(ValueError, match="k must be"):
        nearest_distances(queries, bank, 121)


def test_coreset_covers_every_cluster_and_repeats_with_its_seed():
    gen = torch.Generator().manual_seed(1)
    centres = torch.randn(6, 4, generator=gen) * 50
    points = (centres[:, None, :] + torch.randn(6, 40, 4, generator=gen)).reshape(-1, 4)
    chosen = greedy_coreset(points, 6, seed=3)
    assert sorted((chosen // 40).tolist()) == list(range(6))  # one per cluster: k-center's cover
    assert torch.equal(chosen, greedy_coreset(points, 6, seed=3))
    assert torch.equal(greedy_coreset(points, 500, seed=0), torch.arange(240))  # asking for more keeps all
    # the random projection (more dimensions than dims) keeps the cover
    wide = torch.cat([points, torch.zeros(240, 200)], 1)
    assert sorted((greedy_coreset(wide, 6, seed=3, dims=16) // 40).tolist()) == list(range(6))


def test_random_bank_repeats_with_its_seed():
    vectors = torch.randn(300, 5)
    spec = MemorySpec("lite0_unet", (8,), 8, 1, 40, "random", 1, 0.0)
    assert torch.equal(choose_bank(vectors, spec, 7), choose_bank(vectors, spec, 7))
    assert not torch.equal(choose_bank(vectors, spec, 7), choose_bank(vectors, spec, 8))


def test_coreset_candidates_cap_the_rows_it_looks_at_and_keep_the_cover():
    """With coreset_candidates, the bank is a k-center cover of a random draw of that many rows: every
    chosen row is one of them, the same for the same seed, and clusters far apart are still covered."""
    gen = torch.Generator().manual_seed(2)
    centres = torch.randn(5, 4, generator=gen) * 50
    points = (centres[:, None, :] + torch.randn(5, 200, 4, generator=gen)).reshape(-1, 4)
    capped = MemorySpec("lite0_unet", (8,), 8, 1, 5, "coreset", 1, 0.0, 4, coreset_candidates=100)
    bank = choose_bank(points, capped, 7)
    drawn = points[torch.randperm(1000, generator=torch.Generator().manual_seed(7))[:100]]
    assert all((drawn == row).all(1).any() for row in bank)
    assert torch.equal(bank, choose_bank(points, capped, 7))
    nearest_centre = torch.cdist(bank, centres).argmin(1)
    assert sorted(nearest_centre.tolist()) == list(range(5))
    full = dataclasses.replace(capped, coreset_candidates=0)
    assert not all((drawn == row).all(1).any() for row in choose_bank(torch.cat([points, centres * 3]), full, 7))


def test_patch_features_concatenate_on_one_grid():
    fine, coarse = torch.ones(2, 3, 16, 16), torch.full((2, 5, 8, 8), 2.0)
    out = patch_features([fine, coarse], (8, 8), pool=3)
    assert out.shape == (2, 8, 8, 8) and torch.allclose(out[:, :3], torch.ones(1)) and torch.allclose(out[:, 3:], torch.full((1,), 2.0))
    assert patch_features([coarse], (16, 16), pool=1).shape == (2, 5, 16, 16)
    assert [stride_index(s) for s in (2, 4, 8, 32)] == [1, 2, 3, 5]
    with pytest.raises(ValueError, match="powers of two"):
        stride_index(6)


def test_blur_keeps_a_constant_map_and_spreads_a_spike():
    flat = torch.full((1, 1, 20, 24), 3.0)
    assert torch.allclose(gaussian_blur(flat, 2.0), flat, atol=1e-5)
    spike = torch.zeros(1, 1, 21, 21)
    spike[..., 10, 10] = 1.0
    out = gaussian_blur(spike, 2.0)
    assert abs(out.sum() - 1.0) < 1e-4 and out[..., 10, 10] < 0.1 and out[..., 10, 12] > 0


def test_calibrated_distance_keeps_the_false_alarm_rate():
    maps = [torch.arange(1000, dtype=torch.float32).view(10, 100)]
    t = calibrated_distance(maps, 0.01)
    assert (maps[0] >= t).float().mean() <= 0.011 and (maps[0] >= t - 2).float().mean() > 0.01
    with pytest.raises(ValueError):
        calibrated_distance([], 0.01)


def test_memory_logit_is_zero_at_its_threshold():
    """A normal image scores 0 distance (logit very negative); a patch at the threshold's distance sits at
    probability 0.5; bf16 autocast leaves the distances in fp32."""
    bank = torch.zeros(1, 3)
    memory = memory_of(bank, threshold=0.25)
    normal = torch.zeros(1, 3, 32, 32)
    assert memory(normal).max() < -5
    odd = torch.full((1, 3, 32, 32), 0.25 / 3 ** 0.5)  # every patch at distance 0.25 from the bank
    assert torch.allclose(torch.sigmoid(memory(odd)), torch.full((1,), 0.5), atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = memory.distances(odd)
    assert d.dtype == torch.float32 and torch.allclose(d, torch.full((1,), 0.25), atol=1e-4)


def _images(colours: list[float], size: int = 32) -> torch.Tensor:
    return torch.stack([torch.full((3, size, size), c, dtype=torch.uint8) for c in colours])


def test_the_bank_holds_only_the_normal_training_patches(monkeypatch):
    """No calibration or test image enters the bank: every bank vector is a patch of the normals, and the
    calibration images, unlike any normal, sit at a distance that becomes the threshold. Twice the same
    seed: the same bank."""
    monkeypatch.setattr("fsds.engine.memory_bank.pretrained_encoder", lambda arch: (PixelEncoder(), PLAIN))
    spec = MemorySpec("lite0_unet", (8,), 8, 1, 3, "coreset", 1, 0.0)
    normals, held = _images([10, 20, 30, 40, 50]), _images([200, 210])
    built = build_memory(spec, normals, held, seed=0, max_fpr=0.01)
    normal_patches = patch_vectors(built.memory, normals)
    held_patches = patch_vectors(built.memory, held)
    bank = built.memory.bank
    assert len(bank) == 3 and built.info["patches"] == 5 * 16 and built.info["normals"] == 5
    assert all((normal_patches == row).all(1).any() for row in bank)
    assert not any((held_patches == row).all(1).any() for row in bank)
    assert built.info["threshold"] > 0.9  # the calibration colours are far from every normal one (1.0 apart)
    again = build_memory(spec, normals, held, seed=0, max_fpr=0.01)
    assert torch.equal(again.memory.bank, bank) and again.info["threshold"] == built.info["threshold"]
    distances = memory_distances(built.memory, _images([10, 230]))
    assert float(distances[0].max()) < 0.1 and float(distances[1].min()) > built.info["threshold"] / 2
    uncalibrated = build_memory(spec, normals, held[:0], seed=0, max_fpr=0.01)
    assert uncalibrated.info["threshold"] is None and torch.equal(uncalibrated.memory.bank, bank)


def test_a_list_of_images_at_their_own_sizes():
    memory = memory_of(torch.zeros(1, 3))
    images = [torch.zeros(3, 40, 56, dtype=torch.uint8), torch.zeros(3, 33, 30, dtype=torch.uint8)]
    maps = memory_distances(memory, images)
    assert [tuple(m.shape) for m in maps] == [(40, 56), (33, 30)]
    assert patch_vectors(memory, images).shape == (5 * 7 + 5 * 4, 3)  # patches over the padding dropped
