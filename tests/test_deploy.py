"""`fsds predict` and `fsds export`: a trained model used outside the pipeline."""

import csv
import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fsds.data.images import InputGeometry, load_images, resize_probabilities
from fsds.deploy.cli import main
from fsds.deploy.model import deployed_from_checkpoint, load_deployed
from fsds.deploy.onnx_export import ONNX_TOLERANCE
from fsds.engine.checkpoint import save_checkpoint
from fsds.engine.prediction import inference_model, predict_probabilities
from fsds.method.networks import build_model
from fsds.pipeline.plan import stage_params


@pytest.fixture()
def checkpoint(tmp_path, tiny_config):
    torch.manual_seed(0)
    model = build_model(tiny_config.model.arch)
    # A bias on the head puts the probabilities around 0.5, so thresholds make a difference.
    with torch.no_grad():
        model.head[0].bias.fill_(0.0)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model.eval(), InputGeometry(64), tiny_config.metrics.threshold, encoder_weights="none",
                    config=stage_params(tiny_config, "B"), iteration=3)
    return path


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_predict_writes_masks_overlays_and_decisions_at_each_images_size(checkpoint, photos, tmp_path, tiny_config):
    out = tmp_path / "out"
    main(["predict", "--model", str(checkpoint), str(photos), "--out", str(out), "--threshold", "0.5",
          "--precision", "fp32"])
    rows = {Path(r["image"]).name: r for r in _rows(out / "predictions.csv")}
    assert set(rows) == {"wide.png", "tall_grey.jpg"}  # notes.txt is not an image
    net = build_model(tiny_config.model.arch)
    net.load_state_dict(torch.load(checkpoint, weights_only=False)["model"])
    net = inference_model(net)
    for name, (h, w) in (("wide.png", (50, 70)), ("tall_grey.jpg", (90, 40))):
        mask = np.asarray(Image.open(out / "masks" / f"{Path(name).stem}.png"))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        assert np.asarray(Image.open(out / "overlays" / f"{Path(name).stem}.png")).shape == (h, w, 3)
        # The same map as the pipeline's predict stage (resize, network, back to the original size).
        probs = predict_probabilities(net, load_images([str(photos / name)], 64))
        expected = resize_probabilities(probs[0], h, w) >= 0.5
        assert (np.mean((mask > 0) != expected)) < 0.002  # a pixel or two at exactly 0.5 may round apart
        row = rows[name]
        assert (int(row["height"]), int(row["width"])) == (h, w)
        assert float(row["score"]) == pytest.approx((mask > 0).mean(), abs=1e-6)
        assert row["decision"] == ("defect" if (mask > 0).any() else "good")


def test_predict_runs_bf16_where_the_predict_stage_does_and_stays_close_to_fp32(checkpoint, photos, tmp_path,
                                                                               monkeypatch):
    import fsds.deploy.files as files
    import fsds.engine.device as device

    seen = []
    real = files.predict_probabilities
    monkeypatch.setattr(files, "predict_probabilities", lambda model, images, runtime, **k: seen.append(
        (runtime.amp_dtype, runtime.channels_last)) or real(model, images, runtime, **k))
    real_resolve = device.resolve_precision  # "auto" as on a CPU with native bf16, whatever this one has
    monkeypatch.setattr(device, "resolve_precision", lambda name, where: torch.bfloat16 if name == "auto" else
                        real_resolve(name, where))
    for name, flags in (("auto", []), ("fp32", ["--precision", "fp32", "--runtime", "torch"])):
        main(["predict", "--model", str(checkpoint), str(photos), "--out", str(tmp_path / name), *flags])
    assert seen == [(torch.bfloat16, True), (None, True)]  # one batch each; NHWC either way, as the predict stage
    bf16 = {r["image"]: float(r["max_probability"]) for r in _rows(tmp_path / "auto" / "predictions.csv")}
    fp32 = {r["image"]: float(r["max_probability"]) for r in _rows(tmp_path / "fp32" / "predictions.csv")}
    assert bf16.keys() == fp32.keys() and all(abs(bf16[k] - fp32[k]) < 0.02 for k in bf16)


