"""The speed benchmark: its reference computes the same Algorithm 1 step, and its report is complete.

No timing is asserted here; the numbers live in reports/benchmark.md.
"""

import copy
import json

import pytest
import torch

from fsds.bench import REFERENCE, Setup, draw_batch, main, make_files, separate_step
from fsds.config import ModelConfig
from fsds.images import load_images, load_masks
from fsds.model import build_model
from fsds.training import TrainData, train_step

VARIANT_ARGS = dict(nbr_weight=1.0, amp_dtype=None)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_files(tmp_path_factory.mktemp("bench"), source_size=64)


@pytest.fixture(scope="module")
def cache(files):
    return TrainData(load_images(files.defects, 64), load_masks(files.masks, 64), files.defects,
                     load_images(files.normals, 64))


@pytest.mark.parametrize("seed", range(4))
def test_reference_and_pipeline_draw_the_same_batch(files, cache, seed):
    from_disk = draw_batch(REFERENCE, files, None, 2, 64, seed)
    from_cache = draw_batch(Setup(cache=True), files, cache, 2, 64, seed)
    assert from_disk.use_cap == from_cache.use_cap and from_disk.names == from_cache.names
    for name in ("defect", "mask", "normal"):
        assert torch.equal(getattr(from_disk, name), getattr(from_cache, name)), name


@pytest.mark.parametrize("use_cap", [False, True])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_reference_step_is_the_same_step_as_the_pipelines(files, cache, use_cap, mode):
    """The reference, written independently, computes the pipeline's loss and update."""
    from fsds.bench import VARIANT

    torch.manual_seed(0)
    model = build_model(ModelConfig()).train(mode == "train")
    twin = copy.deepcopy(model)
    batch = draw_batch(Setup(cache=True), files, cache, 2, 64, seed=0)
    batch.use_cap = use_cap
    reference = separate_step(model, torch.optim.SGD(model.parameters(), lr=0.1), batch)
    ours = train_step(twin, torch.optim.SGD(twin.parameters(), lr=0.1), batch, VARIANT, **VARIANT_ARGS)
    assert ours["loss"] == pytest.approx(reference, rel=1e-5)
    assert ours["cap"] == float(use_cap)
    for (name, a), (_, b) in zip(model.state_dict().items(), twin.state_dict().items()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-6), name


def test_the_batched_pass_is_the_same_loss_in_eval_mode(files, cache):
    """The measured-but-dropped single encoder pass differs only in batch-norm statistics."""
    from fsds.bench import batched_step

    torch.manual_seed(0)
    model = build_model(ModelConfig()).eval()
    twin = copy.deepcopy(model)
    batch = draw_batch(Setup(cache=True), files, cache, 2, 64, seed=0)
    batch.use_cap = True
    assert batched_step(model, torch.optim.SGD(model.parameters(), lr=0.0), batch) == pytest.approx(
        separate_step(twin, torch.optim.SGD(twin.parameters(), lr=0.0), batch), rel=1e-5)


@pytest.mark.slow
def test_benchmark_writes_its_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("train: {precision: fp32, channels_last: true}\nmlflow: {enabled: false}\n")
    main(["--sizes", "64", "--batches", "2", "--levers-at", "64", "2", "--predict-size", "64",
          "--predict-images", "3", "--repeats", "1", "--steps", "2", "--warmup", "1", "--source-size", "64",
          "--out", "out/bench"])
    result = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert result["ours"] == "cache + channels_last"  # the params' levers, bf16 off by request
    (train,) = result["training"]
    assert [row["setup"] for row in train["steps"]] == ["reference", "cache", "cache + channels_last",
                                                         "cache + channels_last + one batched encoder pass"]
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
    from fsds.bench import pipeline_setup
    from fsds.config import parse_config

    cfg = parse_config({"train": {"precision": "fp32", "channels_last": "auto"}})
    assert pipeline_setup(cfg).describe() == "cache"
    assert pipeline_setup(cfg, training=False).describe() == "cache + channels_last"
    cfg = parse_config({"train": {"precision": "fp32", "channels_last": False}})
    assert pipeline_setup(cfg, training=False).describe() == "cache"


def test_benchmark_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["--sizes", "0"])
    assert "--sizes must be positive" in capsys.readouterr().err
