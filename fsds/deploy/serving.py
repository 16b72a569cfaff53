"""A trained model as an MLflow model, served over HTTP: ``mlflow models serve -m runs:/<id>/model``.

The MLflow model of a training run (or of ``fsds export --format mlflow``) has two flavors:

- ``pytorch``: the :class:`~fsds.deploy.model.DeployedModel` itself, for
  ``mlflow.pytorch.load_model`` and ``fsds predict --model runs:/<id>/model``;
- ``python_function`` (this module is its ``loader_module``; :mod:`fsds.deploy.mlflow_model` writes
  the folder): an :class:`Inspector` that answers as
  ``fsds predict`` does, so that ``mlflow models serve`` and ``mlflow.pyfunc.load_model`` give a
  part's decision and map, not a tensor of a fixed size.

A request is a table with one row per image: ``image``, the bytes of an image file of any size (PNG,
JPEG, BMP, TIFF; base64 in JSON), and optionally ``name``. The answer has a row per image with the
columns of ``predictions.csv`` (``image`` is the ``name``, else the row's number), and ``mask``: the
mask ``fsds predict`` writes (8-bit PNG at the image's size, white = defect; base64). An image that
cannot be decoded gets decision ``error`` and its reason; the others are answered. Params:
``threshold`` and ``min_area`` (default: the model's own, as ``fsds predict``), ``probabilities``
(true: add the probability map, a list of rows at the image's size).

The network runs as ``fsds predict``'s defaults choose (``device``, ``precision``, ``runtime``: ``auto``).
They are the model's MLflow ``model_config``: ``mlflow.pyfunc.load_model(uri, model_config={"precision":
"fp32"})`` sets them in a process, and MLflow's ``MLFLOW_PYFUNC_INFERENCE_CONFIG='{"precision": "fp32"}'``
for a server, as ``--device``, ``--precision`` and ``--runtime`` do for ``fsds predict``.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from fsds.data.images import resize_image
from fsds.deploy.files import BATCH_SIZE, Prediction, decision_rule, judge, mask_image, png_bytes, unreadable
from fsds.deploy.mlflow_model import SETTINGS
from fsds.deploy.model import DeployedModel
from fsds.deploy.runtime import put_on_runtime
from fsds.engine.device import Runtime, set_up_runtime
from fsds.engine.prediction import Tiling, predict_probabilities
from fsds.errors import InputError
from fsds.io import decode_rgb

OUTPUT_COLUMNS = ("image", "height", "width", "score", "max_probability", "decision", "error", "mask")


class Inspector:
    """``fsds predict`` for MLflow's ``python_function`` flavor: image files' bytes in, a row per image out."""

    def __init__(self, model: DeployedModel, runtime: Runtime, tiling: Tiling = Tiling()) -> None:
        self.model = model
        self.runtime = runtime
        self.tiling = tiling

    @torch.no_grad()
    def predict(self, data: Any, params: Mapping[str, Any] | None = None) -> Any:
        import pandas as pd

        params = dict(params or {})
        threshold, min_area = decision_rule(self.model, params.get("threshold"), params.get("min_area"))
        want_probabilities = bool(params.get("probabilities", False))
        if not isinstance(data, pd.DataFrame) or "image" not in data.columns:
            raise InputError("a request is a table with a column 'image' (an image file's bytes, base64 in JSON) "
                             "and optionally 'name'")
        names = [str(n) for n in data["name"]] if "name" in data.columns else [str(i) for i in range(len(data))]
        rgbs: list[np.ndarray | str] = []
        for name, blob in zip(names, data["image"]):
            try:
                if not isinstance(blob, (bytes, bytearray)):
                    raise InputError(f"cannot read image {name}: expected an image file's bytes, got "
                                     f"{type(blob).__name__}")
                rgbs.append(decode_rgb(bytes(blob), name))
            except InputError as exc:
                rgbs.append(str(exc))
        geometry = self.model.geometry
        images = [resize_image(rgb, geometry.shape(*rgb.shape[:2])) for rgb in rgbs if not isinstance(rgb, str)]
        probs = iter(predict_probabilities(self.model.net, images, self.runtime, batch_size=BATCH_SIZE,
                                           tiling=self.tiling, progress=False) if images else [])
        rows = []
        for name, rgb in zip(names, rgbs):
            if isinstance(rgb, str):
                rows.append(_row(unreadable(Path(name), rgb), None, None))
                continue
            full, result = judge(name, rgb.shape[:2], next(probs), threshold, min_area)
            rows.append(_row(result, full >= threshold, full if want_probabilities else None))
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS) + (["probabilities"] if want_probabilities else []))


def _row(result: Prediction, mask: np.ndarray | None, probabilities: np.ndarray | None) -> dict[str, Any]:
    row = {"image": result.image, "height": result.height, "width": result.width,
           "score": None if result.error else result.score,
           "max_probability": None if result.error else result.max_probability,
           "decision": result.decision, "error": result.error,
           "mask": "" if mask is None else base64.b64encode(png_bytes(mask_image(mask))).decode("ascii")}
    if probabilities is not None:
        row["probabilities"] = probabilities.astype(np.float64).tolist()
    return row


def inspector(model: DeployedModel, device: str = "auto", precision: str = "auto", runtime: str = "auto",
              tile_size: int = 0, tile_overlap: int = 64) -> Inspector:
    """The inspector of a model loaded on the CPU, set up as ``fsds predict`` with those flags."""
    tiling = Tiling(int(tile_size), int(tile_overlap))  # a bad size fails here, by name
    setup = set_up_runtime(device, precision, training=False)
    model = model.to(setup.device).eval()
    setup, _ = put_on_runtime(model, setup, runtime, precision)
    return Inspector(model, setup, tiling)


def _load_pyfunc(path: str, model_config: Mapping[str, Any] | None = None) -> Inspector:
    """MLflow's entry point (``loader_module``): the model folder ``path`` as an :class:`Inspector`, its
    device, precision and runtime from ``model_config`` (the flavor's, overridden as MLflow allows)."""
    import mlflow.pytorch

    settings = {**SETTINGS, **{k: v for k, v in (model_config or {}).items() if k in SETTINGS}}
    model = mlflow.pytorch.load_model(path, map_location=torch.device("cpu"))
    if not isinstance(model, DeployedModel):
        raise InputError(f"{path}: an MLflow model of type {type(model).__name__}, not an fsds model")
    return inspector(model, **settings)
