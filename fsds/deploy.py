"""A trained model outside the pipeline: one self-contained network, predictions on any images, ONNX.

:class:`DeployedModel` is what leaves the lab: RGB images as float ``(B, 3, S, S)`` in [0, 1]
in, defect probabilities ``(B, 1, S, S)`` out; the ImageNet normalisation and the sigmoid are
inside, so a caller (PyTorch, MLflow's ``mlflow.pytorch.load_model`` or ONNX Runtime) needs
nothing from fsds but the image size, which the model carries (``image_size``).

``load_deployed`` takes an fsds checkpoint (``data/models/<method>/<category>.pt``) or an MLflow
model URI (``runs:/<run id>/model``, ``models:/<name>/<version>``, a local model folder), and
:func:`predict_files` writes masks, overlays and a CSV of per-image scores and decisions for
images of any size. :func:`export_onnx` writes the ONNX file and checks it under ONNX Runtime.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from fsds.images import MEAN, STD, resize_probabilities
from fsds.io import atomic_path, read_rgb, write_text
from fsds.model import Segmenter
from fsds.prediction import inference_model

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
ONNX_TOLERANCE = 1e-3  # largest difference allowed between the probabilities of ONNX Runtime and PyTorch (a quarter of a uint8 level)


class DeployedModel(nn.Module):
    """A segmenter with its input normalisation and output sigmoid: [0, 1] RGB in, probabilities out."""

    def __init__(self, net: Segmenter, image_size: int) -> None:
        super().__init__()
        self.net = net
        self.image_size = int(image_size)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net((images - self.mean) / self.std))


def deployable(net: Segmenter, image_size: int) -> DeployedModel:
    """A copy of a trained network made deployable (fp32, contiguous, batch norms folded, eval mode)."""
    import copy

    net = copy.deepcopy(net).cpu().float().to(memory_format=torch.contiguous_format)
    return DeployedModel(inference_model(net), image_size).eval()


def deployed_from_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> DeployedModel:
    """The deployable model of an fsds checkpoint, batch norms folded, in eval mode."""
    from fsds.training import load_checkpoint

    net, state = load_checkpoint(path, device)
    return DeployedModel(inference_model(net), state["config"]["train"]["image_size"]).to(device).eval()


def load_deployed(spec: str, device: torch.device | str = "cpu") -> DeployedModel:
    """An fsds checkpoint file, or an MLflow model URI (``runs:/...``, ``models:/...``, a model folder)."""
    if Path(spec).is_file():
        return deployed_from_checkpoint(spec, device)
    if "://" not in spec and ":/" not in spec and not Path(spec).is_dir():
        raise FileNotFoundError(f"--model {spec}: neither a checkpoint file nor an MLflow model URI "
                                "(runs:/<run id>/model, models:/<name>/<version>, or a model folder)")
    import mlflow.pytorch

    try:
        model = mlflow.pytorch.load_model(spec, map_location=torch.device(device))
    except Exception as exc:  # MLflow raises many kinds: say which model and what to check
        raise RuntimeError(f"--model {spec}: MLflow could not load it ({exc}); check the URI and "
                           "MLFLOW_TRACKING_URI") from exc
    if not isinstance(model, DeployedModel):
        raise TypeError(f"--model {spec}: an MLflow model of type {type(model).__name__}, not an fsds model")
    return model.to(device).eval()


def signature(image_size: int):
    """The MLflow signature: float32 images ``(-1, 3, S, S)`` in [0, 1] -> probabilities ``(-1, 1, S, S)``."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, image_size, image_size), "images")]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, image_size, image_size))]))


# --- prediction on files ------------------------------------------------------------------

def image_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files named, or found (sorted, not recursively) in the folders named."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise FileNotFoundError(f"{item} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such image or folder")
    stems = [p.stem for p in files]
    clash = sorted({s for s in stems if stems.count(s) > 1})
    if clash:
        raise ValueError(f"several inputs are named {clash[0]!r} (apart from the suffix); their outputs "
                         "would overwrite each other: predict them into separate --out folders")
    return files


