"""ONNX export of a deployable model, checked under ONNX Runtime before it is kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fsds.deploy.model import DeployedModel
from fsds.errors import RunError
from fsds.io import atomic_path

ONNX_TOLERANCE = 1e-3  # largest difference allowed between the probabilities of ONNX Runtime and PyTorch (a quarter of a uint8 level)


def export_onnx(model: DeployedModel, path: str | Path, opset: int = 18, check_images: int = 2,
                seed: int = 0) -> float:
    """Write the model as ONNX and check it: returns the largest difference between ONNX Runtime's
    and PyTorch's probabilities on random images; raises above :data:`ONNX_TOLERANCE`. The batch is
    dynamic, and for a model at a working scale (``scale`` > 0) so are height and width (multiples
    of 32: the caller resizes by ``scale`` and pads, as ``fsds predict`` does); the check then uses
    a non-square size unlike the export's example."""
    import onnxruntime as ort

    model = model.cpu().float().eval()
    size = model.image_size
    example = torch.rand((1, 3, size, size), generator=torch.Generator().manual_seed(seed))
    dims = {0: torch.export.Dim("batch", min=1, max=1024)}
    check_shape = (size, size)
    if model.geometry.crops:
        dims[2] = 32 * torch.export.Dim("height32", min=1, max=256)
        dims[3] = 32 * torch.export.Dim("width32", min=1, max=256)
        check_shape = (size + 32, 2 * size)
    with atomic_path(path) as tmp:
        onnx_program = torch.onnx.export(model, (example,), input_names=["images"], output_names=["probabilities"],
                                         dynamic_shapes={"images": dims}, opset_version=opset, dynamo=True,
                                         external_data=False)
        onnx_program.save(str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        images = torch.rand((check_images, 3, *check_shape), generator=torch.Generator().manual_seed(seed + 1))
        with torch.no_grad():
            expected = model(images).numpy()
        got = session.run(None, {"images": images.numpy()})[0]
        diff = float(np.abs(got - expected).max())
        if not diff <= ONNX_TOLERANCE:
            raise RunError(f"the ONNX model's probabilities differ from PyTorch's by {diff:.2e} "
                               f"(tolerance {ONNX_TOLERANCE:.0e}); not written to {path}")
    return diff
