"""The speed benchmark: every setup times the pipeline's own batch draw and step, and its report is complete.

No timing is asserted here; the numbers live in lab/findings/benchmark.md.
"""

import json

import pytest
import torch
import yaml

from fsds.method.networks import build_model
from fsds.method.registry import network
from fsds.pipeline.plan import FROZEN_STAGES_PRETRAINED
from lab.bench import (
    REFERENCE,
    Runner,
    Setup,
    bench_recipe,
    main,
    make_files,
    pipeline_network,
    pipeline_setup,
)
from tests.params import make_config, params_with


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_files(tmp_path_factory.mktemp("bench"), source_size=64)


@pytest.fixture(scope="module")
def cfg():
    return make_config({"train": {"precision": "fp32", "channels_last": False}})


@pytest.fixture(scope="module")
def recipe(cfg):
    """B+NBR+CaP on params.yaml's model.arch (random weights), batch 2."""
    return bench_recipe(cfg, cfg.model.arch, pretrained=False, batch=2)


def _runner(recipe, setup, files, state=None):
    return Runner(recipe, setup, build_model(recipe.arch, state), files, 64)


@pytest.mark.parametrize("seed", range(4))
def test_reference_and_pipeline_draw_the_same_batch(recipe, files, seed):
    """The reference decodes from disk at every draw, ours reads the cache: the same batches."""
    base = build_model(recipe.arch)
    from_disk = Runner(recipe, REFERENCE, base, files, 64).draw(seed)
    from_cache = Runner(recipe, Setup(cache=True), base, files, 64).draw(seed)
    assert from_disk.use_cap == from_cache.use_cap and from_disk.names == from_cache.names
    for name in ("defect", "mask", "normal"):
        assert torch.equal(getattr(from_disk, name), getattr(from_cache, name)), name


def test_the_reference_reads_images_from_disk_at_every_draw(recipe, files, monkeypatch):
    import lab.bench as bench

    decoded = []
    monkeypatch.setattr(bench, "load_images", lambda paths, size, desc="": decoded.append(len(paths)) or
                        torch.zeros((len(paths), 3, size, size), dtype=torch.uint8))
    runner = _runner(recipe, REFERENCE, files)
    assert decoded == []  # nothing cached up front
    runner.draw(0)
    runner.draw(1)
    assert decoded == [2, 2, 2, 2]  # defect and normal images, at each draw


@pytest.mark.parametrize("setup", [REFERENCE, Setup(cache=True), Setup(cache=True, channels_last=True)])
def test_every_setup_takes_the_pipelines_training_step(cfg, recipe, files, setup, monkeypatch):
    """The timed step is fsds.engine.training.train_step itself, with the recipe the pipeline resolves
    from the params (B+NBR+CaP, the params' NBR weight and learning rate)."""
    import lab.bench as bench

    calls = []
    monkeypatch.setattr(bench, "train_step", lambda *args, **kw: calls.append(args))
    runner = _runner(recipe, setup, files)
    runner.step(0)
    ((model, optimizer, batch, step_recipe, amp),) = calls
    assert model is runner.model and step_recipe is recipe and len(batch.names) == 2
    assert (recipe.nbr, recipe.cap, recipe.seg_loss) == (bench.VARIANT.nbr, bench.VARIANT.cap, "bce")
    assert recipe.nbr_weight == cfg.train.nbr_weight
    assert amp is None and batch.defect.is_contiguous(memory_format=torch.channels_last) == setup.channels_last
    assert optimizer.param_groups[0]["lr"] == cfg.train.lr