def test_without_a_threshold_predict_uses_the_models_own(tmp_path, tiny_config, photos):
    """The checkpoint keeps its threshold (here metrics.threshold); `fsds predict` applies it unless
    --threshold is given."""
    torch.manual_seed(0)
    model = build_model(tiny_config.model.arch)
    with torch.no_grad():
        model.head[0].bias.fill_(0.0)
    cfg = dataclasses.replace(tiny_config, metrics=dataclasses.replace(tiny_config.metrics, threshold=0.3))
    path = tmp_path / "m.pt"
    save_checkpoint(path, model.eval(), InputGeometry(64), cfg.metrics.threshold, encoder_weights="none",
                    config=stage_params(cfg, "B"), iteration=3)
    assert load_deployed(str(path)).threshold == 0.3
    for name, flags in (("own", []), ("given", ["--threshold", "0.3"]), ("other", ["--threshold", "0.7"])):
        main(["predict", "--model", str(path), str(photos / "wide.png"), "--out", str(tmp_path / name), *flags])
    own, given, other = (_rows(tmp_path / n / "predictions.csv")[0]["score"] for n in ("own", "given", "other"))
    assert own == given != other


def test_a_calibrated_threshold_is_the_models_own(tmp_path, tiny_config, checkpoint, photos):
    """A checkpoint with a threshold calibrated on normal images (saved as the train stage saves it):
    `fsds predict` and the deployed (MLflow, ONNX) model use it rather than metrics.threshold, unless
    --threshold is given."""
    state = torch.load(checkpoint, weights_only=False)
    assert state["config"]["metrics"]["threshold"] == 0.5
    model = build_model(tiny_config.model.arch)
    model.load_state_dict(state["model"])
    calibration = {"threshold": 0.4, "fpr": 0.001, "max_fpr": 0.001, "images": 8, "reached": True}
    path = tmp_path / "calibrated.pt"
    save_checkpoint(path, model.eval(), InputGeometry(64), calibration["threshold"], encoder_weights="none",
                    config=state["config"], iteration=3, extra={"calibration": calibration})
    assert load_deployed(str(path)).threshold == 0.4 and load_deployed(str(checkpoint)).threshold == 0.5
    for name, model, flags in (("own", path, []), ("given", checkpoint, ["--threshold", "0.4"]),
                               ("plain", checkpoint, [])):
        main(["predict", "--model", str(model), str(photos / "wide.png"), "--out", str(tmp_path / name), *flags])
    own, given, plain = (_rows(tmp_path / n / "predictions.csv")[0]["score"] for n in ("own", "given", "plain"))
    assert own == given != plain


def test_the_threshold_and_min_area_flags_decide(checkpoint, photos, tmp_path):
    low, high = tmp_path / "low", tmp_path / "high"
    main(["predict", "--model", str(checkpoint), str(photos / "wide.png"), "--out", str(low), "--threshold", "0.05"])
    main(["predict", "--model", str(checkpoint), str(photos / "wide.png"), "--out", str(high), "--threshold", "0.95",
          "--min-area", "0.5"])
    (lo,), (hi,) = _rows(low / "predictions.csv"), _rows(high / "predictions.csv")
    assert float(lo["score"]) > float(hi["score"])
    assert lo["decision"] == "defect" and hi["decision"] == "good"


def test_fsds_predict_and_predict_files_share_one_default_batch_size(capsys):
    import inspect

    import fsds.deploy.files as files

    assert inspect.signature(files.predict_files).parameters["batch_size"].default == files.BATCH_SIZE
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert f"(default {files.BATCH_SIZE}:" in " ".join(capsys.readouterr().out.split())


