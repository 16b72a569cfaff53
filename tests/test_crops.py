"""Issue 19: training on crops at a working scale, and whole-image or tiled prediction of any size."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fsds.config import ConfigError
from fsds.deploy.cli import main as cli_main
from fsds.deploy.model import load_deployed
from fsds.deploy.onnx_export import ONNX_TOLERANCE
from fsds.engine.checkpoint import load_checkpoint, save_checkpoint
from fsds.engine.prediction import inference_model
from fsds.pipeline.plan import stage_params
from fsds.data.crops import crop_origin, pad_to, sample_crops
from fsds.data.images import InputGeometry, load_images, load_masks, resize_probabilities, working_geometry
from fsds.engine.batches import TrainData
from fsds.engine.prediction import Tiling, blend_weights, predict_probabilities, tile_starts, tiled
from fsds.evaluation.threshold import calibrate_threshold
from fsds.io import load_probabilities, save_probabilities
from fsds.method.networks import build_model
from fsds.method.registry import IMAGENET
from tests.params import make_config, train


def _coded(height: int, width: int) -> torch.Tensor:
    """A uint8 image whose pixels say where they are: channel 0 the row, 1 the column (mod 256)."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([ys % 256, xs % 256, (ys // 256) * 16 + xs // 256]).to(torch.uint8)