@pytest.mark.slow
def test_benchmark_writes_its_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_with({"train": {"precision": "fp32", "channels_last": True},
                                                                        "mlflow": {"enabled": False}})))
    main(["--sizes", "64", "--batches", "2", "--levers-at", "64", "2", "--predict-size", "64",
          "--predict-images", "3", "--repeats", "1", "--steps", "2", "--warmup", "1", "--source-size", "64",
          "--out", "out/bench"])
    result = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert result["ours"] == "cache + channels_last"  # the params' levers, bf16 off by request
    (train,) = result["training"]
    assert [row["setup"] for row in train["steps"]] == ["reference", "cache", "cache + channels_last"]
    assert train["ours"] == train["steps"][2]
    assert train["speedup"] == pytest.approx(train["reference"]["step_s"] / train["ours"]["step_s"])
    for row in train["steps"]:
        assert 0 <= row["data_share"] < 1 and row["peak_rss_mib"] > 0
        assert row["gflop_per_step"] > 0 and row["peak_gflop_per_s"] > 0
    # the same network and loss: FLOPs per step agree between the two ways of computing it
    assert train["ours"]["gflop_per_step"] == pytest.approx(train["reference"]["gflop_per_step"], rel=0.01)
    (pred,) = result["prediction"]
    assert pred["images"] == 3 and pred["speedup"] > 0
    md = (tmp_path / "out" / "bench.md").read_text()
    assert "## Each lever added in turn (64 px, batch 2)" in md and "| 64 | 2 |" in md
    assert "| cache + channels_last (**ours**) |" in md
    assert result["machine"]["cores"] >= 1 and result["machine"]["torch"] == torch.__version__


def test_ours_follows_the_params_layout_for_training_and_prediction():
    from tests.params import make_config

    cfg = make_config({"train": {"precision": "fp32", "channels_last": "auto"}})
    assert pipeline_setup(cfg).describe() == "cache"
    assert pipeline_setup(cfg, training=False).describe() == "cache + channels_last"
    cfg = make_config({"train": {"precision": "fp32", "channels_last": False}})
    assert pipeline_setup(cfg, training=False).describe() == "cache"


def test_benchmark_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["--sizes", "0"])
    assert "--sizes must be positive" in capsys.readouterr().err


def test_ours_runs_depthwise_convolutions_in_fp32_when_training_under_bf16(files):
    """The fp32_depthwise lever: on under bf16 training (auto, on a CPU), never to predict, and the
    runner's network then has its depthwise convolutions switched."""
    from fsds.engine.device import Fp32DepthwiseConv2d

    cfg = make_config({"train": {"precision": "bf16", "channels_last": "auto", "fp32_depthwise": "auto"}})
    assert pipeline_setup(cfg).describe() == "cache + bf16 + channels_last + fp32_depthwise"
    assert pipeline_setup(cfg, training=False).describe() == "cache + bf16 + channels_last"
    assert not pipeline_setup(make_config({"train": {"precision": "bf16", "fp32_depthwise": False}})).fp32_depthwise
    arch, state = pipeline_network(cfg, "L0_B_NBR_CaP")
    runner = _runner(bench_recipe(cfg, arch, state is not None, 2), pipeline_setup(cfg), files, state)
    switched = [m for m in runner.model.modules() if isinstance(m, Fp32DepthwiseConv2d)]
    assert len(switched) == 16  # one per EfficientNet-Lite0 block


def test_flops_of_a_depthwise_backward_count_its_groups():
    """torch's formula counts a grouped convolution's backward as a dense one's; ours as the forward's
    FLOPs once per gradient computed."""
    from lab.bench import count_flops

    depthwise = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    x = torch.randn(1, 8, 16, 16, requires_grad=True)
    forward = 2 * 8 * 16 * 16 * 9  # one multiply-add per tap, per output pixel and channel
    assert count_flops(lambda: depthwise(x)) == forward
    assert count_flops(lambda: depthwise(x).sum().backward()) == 3 * forward  # forward, input and weight grads
    assert count_flops(lambda: depthwise(x.detach()).sum().backward()) == 2 * forward  # no input grad


@pytest.mark.parametrize("setup", [REFERENCE, Setup(cache=True)])
def test_every_setup_leaves_the_pipelines_frozen_stages_as_loaded(cfg, files, setup):
    """Reference and ours train the same network with the same parameters: a pretrained encoder's
    first stages (train.frozen_encoder_stages auto) stay frozen in both, a random encoder's train."""
    assert FROZEN_STAGES_PRETRAINED >= 1
    for variant, frozen in [("L0_B_NBR_CaP", FROZEN_STAGES_PRETRAINED), ("B_NBR_CaP", 0)]:
        arch, state = pipeline_network(cfg, variant)
        runner = _runner(bench_recipe(cfg, arch, state is not None, 2), setup, files, state)
        assert runner.model.arch == arch == (cfg.variant(variant).arch or cfg.model.arch)
        stages = network(arch).stages(runner.model.encoder)
        trains = [any(p.requires_grad for module in stage for p in module.parameters()) for stage in stages]
        assert trains == [False] * frozen + [True] * (len(stages) - frozen), variant