def test_console_script_and_clear_errors(checkpoint, photos, tmp_path):
    script = Path(sys.executable).with_name("fsds")
    assert script.is_file(), "pip install -e . installs the fsds console script"
    proc = subprocess.run([str(script), "predict", "--model", str(checkpoint), str(tmp_path / "missing"),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2 and "missing: no such image or folder" in proc.stderr
    proc = subprocess.run([str(script), "predict", "--model", str(tmp_path / "nope.pt"), str(photos),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2 and "neither a checkpoint file nor an MLflow model URI" in proc.stderr
    with pytest.raises(SystemExit):
        main(["predict", "--model", str(checkpoint), str(checkpoint), "--out", str(tmp_path / "o"), "--threshold", "1.5"])


@pytest.mark.parametrize(("size", "overlap"), [(100, 16), (32, 0), (64, 32), (128, -1)])
def test_a_bad_tile_size_or_overlap_is_one_plain_error_before_the_model_loads(photos, tmp_path, capsys, size, overlap):
    """fsds predict builds its Tiling first: the tile rule's message, though the model named is no file."""
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--model", str(tmp_path / "nope.pt"), str(photos), "--out", str(tmp_path / "o"),
              "--tile-size", str(size), "--tile-overlap", str(overlap)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fsds predict: error: tile ") and "\n" not in err, err
    assert f"size {size}, overlap {overlap}" in err or f"overlap must be >= 0, got {overlap}" in err
    assert "nope.pt" not in err and not (tmp_path / "o").exists()


def test_a_tile_size_of_zero_predicts_whole_images_whatever_the_overlap(checkpoint, photos, tmp_path):
    main(["predict", "--model", str(checkpoint), str(photos / "wide.png"), "--out", str(tmp_path / "o"),
          "--threshold", "0.5", "--precision", "fp32", "--tile-size", "0", "--tile-overlap", "64"])
    assert len(_rows(tmp_path / "o" / "predictions.csv")) == 1


def test_onnx_export_matches_pytorch_under_onnxruntime(checkpoint, tmp_path):
    import onnxruntime as ort

    path = tmp_path / "model.onnx"
    main(["export", "--model", str(checkpoint), "--format", "onnx", "--out", str(path)])
    model = deployed_from_checkpoint(checkpoint)
    images = torch.rand((3, 3, 64, 64), generator=torch.Generator().manual_seed(5))  # another batch size
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images.numpy()})[0]
    with torch.no_grad():
        expected = model(images).numpy()
    assert got.shape == (3, 1, 64, 64)
    assert np.abs(got - expected).max() <= ONNX_TOLERANCE
    assert not list(tmp_path.glob(".model.onnx.*"))  # no temporary file left


def test_predict_keeps_the_input_order_at_every_batch_size_and_stops_on_a_failed_write(checkpoint, tmp_path,
                                                                                        monkeypatch):
    """Reading, the network and writing overlap in threads: the CSV still lists the images in input
    order with the same results for any batch size, and a write that fails stops the run before
    predictions.csv is written."""
    import fsds.deploy.files as files

    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (40 + 6 * i, 64, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    model = deployed_from_checkpoint(checkpoint)
    inputs = files.image_files([folder])
    runs = {b: files.predict_files(model, inputs, tmp_path / f"out{b}", threshold=0.5, batch_size=b) for b in (1, 3)}
    assert [Path(p.image).name for p in runs[1]] == [f"p{i}.png" for i in range(5)]
    assert [p.height for p in runs[1]] == [p.height for p in runs[3]] == [40 + 6 * i for i in range(5)]
    assert [p.score for p in runs[1]] == pytest.approx([p.score for p in runs[3]], abs=0.002)  # a pixel may round apart
    assert [Path(r["image"]).name for r in _rows(tmp_path / "out3" / "predictions.csv")] == [f"p{i}.png" for i in range(5)]

    calls = []
    real = files._write_png

    def flaky(path, array):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        real(path, array)

    monkeypatch.setattr(files, "_write_png", flaky)
    with pytest.raises(OSError, match="disk full"):
        files.predict_files(model, inputs, tmp_path / "broken", threshold=0.5, batch_size=2)
    assert not (tmp_path / "broken" / "predictions.csv").exists()


def test_onnxruntime_predicts_what_torch_does_in_fp32_and_auto_picks_it_for_fp32_on_a_cpu(checkpoint, photos, tmp_path):
    from fsds.deploy.runtime import resolve_runtime
    from fsds.errors import InputError

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_runtime("auto", None, cpu) == "onnxruntime"
    assert resolve_runtime("auto", torch.bfloat16, cpu) == "torch"
    assert resolve_runtime("auto", None, cuda) == "torch"
    assert resolve_runtime("torch", None, cpu) == "torch"
    with pytest.raises(InputError, match="--runtime onnxruntime runs on the CPU"):
        resolve_runtime("onnxruntime", None, cuda)

    outs = {}
    for runtime in ("torch", "onnxruntime"):
        outs[runtime] = tmp_path / runtime
        main(["predict", "--model", str(checkpoint), str(photos), "--out", str(outs[runtime]), "--threshold", "0.5",
              "--precision", "fp32", "--runtime", runtime])
    rows = {k: {Path(r["image"]).name: r for r in _rows(v / "predictions.csv")} for k, v in outs.items()}
    assert set(rows["torch"]) == set(rows["onnxruntime"]) == {"wide.png", "tall_grey.jpg"}
    for name, row in rows["torch"].items():
        assert float(rows["onnxruntime"][name]["score"]) == pytest.approx(float(row["score"]), abs=0.002)
        a, b = (np.asarray(Image.open(o / "masks" / f"{Path(name).stem}.png")) for o in outs.values())
        assert np.mean(a != b) < 0.002  # a pixel or two at exactly the threshold may round apart
    with pytest.raises(SystemExit):  # InputError, reported by the console entry point
        main(["predict", "--model", str(checkpoint), str(photos), "--out", str(tmp_path / "x"), "--precision", "bf16",
              "--runtime", "onnxruntime"])


def test_a_batch_with_unreadable_files_inspects_the_rest_lists_them_and_exits_3(checkpoint, tmp_path, capsys):
    """On a line one bad frame must not stop the shift: a text file named .png and a PNG cut short are
    rows with decision ``error`` and their reason, every other image is inspected exactly as it is
    alone (in input order, whatever the batch size), and the command exits with status 3; ``--strict``
    stops at the first with status 2 and writes nothing."""
    folder = tmp_path / "line"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / f"f{i}.png")
    (folder / "f1.png").write_text("not an image")
    cut = (folder / "f2.png").read_bytes()
    (folder / "f2.png").write_bytes(cut[: len(cut) // 2])
    for batch in ("1", "3"):
        out = tmp_path / f"out{batch}"
        with pytest.raises(SystemExit) as exited:
            main(["predict", "--model", str(checkpoint), str(folder), "--out", str(out), "--threshold", "0.5",
                  "--precision", "fp32", "--batch-size", batch])
        assert exited.value.code == 3
        rows = _rows(out / "predictions.csv")
        assert [Path(r["image"]).name for r in rows] == ["f0.png", "f1.png", "f2.png", "f3.png"]
        assert [r["decision"] for r in rows][1:3] == ["error", "error"]
        assert all("cannot read image" in r["error"] and r["score"] == "" for r in rows[1:3])
        assert all(r["decision"] in ("good", "defect") and r["error"] == "" for r in (rows[0], rows[3]))
        assert sorted(p.name for p in (out / "masks").iterdir()) == ["f0.png", "f3.png"]
        assert "4 images" in (said := capsys.readouterr().out) and "2 unreadable" in said
    alone = tmp_path / "alone"
    main(["predict", "--model", str(checkpoint), str(folder / "f3.png"), "--out", str(alone), "--threshold", "0.5",
          "--precision", "fp32"])
    assert _rows(alone / "predictions.csv")[0]["score"] == rows[3]["score"]
    with pytest.raises(SystemExit) as exited:
        main(["predict", "--model", str(checkpoint), str(folder), "--out", str(tmp_path / "strict"), "--strict",
              "--precision", "fp32"])
    assert exited.value.code == 2 and "f1.png" in capsys.readouterr().err
    assert not (tmp_path / "strict" / "predictions.csv").exists()


def test_a_truncated_checkpoint_is_one_line_naming_it(checkpoint, photos, tmp_path, capsys):
    bad = tmp_path / "cut.pt"
    bad.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(SystemExit) as exited:
        main(["predict", "--model", str(bad), str(photos), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and len(err.splitlines()) == 1
    assert "cut.pt cannot be read: it is truncated, damaged or not a PyTorch file" in err and "Traceback" not in err


def test_the_models_calibrated_min_area_is_the_default_image_decision(tmp_path, checkpoint, photos):
    """A checkpoint whose image decision was calibrated (min_area): `fsds predict` and the deployed
    (MLflow) model decide with it unless --min-area is given; an image whose defect area is below it is
    good, the same image with --min-area 0 (any pixel) defective."""
    state = torch.load(checkpoint, weights_only=False)
    model = build_model(state["network"]["arch"])
    model.load_state_dict(state["model"])
    plain = tmp_path / "plain"
    main(["predict", "--model", str(checkpoint), str(photos / "wide.png"), "--out", str(plain), "--threshold", "0.5"])
    (row,) = _rows(plain / "predictions.csv")
    area = float(row["score"])
    assert 0 < area < 0.99 and row["decision"] == "defect"  # any pixel: defective
    path = tmp_path / "calibrated.pt"
    save_checkpoint(path, model.eval(), InputGeometry(64), 0.5, encoder_weights="none", config=state["config"],
                    iteration=3, min_area=min(0.999, area + 0.01))
    assert load_deployed(str(path)).min_area == pytest.approx(min(0.999, area + 0.01))
    for name, flags in (("own", []), ("any", ["--min-area", "0"])):
        main(["predict", "--model", str(path), str(photos / "wide.png"), "--out", str(tmp_path / name), *flags])
    (own,), (anyp,) = _rows(tmp_path / "own" / "predictions.csv"), _rows(tmp_path / "any" / "predictions.csv")
    assert own["score"] == anyp["score"] == row["score"]
    assert own["decision"] == "good" and anyp["decision"] == "defect"
