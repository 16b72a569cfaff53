"""Probability maps for test images, stored compactly as uint8 at network resolution."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from tqdm import tqdm

from fsds.data.crops import pad_to
from fsds.data.images import Images, InputGeometry, load_images, normalize, resize_probabilities
from fsds.engine.device import Runtime
from fsds.errors import InputError
from fsds.evaluation.metrics import defect_area
from fsds.method.networks import Segmenter
from fsds.method.registry import FoldPairs, network


def _what_remains(norm: nn.BatchNorm2d) -> nn.Module:
    """What a folded batch norm leaves: nothing, or the activation of a norm-and-activation layer."""
    if hasattr(norm, "act") and hasattr(norm, "drop"):  # timm's BatchNormAct2d
        return nn.Sequential(norm.drop, norm.act)
    return nn.Identity()


def fold_batch_norms(module: nn.Module, pairs: FoldPairs) -> int:
    """Fold each BatchNorm2d that directly follows a Conv2d into that convolution, in place; returns
    how many were folded. For inference only (eval mode: running statistics). The patterns are
    those certain to run the convolution straight into its batch norm: consecutive children of an
    ``nn.Sequential`` (smp's Conv2dReLU, ResNet's downsample, fsds' double_conv) and the named
    ``pairs`` of the network's registry entry (``folds``: class name -> (conv, norm) attributes)."""
    folded = 0
    for child in module.children():
        folded += fold_batch_norms(child, pairs)
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            conv, norm = module._modules[a], module._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                module._modules[a] = fuse_conv_bn_eval(conv, norm)
                module._modules[b] = _what_remains(norm)
                folded += 1
    for conv_name, norm_name in pairs.get(type(module).__name__, ()):
        conv, norm = getattr(module, conv_name, None), getattr(module, norm_name, None)
        if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
            setattr(module, conv_name, fuse_conv_bn_eval(conv, norm))
            setattr(module, norm_name, _what_remains(norm))
            folded += 1
    return folded


def inference_model(model: nn.Module, channels_last: bool = False) -> nn.Module:
    """The trained model made fast for prediction, in place: eval mode, batch norms folded into
    their convolutions, channels-last if asked (lab/findings/benchmark.md measures both). Each part
    that names its network (``arch``: a segmenter, a memory's encoder) folds by its registry entry."""
    model.eval()
    for part in [m for m in model.modules() if getattr(m, "arch", "")]:
        fold_batch_norms(part, network(part.arch).folds)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where tiles of ``tile`` pixels start along a side of ``length``: ``overlap`` pixels shared by
    neighbours, the last one flush with the end (overlapping more where the length requires)."""
    if length <= tile:
        return [0]
    return list(range(0, length - tile, tile - overlap)) + [length - tile]


def blend_weights(height: int, width: int, overlap: int) -> torch.Tensor:
    """A tile's weights ``(height, width)``: 1 inside, ramping down linearly over ``overlap`` pixels
    towards its edges (never to 0), so overlapping tiles fade into each other."""
    def ramp(n: int) -> torch.Tensor:
        i = torch.arange(n, dtype=torch.float32)
        return torch.minimum(i + 1, n - i).div(overlap + 1).clamp(max=1.0)

    return ramp(height)[:, None] * ramp(width)[None, :]


def tiled(predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """``predict`` (images ``(B, C, h, w)`` -> maps ``(B, h, w)``) over ``x`` in tiles of at most
    ``tile`` x ``tile`` that overlap by ``overlap`` pixels, blended with :func:`blend_weights`. With
    ``x`` and ``tile`` multiples of 32, every tile is too."""
    _, _, height, width = x.shape
    if height <= tile and width <= tile:
        return predict(x)
    out = torch.zeros((x.shape[0], height, width), dtype=torch.float32, device=x.device)
    total = torch.zeros((height, width), dtype=torch.float32, device=x.device)
    for top in tile_starts(height, tile, overlap):
        for left in tile_starts(width, tile, overlap):
            th, tw = min(tile, height), min(tile, width)
            weights = blend_weights(th, tw, overlap).to(x.device)
            out[:, top : top + th, left : left + tw] += predict(x[..., top : top + th, left : left + tw]).float() * weights
            total[top : top + th, left : left + tw] += weights
    return out / total


def _same_shape_batches(shapes: list[tuple[int, int]], batch_size: int) -> list[tuple[int, int]]:
    """Runs of consecutive images of one shape, at most ``batch_size`` long, as (start, stop)."""
    batches, start = [], 0
    while start < len(shapes):
        stop = start + 1
        while stop < len(shapes) and stop - start < batch_size and shapes[stop] == shapes[start]:
            stop += 1
        batches.append((start, stop))
        start = stop
    return batches


@dataclass(frozen=True)
class Tiling:
    """Images larger than ``size`` (a multiple of 32) are predicted in tiles of that side that overlap
    by ``overlap`` pixels (:func:`tiled`); ``size`` 0: each image whole, in one pass."""

    size: int = 0
    overlap: int = 0

    def __post_init__(self) -> None:
        if self.size and (self.size < 64 or self.size % 32 or not 0 <= 2 * self.overlap < self.size):
            raise InputError(f"tile size must be 0 (whole images) or a multiple of 32 of at least 64, with an "
                             f"overlap of 0 to under half of it; got size {self.size}, overlap {self.overlap}")
        if self.overlap < 0:
            raise InputError(f"tile overlap must be >= 0, got {self.overlap}")


CPU = Runtime(torch.device("cpu"), None, False)  # plain fp32 on the CPU


@torch.no_grad()
def predict_probabilities(model: Segmenter, images: Images, runtime: Runtime = CPU, *, batch_size: int = 8,
                          tiling: Tiling = Tiling(), desc: str = "predict",
                          progress: bool = True) -> np.ndarray | list[np.ndarray]:
    """uint8 images -> uint8 probabilities (round(255 * p)) at their size: ``(N, S, S)`` for a
    stacked ``(N, 3, S, S)``, a list of ``(h_i, w_i)`` for a list of ``(3, h_i, w_i)`` (images at a
    working scale, any aspect ratio), on the ``runtime``'s device, precision and layout. Each image
    is padded to a multiple of 32 by repeating its edge (as training crops are,
    :func:`fsds.data.crops.pad_to`) and the padding cut off again; images larger than the
    ``tiling`` size are predicted in overlapping tiles (:func:`tiled`)."""
    device = runtime.device
    model.eval()
    shapes = [tuple(int(d) for d in image.shape[-2:]) for image in images]
    out: list[np.ndarray] = [None] * len(shapes)  # type: ignore[list-item]

    def probabilities(x: torch.Tensor) -> torch.Tensor:
        with runtime.autocast():
            logits = model(x)
        return torch.sigmoid(logits.float())[:, 0]

    for start, stop in tqdm(_same_shape_batches(shapes, batch_size), desc=desc, unit="batch", leave=False,
                            disable=not progress):
        height, width = shapes[start]
        batch = images[start:stop] if isinstance(images, torch.Tensor) else torch.stack(images[start:stop])
        batch = pad_to(batch, -(-height // 32) * 32, -(-width // 32) * 32)
        x = normalize(batch.to(device), model.input_stats, runtime.channels_last)
        prob = tiled(probabilities, x, tiling.size, tiling.overlap) if tiling.size else probabilities(x)
        levels = (prob[:, :height, :width] * 255.0).round().to(torch.uint8).cpu().numpy()
        out[start:stop] = list(levels)
    if isinstance(images, torch.Tensor):
        return np.stack(out) if out else np.empty((0, *images.shape[-2:]), dtype=np.uint8)
    return out


def predict_category(model: Segmenter, test: pd.DataFrame, geometry: InputGeometry | int, threshold: float,
                     runtime: Runtime = CPU, **options: Any) -> tuple[np.ndarray | list[np.ndarray], pd.DataFrame]:
    """Predict one category's test images as the network sees them (``geometry``: an
    :class:`~fsds.data.images.InputGeometry`, or the side images are squashed to) with
    :func:`predict_probabilities` (``options``: its keyword arguments); returns the maps and a
    per-image score table.

    The score is the paper's anomaly score: the predicted defect area, as a fraction of the
    image, measured at the image's original size.
    """
    images = load_images(test["image"].tolist(), geometry, desc=f"{options.get('desc', 'predict')} load")
    probs = predict_probabilities(model, images, runtime, **options)
    scores = [defect_area(resize_probabilities(p, int(h), int(w)), threshold)
              for p, h, w in zip(probs, test["height"], test["width"])]
    table = test[["category", "defect_type", "image", "mask", "label", "height", "width"]].copy()
    table["score"] = scores
    return probs, table
