"""Images as network input: decode once, resize to the training size, keep as uint8 tensors."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from fsds.io import read_mask, read_rgb


class InputStats(NamedTuple):
    """The per-channel mean and std an encoder's weights expect of RGB in [0, 1]: a property of the
    network (:attr:`fsds.method.networks.Segmenter.input_stats`), kept in its checkpoint."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


IMAGENET = InputStats((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # torchvision's ResNet and VGG weights
SIGNED = InputStats((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # [-1, 1]: TF-trained weights (EfficientNet-Lite)


def resize_image(rgb: np.ndarray, size: int) -> torch.Tensor:
    """uint8 RGB ``(H, W, 3)`` -> uint8 ``(3, size, size)``, bilinear: the one way fsds turns an
    image into network input, in training, prediction and deployment alike."""
    img = Image.fromarray(rgb).resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def load_images(paths: Sequence[str], size: int, desc: str = "images") -> torch.Tensor:
    """Decode and resize images once: uint8 ``(N, 3, size, size)``."""
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    for i, path in enumerate(tqdm(paths, desc=desc, unit="img", leave=False)):
        out[i] = resize_image(read_rgb(path), size)
    return out


def load_masks(paths: Sequence[str], size: int) -> torch.Tensor:
    """Decode and resize masks: uint8 ``(N, 1, size, size)`` in {0, 1}.

    A resized pixel is defective when at least half of it was; a thin defect that would vanish
    that way keeps every pixel it touches instead, so no training shot loses its defect.
    """
    out = torch.empty((len(paths), 1, size, size), dtype=torch.uint8)
    for i, path in enumerate(paths):
        mask = read_mask(path).astype(np.float32)
        small = F.interpolate(torch.from_numpy(mask)[None, None], size=(size, size), mode="area")[0, 0]
        binary = small >= 0.5
        if mask.any() and not binary.any():
            binary = small > 0
        out[i, 0] = binary.to(torch.uint8)
    return out


def normalize(images: torch.Tensor, stats: InputStats, channels_last: bool = False) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` -> float, normalised with the network's ``stats``; in channels-last
    memory if asked (the layout oneDNN's convolutions prefer; the shape stays NCHW)."""
    mean = torch.tensor(stats.mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(stats.std, device=images.device).view(1, 3, 1, 1)
    out = (images.float() / 255.0 - mean) / std
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def resize_probabilities(prob: np.ndarray, height: int, width: int) -> np.ndarray:
    """A uint8 probability map (0-255) at network size -> float32 in [0, 1] at the original size."""
    t = torch.from_numpy(prob.astype(np.float32) / 255.0)[None, None]
    if t.shape[-2:] != (height, width):
        t = F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)
    return t[0, 0].numpy()
