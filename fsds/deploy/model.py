"""The deployable network: a trained model on its own.

:class:`DeployedModel` is what leaves the pipeline: RGB images as float ``(B, 3, H, W)`` in [0, 1]
in, defect probabilities ``(B, 1, H, W)`` out; the network's own input normalisation (ImageNet
mean/std for a ResNet, [-1, 1] for EfficientNet-Lite) and the sigmoid are inside, so a caller (PyTorch, MLflow's ``mlflow.pytorch.load_model`` or ONNX Runtime) needs
nothing from fsds but how to size the images, which the model carries: squashed to ``image_size``
x ``image_size`` (``scale`` 0), or resized by ``scale`` keeping the aspect ratio and padded to a
multiple of 32 (:class:`fsds.data.images.InputGeometry`).

``load_deployed`` takes an fsds checkpoint (``data/models/<method>/<category>.pt``) or an MLflow
model URI (``runs:/<run id>/model``, ``models:/<name>/<version>``, a local model folder);
:mod:`fsds.deploy.files` predicts image files with it and :mod:`fsds.deploy.onnx_export` exports it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from fsds.data.images import InputGeometry, as_geometry
from fsds.engine.checkpoint import load_checkpoint
from fsds.engine.prediction import inference_model
from fsds.errors import InputError, MissingFileError
from fsds.method.networks import Segmenter


class DeployedModel(nn.Module):
    """A segmenter with its input normalisation and output sigmoid: [0, 1] RGB in, probabilities out."""

    def __init__(self, net: Segmenter, geometry: InputGeometry | int, threshold: float, min_area: float = 0.0) -> None:
        super().__init__()
        self.net = net
        geometry = as_geometry(geometry)  # an int: the side of the square it squashes to
        self.image_size = int(geometry.size)
        self.scale = float(geometry.scale)  # 0: squashed to image_size; else the working scale
        self.threshold = float(threshold)  # its calibrated threshold, else metrics.threshold: a pixel at or above it is a defect
        self.min_area = float(min_area)  # its calibrated image decision: defective when the defect area exceeds it
        # The network's own input normalisation (its encoder's weights decide it), inside the model.
        self.register_buffer("mean", torch.tensor(net.input_stats.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(net.input_stats.std).view(1, 3, 1, 1))

    @property
    def geometry(self) -> InputGeometry:
        return InputGeometry(self.image_size, self.scale)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net((images - self.mean) / self.std))


def deployable(net: Segmenter, geometry: InputGeometry, threshold: float, min_area: float = 0.0) -> DeployedModel:
    """A copy of a trained network made deployable (fp32, contiguous, batch norms folded, eval mode)."""
    net = copy.deepcopy(net).cpu().float().to(memory_format=torch.contiguous_format)
    return DeployedModel(inference_model(net), geometry, threshold, min_area).eval()


def deployed_from_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> DeployedModel:
    """The deployable model of an fsds checkpoint (its geometry and threshold), batch norms folded, in eval mode."""
    checkpoint = load_checkpoint(path, device)
    return DeployedModel(inference_model(checkpoint.model), checkpoint.geometry, checkpoint.threshold,
                         checkpoint.min_area).to(device).eval()


def load_deployed(spec: str, device: torch.device | str = "cpu") -> DeployedModel:
    """An fsds checkpoint file, or an MLflow model URI (``runs:/...``, ``models:/...``, a model folder)."""
    if Path(spec).is_file():
        return deployed_from_checkpoint(spec, device)
    if "://" not in spec and ":/" not in spec and not Path(spec).is_dir():
        raise MissingFileError(f"--model {spec}: neither a checkpoint file nor an MLflow model URI "
                               "(runs:/<run id>/model, models:/<name>/<version>, or a model folder)")
    import mlflow.pytorch

    try:
        model = mlflow.pytorch.load_model(spec, map_location=torch.device(device))
    except Exception as exc:  # MLflow raises many kinds: say which model and what to check
        raise InputError(f"--model {spec}: MLflow could not load it ({exc}); check the URI and "
                         "MLFLOW_TRACKING_URI") from exc
    if not isinstance(model, DeployedModel):
        raise InputError(f"--model {spec}: an MLflow model of type {type(model).__name__}, not an fsds model")
    return model.to(device).eval()
