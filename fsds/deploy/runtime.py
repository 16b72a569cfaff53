"""Which runtime runs the network for ``fsds predict``: PyTorch, or ONNX Runtime where it is faster.

On a CPU with native bf16 (AVX-512 bf16, AMX) PyTorch's bf16 autocast is the fastest; in fp32 ONNX
Runtime is faster than PyTorch (lab/findings/speed.md). So ``auto`` takes ONNX Runtime exactly when
prediction would run in fp32 on a CPU.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import torch
from torch import nn

from fsds.deploy.model import DeployedModel
from fsds.engine.device import Runtime
from fsds.errors import InputError
from fsds.method.networks import Segmenter

RUNTIMES = ("auto", "torch", "onnxruntime")


def resolve_runtime(name: str, amp_dtype: torch.dtype | None, device: torch.device) -> str:
    """``torch`` or ``onnxruntime`` for ``--runtime name`` (``auto``: ONNX Runtime for fp32 on a CPU)."""
    if name not in RUNTIMES:
        raise InputError(f"--runtime: expected one of {', '.join(RUNTIMES)}, got {name!r}")
    if name == "onnxruntime" and device.type != "cpu":
        raise InputError("--runtime onnxruntime runs on the CPU: use --device cpu, or --runtime torch for the GPU")
    if name == "auto":
        return "onnxruntime" if device.type == "cpu" and amp_dtype is None else "torch"
    return name


def put_on_runtime(model: DeployedModel, runtime: Runtime, name: str = "auto",
                   precision: str = "auto") -> tuple[Runtime, str]:
    """Make ``model`` (in place) run its network on ``--runtime name``, as ``fsds predict`` does; the
    runtime to predict with (fp32 NCHW under ONNX Runtime) and which one was chosen. ``precision``
    is the one asked for: an explicit ``bf16`` cannot run on ONNX Runtime."""
    backend = resolve_runtime(name, runtime.amp_dtype, runtime.device)
    if backend == "onnxruntime":
        if precision == "bf16":
            raise InputError("--runtime onnxruntime runs the network in fp32: drop --precision bf16, or use --runtime torch")
        model.net = OnnxNetwork(model.net)
        runtime = dataclasses.replace(runtime, amp_dtype=None, channels_last=False)  # ONNX Runtime: fp32, NCHW
    elif runtime.channels_last:
        model.net.to(memory_format=torch.channels_last)
    return runtime, backend


class OnnxNetwork(nn.Module):
    """A segmenter exported to ONNX and run by ONNX Runtime's CPU provider, standing in for it where
    :func:`fsds.engine.prediction.predict_probabilities` takes a network: normalised images
    ``(B, 3, H, W)`` (any batch, any multiple of 32 in height and width) in, logits out."""

    def __init__(self, net: Segmenter, threads: int | None = None) -> None:
        import onnxruntime as ort

        super().__init__()
        self.input_stats = net.input_stats
        net = net.cpu().float().eval()
        buf = io.BytesIO()
        axes = {0: "batch", 2: "height", 3: "width"}
        with torch.no_grad():  # the TorchScript exporter: under a second, where the dynamo one takes many
            torch.onnx.export(net, (torch.zeros(1, 3, 64, 64),), buf, opset_version=18, dynamo=False,
                              input_names=["x"], output_names=["logits"], dynamic_axes={"x": axes, "logits": axes})
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        self.session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {"x": np.ascontiguousarray(x.float().numpy())})[0]
        return torch.from_numpy(out)
