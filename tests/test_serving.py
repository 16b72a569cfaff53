"""The MLflow model served over HTTP: `mlflow models serve` answers as `fsds predict` does.

A checkpoint is exported as an MLflow model folder (`fsds export --format mlflow`, the same folder a
training run logs), loaded by `mlflow.pyfunc` in this process, and served by `mlflow models serve` in
another, on loopback; each answer is compared with `fsds predict`'s files for the same images.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fsds.data.images import InputGeometry
from fsds.deploy.cli import main
from fsds.deploy.model import DeployedModel
from fsds.engine.checkpoint import save_checkpoint
from fsds.method.networks import build_model
from fsds.pipeline.plan import stage_params
from tests.services import free_port, stop, wait_until

FP32_TORCH = {"precision": "fp32", "runtime": "torch"}  # one computation on every CPU, to compare exactly


@pytest.fixture()
def checkpoint(tmp_path, tiny_config):
    torch.manual_seed(0)
    model = build_model(tiny_config.model.arch)
    with torch.no_grad():
        model.head[0].bias.fill_(0.0)  # probabilities around 0.5: the threshold decides pixels both ways
    path = tmp_path / "model.pt"
    save_checkpoint(path, model.eval(), InputGeometry(64), 0.45, encoder_weights="none",
                    config=stage_params(tiny_config, "B"), iteration=3, min_area=0.9)
    return path


@pytest.fixture()
def exported(checkpoint, tmp_path):
    out = tmp_path / "mlflow_model"
    main(["export", "--model", str(checkpoint), "--format", "mlflow", "--out", str(out)])
    return out


def _predicted(checkpoint, photos, out: Path, *flags: str) -> dict[str, dict]:
    """What `fsds predict` wrote for each image: its predictions.csv row and its mask."""
    main(["predict", "--model", str(checkpoint), str(photos), "--out", str(out), "--precision", "fp32",
          "--runtime", "torch", *flags])
    with open(out / "predictions.csv", newline="") as fh:
        rows = {Path(r["image"]).name: r for r in csv.DictReader(fh)}
    for name, row in rows.items():
        row["mask"] = np.asarray(Image.open(out / "masks" / f"{Path(name).stem}.png"))
    return rows


def _assert_answers_as_predict(answer: list[dict], expected: dict[str, dict]) -> None:
    assert sorted(a["image"] for a in answer[: len(expected)]) == sorted(expected)
    for a in answer[: len(expected)]:
        row = expected[a["image"]]
        assert (a["height"], a["width"]) == (int(row["height"]), int(row["width"]))
        assert f"{a['score']:.6f}" == row["score"] and f"{a['max_probability']:.4f}" == row["max_probability"]
        assert a["decision"] == row["decision"] and a["error"] == ""
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(a["mask"]))))
        np.testing.assert_array_equal(mask, row["mask"])  # the very mask fsds predict wrote


def _request(photos, names=("wide.png", "tall_grey.jpg")) -> tuple[list[str], list[bytes]]:
    return list(names) + ["notes.png"], [(photos / n).read_bytes() for n in names] + [b"not an image"]


def test_the_exported_mlflow_model_answers_as_fsds_predict(checkpoint, photos, exported, tmp_path):
    """In this process: the pyfunc flavor gives the rows and masks `fsds predict` writes, with the
    model's own threshold and min_area by default and the request's when given; an undecodable image
    is a row with decision 'error' and the others are answered; the pytorch flavor is the model."""
    import mlflow.pyfunc
    import mlflow.pytorch

    assert isinstance(mlflow.pytorch.load_model(str(exported)), DeployedModel)
    served = mlflow.pyfunc.load_model(str(exported), model_config=FP32_TORCH)
    names, blobs = _request(photos)
    data = pd.DataFrame({"image": blobs, "name": names})

    own = served.predict(data).to_dict("records")
    expected = _predicted(checkpoint, photos, tmp_path / "own")
    _assert_answers_as_predict(own, expected)
    assert {r["decision"] for r in expected.values()} == {"good"}  # defect areas of about 0.8: below min_area 0.9
    bad = own[-1]
    assert bad["image"] == "notes.png" and bad["decision"] == "error" and "cannot read image notes.png" in bad["error"]
    assert bad["mask"] == "" and pd.isna(bad["score"])

    chosen = served.predict(data, params={"threshold": 0.5, "min_area": 0.0, "probabilities": True}).to_dict("records")
    expected = _predicted(checkpoint, photos, tmp_path / "chosen", "--threshold", "0.5", "--min-area", "0")
    _assert_answers_as_predict(chosen, expected)
    assert {r["decision"] for r in expected.values()} == {"defect"}  # any pixel
    probs = np.asarray(chosen[0]["probabilities"])
    assert probs.shape == (50, 70)
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(chosen[0]["mask"]))))
    np.testing.assert_array_equal(probs >= 0.5, mask > 0)
    assert max(probs.max(), 0) == pytest.approx(chosen[0]["max_probability"])


def test_a_bad_serving_setting_is_refused_by_name(exported):
    import mlflow.pyfunc

    from fsds.errors import InputError

    with pytest.raises(InputError, match="tile size must be 0"):
        mlflow.pyfunc.load_model(str(exported), model_config={"tile_size": 50})
    with pytest.raises(InputError, match="--runtime: expected one of"):
        mlflow.pyfunc.load_model(str(exported), model_config={"runtime": "tensorrt"})


def test_export_to_mlflow_refuses_an_existing_folder(checkpoint, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exited:
        main(["export", "--model", str(checkpoint), "--format", "mlflow", "--out", str(tmp_path / "taken")])
    assert exited.value.code == 2 and "--out" in capsys.readouterr().err
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def test_mlflow_models_serve_answers_a_real_request_on_loopback(checkpoint, photos, exported, tmp_path):
    """`mlflow models serve -m <folder> --env-manager local` in its own process, asked over HTTP with
    JSON (base64 image files): the same rows and masks as `fsds predict`."""
    port = free_port()
    env = {**os.environ, "MLFLOW_PYFUNC_INFERENCE_CONFIG": json.dumps(FP32_TORCH)}
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", str(exported),
                                   "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: urllib.request.urlopen(f"{url}/ping", timeout=5).status == 200, "mlflow models serve",
                   server, tmp_path / "server.log")
        names, blobs = _request(photos)
        body = {"dataframe_split": {"columns": ["image", "name"],
                                    "data": [[base64.b64encode(b).decode("ascii"), n] for b, n in zip(blobs, names)]},
                "params": {"threshold": 0.5}}
        request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as r:
            answer = json.loads(r.read())["predictions"]
    finally:
        stop(server)
    _assert_answers_as_predict(answer, _predicted(checkpoint, photos, tmp_path / "fsds", "--threshold", "0.5"))
    assert answer[-1]["decision"] == "error" and "notes.png" in answer[-1]["error"]
