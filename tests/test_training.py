import dataclasses

import pytest
import torch

from fsds.config import Variant
from fsds.data.images import InputGeometry
from fsds.engine.batches import load_probe, load_train_data
from fsds.engine.checkpoint import load_checkpoint, save_checkpoint
from fsds.engine.device import resolve_channels_last, resolve_fp32_depthwise, resolve_precision
from fsds.engine.training import train_segmenter
from fsds.pipeline import plan
from fsds.pipeline.plan import stage_params
from fsds.pipeline.train import category_seed
from tests.params import make_config, recipe_for, train


@pytest.fixture(scope="module")
def washer_data(tiny_split):
    return load_train_data(tiny_split, "washer", 64)


def test_train_data_is_decoded_once_at_network_size(washer_data):
    assert washer_data.defect_images.shape == (3, 3, 64, 64)  # one shot per defect type
    assert washer_data.defect_images.dtype == torch.uint8
    assert washer_data.defect_masks.shape == (3, 1, 64, 64)
    assert set(washer_data.defect_masks.unique().tolist()) == {0, 1}
    assert (washer_data.defect_masks.flatten(1).sum(1) > 0).all()  # no shot lost its defect
    assert washer_data.normal_images.shape == (6, 3, 64, 64)


@pytest.mark.parametrize(
    "variant",
    [Variant("none", "none"), Variant("cosine", "none"), Variant("cosine", "weighted"), Variant("euclidean", "plain"), Variant("none", "plain"),
     Variant("cosine", "weighted", seg_loss="bce_dice"), Variant("none", "none", seg_loss="focal")],
)
def test_every_variant_trains_and_logs_its_terms(tiny_config, washer_data, variant):
    cfg = dataclasses.replace(tiny_config, train=dataclasses.replace(tiny_config.train, cap_probability=1.0))
    logged = []
    model, optimizer, history = train(cfg, variant, washer_data, seed=0, on_log=lambda it, row: logged.append(it))
    assert logged == [1, 2, 3]
    assert history["loss"].notna().all()
    assert (history["cap"] == (0.0 if variant.cap == "none" else 1.0)).all()
    if variant.cap == "weighted":
        assert history["lambda"].between(0, 1).all()
    else:
        assert history["lambda"].isna().all()
    if variant.nbr == "none":
        assert (history["nbr"] == 0).all()
    else:
        assert (history["nbr"] != 0).all()
    assert history["loss"].tolist() == pytest.approx((history["seg"] + history["nbr"]).tolist(), rel=1e-5)


def test_the_variants_segmentation_loss_is_the_one_trained(tiny_config, washer_data):
    """Same seed, same first batch: focal is below the BCE on every pixel, BCE+Dice above it."""
    cfg = dataclasses.replace(tiny_config, train=dataclasses.replace(tiny_config.train, iterations=1))
    first = {kind: train(cfg, Variant("cosine", "weighted", seg_loss=kind), washer_data, seed=0)[2]["seg"].iloc[0]
             for kind in ("bce", "bce_dice", "focal")}
    assert first["focal"] < first["bce"] < first["bce_dice"]


def test_same_seed_same_weights(tiny_config, washer_data):
    variant = Variant("cosine", "weighted")
    m1, _, h1 = train(tiny_config, variant, washer_data, seed=7)
    m2, _, h2 = train(tiny_config, variant, washer_data, seed=7)
    assert h1.equals(h2)
    for (name, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), name
    _, _, h3 = train(tiny_config, variant, washer_data, seed=8)
    assert not h1["loss"].equals(h3["loss"])


