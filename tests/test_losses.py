import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fsds.method.augmentation import crop_and_paste
from fsds.method.losses import (
    bce_per_image,
    cap_lambda,
    dice_per_image,
    downsample_mask,
    focal_per_image,
    nbr_loss,
    segmentation_loss,
    weighted_bce,
)


def test_nbr_identical_pooled_vectors_give_minus_one():
    torch.manual_seed(0)
    normal = torch.rand(2, 8, 4, 4)
    mask = torch.zeros(2, 1, 128, 128)
    assert nbr_loss(normal.clone(), normal, mask).item() == pytest.approx(-1.0, abs=1e-6)


def test_nbr_opposite_pooled_vectors_give_plus_one():
    a = torch.ones(1, 4, 2, 2)
    assert nbr_loss(a, -a, torch.zeros(1, 1, 64, 64)).item() == pytest.approx(1.0, abs=1e-6)


def test_nbr_masked_positions_do_not_count():
    torch.manual_seed(0)
    normal = torch.rand(1, 8, 4, 4)
    defect = normal.mean(dim=(2, 3), keepdim=True).expand(1, 8, 4, 4).clone()
    mask = torch.zeros(1, 1, 128, 128)
    mask[..., :32, :32] = 1  # covers feature cell (0, 0) at stride 32
    defect[:, :4, 0, 0] = 100.0  # the defect's own features, far from normal
    defect[:, 4:, 0, 0] = 0.0
    assert nbr_loss(defect, normal, mask).item() == pytest.approx(-1.0, abs=1e-6)
    # Without the mask the defect features do count and pull the loss away from -1.
    assert nbr_loss(defect, normal, torch.zeros_like(mask)).item() > -0.9


def test_nbr_cell_touched_by_one_defect_pixel_is_excluded():
    mask = torch.zeros(1, 1, 64, 64)
    mask[0, 0, 40, 5] = 1
    small = downsample_mask(mask, (2, 2))
    assert small[0, 0].tolist() == [[0.0, 0.0], [1.0, 0.0]]


def test_nbr_fully_defective_sample_is_left_out():
    torch.manual_seed(0)
    normal = torch.rand(2, 8, 2, 2)
    defect = normal.clone()
    defect[1] = -normal[1]  # would give +1 if it counted
    mask = torch.zeros(2, 1, 64, 64)
    mask[1] = 1
    assert nbr_loss(defect, normal, mask).item() == pytest.approx(-1.0, abs=1e-6)
    everything = torch.ones(2, 1, 64, 64)
    assert nbr_loss(defect, normal, everything).item() == 0.0


def test_nbr_euclidean_is_zero_for_identical_and_grows_with_distance():
    normal = torch.rand(1, 16, 2, 2)
    mask = torch.zeros(1, 1, 64, 64)
    assert nbr_loss(normal, normal, mask, "euclidean").item() == pytest.approx(0.0, abs=1e-6)
    near = nbr_loss(normal + 0.1, normal, mask, "euclidean").item()
    far = nbr_loss(normal + 1.0, normal, mask, "euclidean").item()
    assert near == pytest.approx(0.1, rel=1e-4) and far == pytest.approx(1.0, rel=1e-4)


def test_nbr_has_gradient_for_both_branches():
    d = torch.rand(1, 4, 2, 2, requires_grad=True)
    n = torch.rand(1, 4, 2, 2, requires_grad=True)
    nbr_loss(d, n, torch.zeros(1, 1, 64, 64)).backward()
    assert d.grad.abs().sum() > 0 and n.grad.abs().sum() > 0


def test_crop_and_paste_is_pixel_exact_eq4():
    torch.manual_seed(0)
    defect = torch.rand(2, 3, 8, 8)
    normal = torch.rand(2, 3, 8, 8)
    mask = (torch.rand(2, 1, 8, 8) > 0.7).float()
    pasted = crop_and_paste(defect, normal, mask)
    m = mask.bool().expand_as(defect)
    assert torch.equal(pasted[m], defect[m])
    assert torch.equal(pasted[~m], normal[~m])


def test_crop_and_paste_rejects_mismatched_batches():
    with pytest.raises(ValueError, match="differ in shape"):
        crop_and_paste(torch.zeros(1, 3, 8, 8), torch.zeros(2, 3, 8, 8), torch.zeros(1, 1, 8, 8))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(-5, 5))
def test_cap_lambda_is_in_unit_interval(seed, scale):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(3, 8, 2, 2, generator=g)
    b = torch.randn(3, 8, 2, 2, generator=g) * scale
    lam = cap_lambda(a, b)
    assert lam.shape == (3,)
    assert bool(((lam >= 0) & (lam <= 1)).all())


def test_cap_lambda_is_one_for_the_same_image_and_carries_no_gradient():
    a = torch.rand(2, 8, 2, 2, requires_grad=True)
    lam = cap_lambda(a, a * 3)
    assert torch.allclose(lam, torch.ones(2))
    assert not lam.requires_grad