def _position(crop: torch.Tensor) -> tuple[int, int]:
    c = crop.long()
    return int(c[0, 0, 0] + 256 * (c[2, 0, 0] // 16)), int(c[1, 0, 0] + 256 * (c[2, 0, 0] % 16))


def test_working_geometry_scales_the_largest_training_image_to_the_working_size_and_never_enlarges():
    g = working_geometry(128, 512, [(1024, 700), (900, 1024)])
    assert g.scale == 0.5 and g.crops and g.shape(1024, 700) == (512, 350)
    assert working_geometry(128, 512, [(399, 611), (231, 115)]).scale == pytest.approx(512 / 611)
    assert working_geometry(128, 512, [(300, 200)]).scale == 1.0  # small images keep their pixels
    squash = working_geometry(128, 0, [(1024, 700)])
    assert not squash.crops and squash.shape(1024, 700) == (128, 128)


def test_profile_working_size_below_the_crop_is_rejected_by_name():
    with pytest.raises(ConfigError, match=r"working_size: must be 0 .* at least image_size \(128\)"):
        make_config({"profiles": {"fast256": {"image_size": 128, "iterations": 3, "lr": 1e-3, "working_size": 64}}})
    with pytest.raises(ConfigError, match=r"^train\.defect_crop_fraction: must be in \[0, 1\]"):
        make_config({"train": {"defect_crop_fraction": 1.5}})


@pytest.mark.parametrize(("size", "overlap"), [(100, 16), (32, 0), (64, 32), (128, 64), (128, -1)])
def test_a_bad_tiling_is_rejected_by_its_rule_and_through_params_naming_the_keys(size, overlap):
    """Tiling checks itself (fsds predict builds one); the stages build theirs through plan.tiling,
    which names predict.tile_size / predict.tile_overlap of params.yaml."""
    from fsds.errors import InputError
    from fsds.pipeline import plan

    with pytest.raises(InputError, match=r"^tile (size|overlap) must be"):
        Tiling(size, overlap)
    cfg = make_config({"predict": {"tile_size": size, "tile_overlap": overlap}})  # params alone do not check tiles
    with pytest.raises(ConfigError, match=r"^predict\.tile_size / predict\.tile_overlap: tile (size|overlap) must be"):
        plan.tiling(cfg)


def test_good_tilings_pass_their_rule():
    from fsds.pipeline import plan

    assert Tiling() == Tiling(0, 0) and Tiling(0, 64).size == 0  # whole images: the overlap is unused
    assert Tiling(64, 31) == Tiling(64, 31) and Tiling(96, 0).overlap == 0
    assert plan.tiling(make_config({"predict": {"tile_size": 128, "tile_overlap": 32}})) == Tiling(128, 32)
    assert plan.tiling(make_config()) == Tiling(0, make_config().predict.tile_overlap)


def test_crops_keep_image_mask_and_normal_partner_aligned():
    rng = np.random.default_rng(0)
    image = _coded(300, 200)
    mask = torch.zeros((1, 300, 200), dtype=torch.uint8)
    mask[0, 120:140, 50:60] = 1
    # the image carries its mask in channel 2's lowest bit, so a misaligned crop shows
    image[2] = image[2] * 2 + mask[0]
    normal = _coded(300, 200)
    idx = np.zeros(40, dtype=int)
    crops_d, crops_m, crops_n = sample_crops([image], [mask], [normal], idx, idx, 64, 0.5, rng)
    assert crops_d.shape == (40, 3, 64, 64) and crops_m.shape == (40, 1, 64, 64) and crops_n.shape == crops_d.shape
    assert torch.equal(crops_d[:, 2] % 2, crops_m[:, 0])  # mask pixel for pixel under its image
    assert torch.equal(crops_d[:, :2], crops_n[:, :2])  # the normal crop is cut at the same place


def test_the_normal_partner_is_clamped_into_a_smaller_normal_image():
    rng = np.random.default_rng(4)
    mask = torch.zeros((1, 300, 400), dtype=torch.uint8)
    mask[0, 280:290, 380:390] = 1  # a defect near the corner: the defect crop sits far down and right
    normal = _coded(100, 150)
    idx = np.zeros(20, dtype=int)
    crops_d, _, crops_n = sample_crops([_coded(300, 400)], [mask], [normal], idx, idx, 64, 1.0, rng)
    for d, n in zip(crops_d, crops_n):
        top, left = _position(d)
        assert top >= 300 - 64 - 20 and _position(n) == (min(top, 100 - 64), min(left, 150 - 64))


def test_a_crop_asked_to_hold_defect_pixels_does():
    rng = np.random.default_rng(1)
    mask = torch.zeros((1, 512, 700), dtype=torch.uint8)
    mask[0, 500, 3] = 1  # one defect pixel near a corner: the hardest window to find
    mask[0, 40:43, 650:660] = 1
    image = torch.zeros((3, 512, 700), dtype=torch.uint8)
    idx = np.zeros(200, dtype=int)
    _, crops_m, _ = sample_crops([image], [mask], [image], idx, idx, 128, 1.0, rng)
    assert (crops_m.flatten(1).sum(1) > 0).all()
    _, crops_m, _ = sample_crops([image], [mask], [image], idx, idx, 128, 0.0, rng)
    assert (crops_m.flatten(1).sum(1) == 0).float().mean() > 0.8  # anywhere: mostly background


def test_crop_origin_covers_every_window_that_holds_the_pixel():
    rng = np.random.default_rng(2)
    mask = torch.zeros((10, 10), dtype=torch.uint8)
    mask[5, 7] = 1
    origins = {crop_origin(10, 10, 4, rng, mask) for _ in range(2000)}
    assert origins == {(t, l) for t in range(2, 6) for l in range(4, 7)}


def test_images_smaller_than_the_crop_are_padded_with_their_edge_and_masks_with_zeros():
    rng = np.random.default_rng(3)
    image = _coded(40, 30)
    mask = torch.ones((1, 40, 30), dtype=torch.uint8)
    crops_d, crops_m, crops_n = sample_crops([image], [mask], [_coded(20, 90)], np.array([0]), np.array([0]), 64, 1.0,
                                             rng)
    assert crops_m[0, 0, :40, :30].all() and not crops_m[0, 0, 40:].any() and not crops_m[0, 0, :, 30:].any()
    assert torch.equal(crops_d[0, :, 40:, :30], crops_d[0, :, 39:40, :30].expand(3, 24, 30))  # edge row repeated
    assert crops_n.shape == (1, 3, 64, 64)
    padded = pad_to(image, 64, 64)
    assert padded.dtype == torch.uint8 and torch.equal(padded[:, :40, :30], image)


def test_masks_at_a_working_scale_keep_their_image_shape_and_thin_defects(tmp_path):
    rgb = np.zeros((300, 500, 3), dtype=np.uint8)
    mask = np.zeros((300, 500), dtype=np.uint8)
    mask[100, 50:400] = 255  # a one-pixel crack
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    g = InputGeometry(64, 0.25)
    (image,) = load_images([str(tmp_path / "a.png")], g)
    (small,) = load_masks([str(tmp_path / "a_mask.png")], g)
    assert image.shape == (3, 75, 125) and small.shape == (1, 75, 125) and small.any()


class _Pointwise(nn.Module):
    """A per-pixel network: whatever a pixel's neighbours, its output is the same (no padding effects)."""

    input_stats = IMAGENET

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.mark.parametrize("size", [(160, 224), (96, 416), (64, 64)])
def test_tiled_and_whole_image_predictions_agree(size):
    torch.manual_seed(0)
    net = _Pointwise().eval()
    image = torch.randint(0, 256, (3, *size), dtype=torch.uint8)
    whole = predict_probabilities(net, [image])[0]
    in_tiles = predict_probabilities(net, [image], tiling=Tiling(64, 16))[0]
    assert whole.shape == in_tiles.shape == size
    diff = np.abs(whole.astype(int) - in_tiles.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.001  # blending equal values: a float ulp may cross a level


def test_tiles_cover_the_image_and_overlapping_tiles_blend_to_their_common_value():
    assert tile_starts(224, 64, 16) == [0, 48, 96, 144, 160]
    assert tile_starts(64, 64, 16) == [0]
    w = blend_weights(64, 64, 16)
    assert w.min() > 0 and w[16:48, 16:48].eq(1).all() and w[0, 32] < w[8, 32] < w[16, 32]
    # Tiles that predict the same constant everywhere they overlap blend to that constant.
    out = tiled(lambda x: torch.full((x.shape[0], *x.shape[-2:]), 0.25), torch.zeros((2, 3, 160, 224)), 64, 16)
    assert torch.allclose(out, torch.full((2, 160, 224), 0.25))
    # Where tiles predict differently, a pixel's value lies between theirs (a weighted mean).
    out = tiled(lambda x: torch.rand((x.shape[0], *x.shape[-2:])), torch.zeros((1, 3, 160, 224)), 64, 16)
    assert out.min() >= 0 and out.max() <= 1


class _Local(_Pointwise):
    """Three 3 x 3 convolutions: each output pixel sees 3 pixels around it, no further."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 1, 3, padding=1))
        with torch.no_grad():  # outputs spread over (0, 1), so a wrong pixel shows
            self.conv[-1].weight.mul_(4.0)


def test_a_convolutional_network_in_overlapping_tiles_matches_the_whole_image_away_from_tile_edges():
    torch.manual_seed(0)
    net = _Local().eval()
    height, width, tile, overlap, reach = 160, 224, 64, 16, 3
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    whole = predict_probabilities(net, [image])[0].astype(int)
    in_tiles = predict_probabilities(net, [image], tiling=Tiling(tile, overlap))[0].astype(int)
    # pixels within `reach` of a tile edge inside the image see the tile's padding instead of the image
    near_edge = np.zeros((height, width), dtype=bool)
    for starts, axis, length in ((tile_starts(height, tile, overlap), 0, height), (tile_starts(width, tile, overlap), 1, width)):
        for edge in {e for s in starts for e in (s, s + tile)} - {0, length}:
            index = [slice(None), slice(None)]
            index[axis] = slice(max(0, edge - reach), edge + reach)
            near_edge[tuple(index)] = True
    assert 0.3 < (~near_edge).mean() < 1
    assert np.abs(whole - in_tiles)[~near_edge].max() <= 1
    assert np.abs(whole - in_tiles)[near_edge].max() > 1  # the padding is seen there: the check is not empty


def test_any_size_is_padded_to_a_multiple_of_32_and_cut_back():
    torch.manual_seed(0)
    net = build_model(make_config().model.arch).eval()
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in ((50, 70), (50, 70), (97, 33))]
    probs = predict_probabilities(net, images, batch_size=4)
    assert [p.shape for p in probs] == [(50, 70), (50, 70), (97, 33)]
    alone = predict_probabilities(net, images[2:])[0]
    assert np.array_equal(alone, probs[2])
    # the padding is the training crops' (edge pixels repeated), not zeros
    padded = predict_probabilities(net, pad_to(images[2], 128, 64)[None])[0]
    assert np.array_equal(padded[:97, :33], probs[2])


def test_maps_of_their_own_sizes_are_stored_and_calibrated(tmp_path):
    maps = [np.full((5, 7), 10, np.uint8), np.arange(12, dtype=np.uint8).reshape(3, 4)]
    save_probabilities(tmp_path / "p.npz", maps, ["a.png", "b.png"])
    back, images = load_probabilities(tmp_path / "p.npz")
    assert images == ["a.png", "b.png"] and all(np.array_equal(a, b) for a, b in zip(maps, back))
    # 47 pixels; the highest, 11, alone: the lowest level keeping at most 1/47 of them is 11
    found = calibrate_threshold(maps, 1 / 47)
    assert found.fpr == pytest.approx(1 / 47) and found.threshold == pytest.approx(10.5 / 255) and found.images == 2


def test_training_on_crops_runs_and_draws_defect_crops():
    cfg = make_config({"train": {"image_size": 64, "iterations": 2, "working_size": 256, "augment": False},
                       "variants": {"B_NBR_CaP": {"nbr": "cosine", "cap": "weighted"}}})
    gen = torch.Generator().manual_seed(0)
    shapes = [(100, 230), (180, 90)]
    masks = []
    for h, w in shapes:
        m = torch.zeros((1, h, w), dtype=torch.uint8)
        m[0, h // 2 : h // 2 + 4, w // 3 : w // 3 + 4] = 1
        masks.append(m)
    data = TrainData([torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen) for h, w in shapes], masks,
                     ["a", "b"], [torch.randint(0, 256, (3, 120, 150), dtype=torch.uint8, generator=gen)] * 3,
                     InputGeometry(64, 1.0))
    model, _, history = train(cfg, cfg.variant("B_NBR_CaP"), data, seed=0)
    assert len(history) == 2 and np.isfinite(history["loss"]).all()


@pytest.fixture()
def working_scale_checkpoint(tmp_path, tiny_config):
    """A model trained at a working scale of 0.5 on 64 px crops (its weights random: the path is under test)."""
    torch.manual_seed(0)
    model = build_model(tiny_config.model.arch)
    path = tmp_path / "crops.pt"
    save_checkpoint(path, model.eval(), InputGeometry(64, 0.5), tiny_config.metrics.threshold, encoder_weights="none",
                    config=stage_params(tiny_config, "B"), iteration=3)
    return path


def test_fsds_predict_takes_images_of_unseen_sizes_whole_at_the_working_scale(working_scale_checkpoint, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"wide": (130, 410), "tall": (300, 90)}
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    out = tmp_path / "out"
    cli_main(["predict", "--model", str(working_scale_checkpoint), str(folder), "--out", str(out), "--threshold", "0.5",
              "--precision", "fp32"])  # compared with fp32 below, pixel for pixel
    checkpoint = load_checkpoint(working_scale_checkpoint)
    assert checkpoint.geometry == InputGeometry(64, 0.5)
    net = inference_model(checkpoint.model)
    for name, (h, w) in sizes.items():
        mask = np.asarray(Image.open(out / "masks" / f"{name}.png")) > 0
        assert mask.shape == (h, w)
        (image,) = load_images([str(folder / f"{name}.png")], InputGeometry(64, 0.5))
        assert image.shape[-2:] == (round(h / 2), round(w / 2))  # the aspect ratio kept, not squashed to 64
        expected = resize_probabilities(predict_probabilities(net, [image])[0], h, w) >= 0.5
        assert np.mean(mask != expected) < 0.002
    tiled_out = tmp_path / "tiled"
    cli_main(["predict", "--model", str(working_scale_checkpoint), str(folder), "--out", str(tiled_out),
              "--threshold", "0.5", "--tile-size", "64", "--tile-overlap", "16"])
    assert np.asarray(Image.open(tiled_out / "masks" / "wide.png")).shape == sizes["wide"]


def test_onnx_export_of_a_working_scale_model_takes_any_multiple_of_32(working_scale_checkpoint, tmp_path):
    import onnxruntime as ort

    path = tmp_path / "crops.onnx"
    cli_main(["export", "--model", str(working_scale_checkpoint), "--format", "onnx", "--out", str(path)])
    model = load_deployed(str(working_scale_checkpoint))
    assert model.geometry == InputGeometry(64, 0.5)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand((1, 3, 96, 224))
    with torch.no_grad():
        expected = model(x).numpy()
    got = session.run(None, {"images": x.numpy()})[0]
    assert got.shape == (1, 1, 96, 224) and np.abs(got - expected).max() <= ONNX_TOLERANCE