def test_checkpoint_rebuilds_the_model(tmp_path, tiny_config, washer_data):
    model, optimizer, _ = train(tiny_config, Variant("none", "none"), washer_data, seed=0)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, washer_data.geometry, 0.4, encoder_weights="none", config=stage_params(tiny_config, "B"),
                    iteration=3, extra={"category": "washer"}, optimizer=optimizer)
    checkpoint = load_checkpoint(path)
    rebuilt, state = checkpoint.model, checkpoint.state
    assert state["iteration"] == 3 and state["category"] == "washer"
    assert state["config"]["train"]["image_size"] == 64
    assert checkpoint.geometry == InputGeometry(64) and checkpoint.threshold == 0.4
    assert "state" in state["optimizer"] and state["optimizer"]["state"]
    finished = tmp_path / "finished.pt"
    save_checkpoint(finished, model, washer_data.geometry, 0.4, encoder_weights="none",
                    config=stage_params(tiny_config, "B"), iteration=3)  # a finished model leaves Adam's moments out
    assert "optimizer" not in load_checkpoint(finished).state
    assert finished.stat().st_size < path.stat().st_size / 2
    finished.unlink()
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        # Same weights; the trained copy may be channels-last, so the sums run in another order: the
        # rounding scales with the logits (tens after three steps at the default profile's lr 1e-3).
        torch.testing.assert_close(rebuilt(x), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    with pytest.raises(FileNotFoundError, match="run the train stage first"):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_category_without_shots_in_the_split_table_is_refused_by_name(tiny_split, washer_data):
    """Every method trains on K >= 1 shots: a split table holding none for a category (an old or
    hand-made one) is refused when the category's training data loads, not trained on normals alone."""
    import numpy as np

    from fsds.engine.batches import sample_batch
    from fsds.errors import InputError
    from fsds.method.registry import IMAGENET

    table = tiny_split.copy()
    table.loc[(table["category"] == "washer") & (table["split"] == "train_defect"), "split"] = "test"
    with pytest.raises(InputError, match=r"^category 'washer' has no training defect images in the split table; "
                                         r"re-run the split stage$"):
        load_train_data(table, "washer", 64)
    others = sorted(set(table["category"]) - {"washer"})
    assert others and len(load_train_data(table, others[0], 64).defect_images) > 0  # only that category is refused
    # nor does a batch draw from no shots
    no_shots = dataclasses.replace(washer_data, defect_images=washer_data.defect_images[:0],
                                   defect_masks=washer_data.defect_masks[:0], defect_names=[])
    with pytest.raises(InputError, match="no defect shots to train on"):
        sample_batch(no_shots, np.random.default_rng(0), recipe_for(Variant("none", "none")), IMAGENET,
                     torch.device("cpu"))


def test_non_finite_loss_names_iteration_and_images(tiny_config, washer_data):
    bad = dataclasses.replace(washer_data, defect_masks=washer_data.defect_masks.clone())
    cfg = make_config({"train": {"image_size": 64, "iterations": 2, "lr": 0.5}, "mlflow": {"enabled": False}})
    broken_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, nbr_weight=float("inf")))
    with pytest.raises(FloatingPointError, match=r"non-finite loss at iteration 1: .*defect images \["):
        train(broken_cfg, Variant("cosine", "none"), bad, seed=0)


def test_precision_resolution(monkeypatch):
    import fsds.engine.device

    assert resolve_precision("fp32", torch.device("cpu")) is None
    assert resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16
    monkeypatch.setattr(fsds.engine.device, "cpu_has_fast_bf16", lambda: True)
    assert resolve_precision("auto", torch.device("cpu")) is torch.bfloat16
    monkeypatch.setattr(fsds.engine.device, "cpu_has_fast_bf16", lambda: False)  # bf16 emulated in fp32 is slower
    assert resolve_precision("auto", torch.device("cpu")) is None


def test_cuda_requested_without_one_names_both_places_it_comes_from(monkeypatch):
    from fsds.engine.device import resolve_device
    from fsds.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^device cuda requested \(train\.device, or fsds predict --device\) but no "
                                          r"CUDA device is available; use auto or cpu$"):
        resolve_device("cuda")
    assert resolve_device("auto") == resolve_device("cpu") == torch.device("cpu")