def test_weighted_bce_matches_torch_and_scales_with_lambda():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 4, 4)
    target = (torch.rand(2, 1, 4, 4) > 0.5).float()
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert weighted_bce(logits, target).item() == pytest.approx(ref.item(), rel=1e-6)
    per_image = bce_per_image(logits, target)
    lam = torch.tensor([0.25, 1.0])
    assert weighted_bce(logits, target, lam).item() == pytest.approx(((per_image * lam).mean()).item(), rel=1e-6)
    assert weighted_bce(logits, target, torch.ones(2)).item() == pytest.approx(ref.item(), rel=1e-6)
    assert not math.isnan(weighted_bce(logits, torch.zeros_like(target)).item())  # an empty mask is fine


def test_random_dihedral_moves_image_and_mask_together():
    import numpy as np

    from fsds.method.augmentation import random_dihedral

    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    masks = torch.zeros(2, 1, 4, 4)
    masks[:, 0, 0, 1] = 1
    images[:, :, 0, 1] = -1  # the "defect" pixel
    seen = set()
    for seed in range(30):
        out, out_masks = random_dihedral(images, masks, np.random.default_rng(seed))
        assert torch.equal(out[:, 0][out_masks[:, 0].bool()], torch.full((2,), -1.0))  # mask still on the defect
        assert torch.equal(out.sort(dim=-1)[0].sum(), images.sort(dim=-1)[0].sum())  # same pixels, moved
        seen.add(tuple(out[0, 0].flatten().tolist()))
        again, _ = random_dihedral(images, masks, np.random.default_rng(seed))
        assert torch.equal(out, again)
    assert len(seen) == 8  # all flips and rotations occur


SURE = 30.0  # a logit whose sigmoid is 1 to float precision


def test_dice_on_hand_made_masks():
    target = torch.zeros(1, 1, 4, 4)
    target[0, 0, 0, :] = 1  # 4 defect pixels
    perfect = torch.where(target > 0, SURE, -SURE)
    assert dice_per_image(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    half = torch.full_like(target, -SURE)
    half[0, 0, 0, :2] = SURE  # half the region found, nothing else predicted
    assert dice_per_image(half, target).item() == pytest.approx(1 - (2 * 2 + 1) / (2 + 4 + 1), abs=1e-6)
    nothing = torch.full_like(target, -SURE)
    assert dice_per_image(nothing, target).item() == pytest.approx(1 - 1 / 5, abs=1e-6)


def test_dice_on_an_empty_mask_is_finite_and_zero_for_an_empty_prediction():
    empty = torch.zeros(2, 1, 4, 4)
    logits = torch.stack([torch.full((1, 4, 4), -SURE), torch.zeros(1, 4, 4)])  # nothing; p = 0.5 everywhere
    loss = dice_per_image(logits, empty)
    assert loss[0].item() == pytest.approx(0.0, abs=1e-6)
    assert loss[1].item() == pytest.approx(8 / (8 + 1), abs=1e-6)  # sum(p) / (sum(p) + 1)


def test_focal_on_hand_made_pixels():
    logits = torch.tensor([0.0, 2.0, -1.0, 3.0]).view(1, 1, 2, 2)
    target = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 2, 2)
    p = torch.sigmoid(logits)
    p_t = torch.where(target > 0, p, 1 - p)
    expected = (-(1 - p_t) ** 2 * torch.log(p_t)).mean()
    assert focal_per_image(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)
    assert focal_per_image(torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)).item() == pytest.approx(0.25 * math.log(2), rel=1e-6)
    assert focal_per_image(logits, target, gamma=0.0).item() == pytest.approx(bce_per_image(logits, target).item(), rel=1e-6)
    assert not math.isnan(focal_per_image(logits, torch.zeros_like(target)).item())  # an empty mask is fine


@pytest.mark.parametrize("kind", ["bce", "bce_dice", "focal"])
def test_segmentation_loss_is_weighted_by_lambda_per_image(kind):
    torch.manual_seed(1)
    logits, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.8).float()
    unweighted = torch.stack([segmentation_loss(logits[i : i + 1], target[i : i + 1], kind=kind) for i in range(2)])
    lam = torch.tensor([0.25, 1.0])
    assert segmentation_loss(logits, target, lam, kind).item() == pytest.approx((unweighted * lam).mean().item(), rel=1e-5)
    assert segmentation_loss(logits, target, kind=kind).item() == pytest.approx(unweighted.mean().item(), rel=1e-5)


def test_segmentation_loss_kinds_differ_and_bce_is_the_papers():
    torch.manual_seed(2)
    logits, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.8).float()
    bce = segmentation_loss(logits, target, kind="bce")
    assert bce.item() == pytest.approx(weighted_bce(logits, target).item(), rel=1e-6)
    assert segmentation_loss(logits, target, kind="bce_dice").item() > bce.item()
    assert segmentation_loss(logits, target, kind="focal").item() < bce.item()
    with pytest.raises(ValueError, match="dice"):
        segmentation_loss(logits, target, kind="dice")
