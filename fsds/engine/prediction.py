"""Probability maps for test images, stored compactly as uint8 at network resolution."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from tqdm import tqdm

from fsds.data.images import load_images, normalize, resize_probabilities
from fsds.evaluation.metrics import defect_area
from fsds.method.networks import Segmenter


# Convolution -> batch norm pairs by attribute name, where a module's forward runs the one straight
# into the other: torchvision's ResNet blocks and stem (conv<i>/bn<i>), and timm's EfficientNet
# (smp's timm-tf_efficientnet_lite encoders), whose norms are BatchNormAct2d (norm, then its activation).
_NAMED_PAIRS = {
    "EfficientNetLiteEncoder": (("conv_stem", "bn1"), ("conv_head", "bn2")),
    "DepthwiseSeparableConv": (("conv_dw", "bn1"), ("conv_pw", "bn2")),
    "InvertedResidual": (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
}
_TORCHVISION_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))


def _what_remains(norm: nn.BatchNorm2d) -> nn.Module:
    """What a folded batch norm leaves: nothing, or the activation of a norm-and-activation layer."""
    if hasattr(norm, "act") and hasattr(norm, "drop"):  # timm's BatchNormAct2d
        return nn.Sequential(norm.drop, norm.act)
    return nn.Identity()


def fold_batch_norms(module: nn.Module) -> int:
    """Fold each BatchNorm2d that directly follows a Conv2d into that convolution, in place; returns
    how many were folded. For inference only (eval mode: running statistics). The patterns are
    those certain to run the convolution straight into its batch norm: consecutive children of an
    ``nn.Sequential`` (smp's Conv2dReLU, ResNet's downsample, fsds' double_conv) and the named
    pairs of torchvision's ResNet and timm's EfficientNet blocks."""
    folded = 0
    for child in module.children():
        folded += fold_batch_norms(child)
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            conv, norm = module._modules[a], module._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                module._modules[a] = fuse_conv_bn_eval(conv, norm)
                module._modules[b] = _what_remains(norm)
                folded += 1
    for conv_name, norm_name in _NAMED_PAIRS.get(type(module).__name__, _TORCHVISION_PAIRS):
        conv, norm = getattr(module, conv_name, None), getattr(module, norm_name, None)
        if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
            setattr(module, conv_name, fuse_conv_bn_eval(conv, norm))
            setattr(module, norm_name, _what_remains(norm))
            folded += 1
    return folded


def inference_model(model: Segmenter, channels_last: bool = False) -> Segmenter:
    """The trained model made fast for prediction, in place: eval mode, batch norms folded into
    their convolutions, channels-last if asked (reports/benchmark.md measures both)."""
    model.eval()
    fold_batch_norms(model)
    return model.to(memory_format=torch.channels_last) if channels_last else model


@torch.no_grad()
def predict_probabilities(
    model: Segmenter,
    images: torch.Tensor,
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    desc: str = "predict",
    channels_last: bool = False,
) -> np.ndarray:
    """uint8 images ``(N, 3, S, S)`` -> uint8 probabilities ``(N, S, S)`` (round(255 * p))."""
    device = torch.device(device)
    model.eval()
    out = np.empty((len(images), images.shape[-2], images.shape[-1]), dtype=np.uint8)
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False):
        x = normalize(images[start : start + batch_size].to(device), model.input_stats, channels_last)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(x)
        prob = torch.sigmoid(logits.float())[:, 0]
        out[start : start + len(x)] = (prob * 255.0).round().to(torch.uint8).cpu().numpy()
    return out


def predict_category(
    model: Segmenter,
    test: pd.DataFrame,
    image_size: int,
    threshold: float,
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    desc: str = "predict",
    channels_last: bool = False,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Predict one category's test images; returns the maps and a per-image score table.

    The score is the paper's anomaly score: the predicted defect area, as a fraction of the
    image, measured at the image's original size.
    """
    images = load_images(test["image"].tolist(), image_size, desc=f"{desc} load")
    probs = predict_probabilities(model, images, batch_size=batch_size, device=device, amp_dtype=amp_dtype, desc=desc,
                                  channels_last=channels_last)
    scores = [defect_area(resize_probabilities(p, int(h), int(w)), threshold)
              for p, h, w in zip(probs, test["height"], test["width"])]
    table = test[["category", "defect_type", "image", "mask", "label", "height", "width"]].copy()
    table["score"] = scores
    return probs, table