def test_channels_last_changes_the_layout_not_the_result(tiny_config, washer_data):
    def train_in(channels_last):
        tc = dataclasses.replace(tiny_config.train, precision="fp32", channels_last=channels_last)
        return train(dataclasses.replace(tiny_config, train=tc), Variant("cosine", "weighted"), washer_data, seed=3)

    model, _, nhwc = train_in(True)
    assert model.encode(torch.zeros(1, 3, 64, 64).contiguous(memory_format=torch.channels_last))[0].is_contiguous(
        memory_format=torch.channels_last)
    _, _, nchw = train_in(False)
    # The first loss comes from the same weights on the same batch: only the summation order differs.
    assert nhwc["loss"].iloc[0] == pytest.approx(nchw["loss"].iloc[0], rel=1e-5)
    # After that Adam amplifies rounding: its first steps move every weight by about lr whatever the
    # size of its gradient, so a near-zero gradient whose sign differs between layouts moves its weight
    # the other way (AVX2 CPU: 1.7% apart at iteration 3; AVX-512: within 0.1%).
    assert nhwc["loss"].to_numpy() == pytest.approx(nchw["loss"].to_numpy(), rel=5e-2)


def test_channels_last_auto_trains_nhwc_only_under_bf16_and_always_predicts_nhwc():
    assert resolve_channels_last("auto", None, training=True) is False  # fp32: NHWC slowed training on AVX2
    assert resolve_channels_last("auto", torch.bfloat16, training=True) is True
    assert resolve_channels_last("auto", None, training=False) is True
    assert resolve_channels_last(True, None, training=True) is True
    assert resolve_channels_last(False, torch.bfloat16, training=False) is False


def test_fp32_depthwise_resolution():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_fp32_depthwise("auto", torch.bfloat16, cpu) is True
    assert resolve_fp32_depthwise("auto", torch.bfloat16, cuda) is False  # cuDNN's bf16 depthwise is not the slow one
    assert resolve_fp32_depthwise("auto", None, cpu) is False  # nothing to leave: fp32 already
    assert resolve_fp32_depthwise(True, None, cpu) is False
    assert resolve_fp32_depthwise(False, torch.bfloat16, cpu) is False
    assert resolve_fp32_depthwise(True, torch.bfloat16, cuda) is True


def test_depthwise_convolutions_leave_autocast_and_switch_back():
    from fsds.engine.device import Fp32DepthwiseConv2d, depthwise_in_fp32
    from fsds.method.networks import build_model

    torch.manual_seed(0)
    model = build_model("lite0_unet").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        fp32 = model.encode(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model.encode(x)
        assert depthwise_in_fp32(model) == 16
        conv = next(m for m in model.modules() if isinstance(m, Fp32DepthwiseConv2d))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert conv(torch.randn(1, conv.in_channels, 8, 8, dtype=torch.bfloat16)).dtype == torch.float32
            switched = model.encode(x)
            assert model(x).shape == (1, 1, 64, 64)
    # fp32 depthwise brings the encoder (where they are) closer to the fp32 one than all-bf16 does, at
    # every stride below the stem. (At the output, the bf16 rounding of smp's wide decoder, the same
    # either way, can outweigh it for a single input.)
    for a, b, reference in list(zip(switched, mixed, fp32))[2:]:
        assert (a.float() - reference).abs().mean() < (b.float() - reference).abs().mean()
    assert depthwise_in_fp32(model, False) == 16
    assert not any(isinstance(m, Fp32DepthwiseConv2d) for m in model.modules())
    assert depthwise_in_fp32(build_model("albunet34")) == 0  # ResNet has none


def test_training_under_bf16_switches_depthwise_to_fp32_and_returns_the_model_plain(tiny_config, washer_data,
                                                                                     monkeypatch):
    import fsds.engine.training as training
    from fsds.engine.device import Fp32DepthwiseConv2d

    seen = []
    real_step = training.train_step
    monkeypatch.setattr(training, "train_step", lambda model, *a, **k: seen.append(
        sum(isinstance(m, Fp32DepthwiseConv2d) for m in model.modules())) or real_step(model, *a, **k))
    tc = dataclasses.replace(tiny_config.train, precision="bf16", fp32_depthwise=True, iterations=2)
    cfg = dataclasses.replace(tiny_config, train=tc)
    runtime = plan.train_runtime(cfg)
    assert runtime.amp_dtype is torch.bfloat16 and runtime.fp32_depthwise
    model, _, _ = train_segmenter(recipe_for(Variant("none", "none"), cfg, "lite0_unet"), runtime, washer_data, seed=0)
    assert seen == [16, 16]
    assert not any(isinstance(m, Fp32DepthwiseConv2d) for m in model.modules())


def test_auto_layout_trains_fp32_in_nchw(tiny_config, washer_data):
    tc = dataclasses.replace(tiny_config.train, precision="fp32", channels_last="auto", iterations=1)
    model, _, _ = train(dataclasses.replace(tiny_config, train=tc), Variant("cosine", "weighted"), washer_data, seed=3)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1)
    assert conv.weight.is_contiguous() and not conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_category_seed_is_stable_and_distinct():
    assert category_seed(0, "fabric") == category_seed(0, "fabric")
    assert category_seed(0, "fabric") != category_seed(0, "washer")
    assert category_seed(0, "fabric") != category_seed(1, "fabric")