@dataclass
class Prediction:
    image: str
    height: int
    width: int
    score: float  # predicted defect area as a fraction of the image (the paper's anomaly score)
    max_probability: float
    defective: bool


def overlay(rgb: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image with the predicted defect tinted red and its other pixels as they are."""
    out = rgb.astype(np.float32)
    red = np.array([255.0, 0.0, 0.0], dtype=np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * red
    return out.round().astype(np.uint8)


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _write_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(_png_bytes(array))


@torch.no_grad()
def predict_files(model: DeployedModel, files: Sequence[Path], out: str | Path, threshold: float = 0.5,
                  min_area: float = 0.0, batch_size: int = 4, device: torch.device | str = "cpu") -> list[Prediction]:
    """Masks (``masks/<stem>.png``, white = defect), overlays (``overlays/<stem>.png``) at each image's
    own size, and ``predictions.csv`` with each image's score and decision: defective when the
    predicted defect area exceeds ``min_area`` (default 0: any pixel, the paper's rule)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"--threshold must lie strictly between 0 and 1, got {threshold}")
    if not 0.0 <= min_area < 1.0:
        raise ValueError(f"--min-area is a fraction of the image in [0, 1), got {min_area}")
    out = Path(out)
    size, device = model.image_size, torch.device(device)
    results: list[Prediction] = []
    bar = tqdm(total=len(files), desc="predict", unit="img")
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        rgbs = [read_rgb(p) for p in chunk]
        x = torch.stack([torch.from_numpy(np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR)).copy())
                         for rgb in rgbs]).permute(0, 3, 1, 2).to(device).float().div_(255.0)
        probs = (model(x)[:, 0].float().cpu().numpy() * 255.0).round().astype(np.uint8)
        for path, rgb, prob in zip(chunk, rgbs, probs):
            full = resize_probabilities(prob, *rgb.shape[:2])
            mask = full >= threshold
            _write_png(out / "masks" / f"{path.stem}.png", (mask * 255).astype(np.uint8))
            _write_png(out / "overlays" / f"{path.stem}.png", overlay(rgb, mask))
            area = float(mask.mean())
            results.append(Prediction(str(path), rgb.shape[0], rgb.shape[1], area, float(full.max()), area > min_area))
            bar.update(1)
    bar.close()
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["image", "height", "width", "score", "max_probability", "decision"])
    for r in results:
        writer.writerow([r.image, r.height, r.width, f"{r.score:.6f}", f"{r.max_probability:.4f}",
                         "defect" if r.defective else "good"])
    write_text(out / "predictions.csv", buf.getvalue())
    return results


# --- ONNX ---------------------------------------------------------------------------------

def export_onnx(model: DeployedModel, path: str | Path, opset: int = 18, check_images: int = 2,
                seed: int = 0) -> float:
    """Write the model as ONNX (dynamic batch) and check it: returns the largest difference between
    ONNX Runtime's and PyTorch's probabilities on random images; raises above :data:`ONNX_TOLERANCE`."""
    import onnxruntime as ort

    model = model.cpu().float().eval()
    size = model.image_size
    example = torch.rand((1, 3, size, size), generator=torch.Generator().manual_seed(seed))
    batch = torch.export.Dim("batch", min=1, max=1024)
    with atomic_path(path) as tmp:
        onnx_program = torch.onnx.export(model, (example,), input_names=["images"], output_names=["probabilities"],
                                         dynamic_shapes={"images": {0: batch}}, opset_version=opset, dynamo=True,
                                         external_data=False)
        onnx_program.save(str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        images = torch.rand((check_images, 3, size, size), generator=torch.Generator().manual_seed(seed + 1))
        with torch.no_grad():
            expected = model(images).numpy()
        got = session.run(None, {"images": images.numpy()})[0]
        diff = float(np.abs(got - expected).max())
        if not diff <= ONNX_TOLERANCE:
            raise RuntimeError(f"the ONNX model's probabilities differ from PyTorch's by {diff:.2e} "
                               f"(tolerance {ONNX_TOLERANCE:.0e}); not written to {path}")
    return diff