@pytest.mark.parametrize("flags, unit", [
    ("fpu avx2 avx512f avx512_bf16 amx_bf16", "AMX bf16, AVX-512 bf16"),
    ("fpu avx2 avx512f avx512_bf16", "AVX-512 bf16"),
    ("fpu avx2 avx512f", "AVX-512"),
    ("fpu avx2", "AVX2"),
    ("fpu sse4_2", "no AVX2"),
])
def test_the_cpu_is_named_with_what_decides_its_speed(monkeypatch, flags, unit):
    """Reports (grid cells, lab/findings/pretrained.md) name the CPU a time was measured on."""
    import os

    import fsds.engine.device as device

    info = {"model name": "AMD EPYC", "cpu family": "25", "model": "17", "flags": flags}
    monkeypatch.setattr(device, "_cpuinfo", lambda: info)
    cores = len(os.sched_getaffinity(0))
    assert device.cpu_model() == f"AMD EPYC (family 25 model 17), {cores} cores, {unit}"


@pytest.mark.parametrize("arch", ["albunet34", "lite0_unet"])
def test_frozen_encoder_stages_stay_as_loaded_and_the_rest_learns(tiny_config, tiny_split, washer_data, arch):
    """Two frozen stages: their weights and batch-norm statistics end as they started and get no
    gradient at all (autograd skips them), while the next stage and the decoder train, and a
    probe evaluation's switch back to train mode keeps the frozen norms at their statistics."""
    from fsds.method.networks import build_model
    from fsds.method.registry import network

    cfg = dataclasses.replace(tiny_config, train=dataclasses.replace(tiny_config.train, frozen_encoder_stages=2,
                                                                     eval_every=1))
    recipe = recipe_for(Variant("cosine", "weighted"), cfg, arch)
    assert recipe.frozen_stages == 2 and recipe.arch == arch
    probe = load_probe(tiny_split, "washer", 64, 2, 0)
    torch.manual_seed(0)
    start = build_model(arch).state_dict()
    model, _, history = train_segmenter(recipe, plan.train_runtime(cfg), washer_data, seed=0, probe=probe)
    assert history["probe_iou"].notna().all()  # the probe ran after every step
    stages = network(arch).stages(model.encoder)
    names = {id(t): n for n, t in model.state_dict(keep_vars=True).items()}

    def moved(stage):
        tensors = [t for module in stage for t in [*module.parameters(), *module.buffers()]]
        assert tensors
        return [not torch.equal(t, start[names[id(t)]]) for t in tensors if t.dtype.is_floating_point]

    assert not any(moved(stages[0]) + moved(stages[1]))
    assert all(p.grad is None for stage in stages[:2] for module in stage for p in module.parameters())
    assert any(moved(stages[2])) and any(moved([model.decoder]))
    assert all(not m.training for stage in stages[:2] for module in stage for m in module.modules())
    assert model.encoder.training and all(m.training for module in stages[2] for m in module.modules())
