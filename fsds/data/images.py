"""Images as network input: decode once, resize to the working scale, keep as uint8 tensors.

:class:`InputGeometry` says how: squashed to a square (the paper), or scaled by one factor per
category, keeping the aspect ratio (training then draws crops: :mod:`fsds.data.crops`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from fsds.io import read_mask, read_rgb


class InputStats(NamedTuple):
    """The per-channel mean and std an encoder's weights expect of RGB in [0, 1]: a property of the
    network: each entry of :mod:`fsds.method.registry` says its own."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class InputGeometry:
    """How an image becomes network input; kept in each checkpoint (``input``).

    ``scale`` 0: every image squashed to ``size`` x ``size`` (the paper). A positive ``scale``: every
    image resized by that factor, keeping its aspect ratio (its *working scale*); training draws
    ``size`` x ``size`` crops from it and prediction takes it whole.
    """

    size: int
    scale: float = 0.0

    def __post_init__(self) -> None:
        if self.size < 1 or self.scale < 0:
            raise ValueError(f"input geometry needs size >= 1 and scale >= 0, got {self.size}, {self.scale}")

    @property
    def crops(self) -> bool:
        return self.scale > 0

    def shape(self, height: int, width: int) -> tuple[int, int]:
        """The network-input shape of an image of ``height`` x ``width`` pixels."""
        if not self.crops:
            return self.size, self.size
        return max(1, round(height * self.scale)), max(1, round(width * self.scale))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def squashed(size: int) -> InputGeometry:
    return InputGeometry(size)


def working_geometry(crop_size: int, working_size: int, sizes: Sequence[tuple[int, int]]) -> InputGeometry:
    """Squash (``working_size`` 0), or one scale for all of a category's images: the largest factor
    at or below 1 that keeps the longest side of every image in ``sizes`` (heights, widths of its
    training images) at most ``working_size``."""
    if not working_size:
        return squashed(crop_size)
    longest = max((max(int(h), int(w)) for h, w in sizes), default=0)
    if longest < 1:
        raise ValueError("no image sizes to choose a working scale from")
    return InputGeometry(crop_size, min(1.0, working_size / longest))


Images = Union[torch.Tensor, list]  # (N, C, S, S) squashed, or N tensors (C, h_i, w_i) at a working scale


def resize_image(rgb: np.ndarray, size: int | tuple[int, int]) -> torch.Tensor:
    """uint8 RGB ``(H, W, 3)`` -> uint8 ``(3, h, w)`` (``size`` is ``(h, w)`` or one side of a square),
    bilinear: the one way fsds turns an image into network input, in training, prediction and
    deployment alike."""
    h, w = (size, size) if isinstance(size, int) else size
    if rgb.shape[:2] == (h, w):
        return torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1).contiguous()
    img = Image.fromarray(rgb).resize((w, h), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def as_geometry(geometry: InputGeometry | int) -> InputGeometry:
    return geometry if isinstance(geometry, InputGeometry) else squashed(int(geometry))


def load_images(paths: Sequence[str], geometry: InputGeometry | int, desc: str = "images") -> Images:
    """Decode and resize images once: uint8 ``(N, 3, S, S)`` squashed (``geometry`` an
    :class:`InputGeometry` or the side of the square), else a list of ``(3, h_i, w_i)``."""
    geometry = as_geometry(geometry)
    if geometry.crops:
        out_list = []
        for path in tqdm(paths, desc=desc, unit="img", leave=False):
            rgb = read_rgb(path)
            out_list.append(resize_image(rgb, geometry.shape(*rgb.shape[:2])))
        return out_list
    size = geometry.size
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    for i, path in enumerate(tqdm(paths, desc=desc, unit="img", leave=False)):
        out[i] = resize_image(read_rgb(path), size)
    return out


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    """A mask (non-zero = defect) -> uint8 ``(1, h, w)`` in {0, 1}.

    A resized pixel is defective when at least half of it was; a thin defect that would vanish
    that way keeps every pixel it touches instead, so no training shot loses its defect.
    """
    binary_in = torch.from_numpy((np.asarray(mask) > 0).astype(np.float32))
    if tuple(binary_in.shape) == tuple(shape):
        return binary_in.to(torch.uint8)[None]
    small = F.interpolate(binary_in[None, None], size=tuple(shape), mode="area")[0, 0]
    binary = small >= 0.5
    if binary_in.any() and not binary.any():
        binary = small > 0
    return binary.to(torch.uint8)[None]


def load_masks(paths: Sequence[str], geometry: InputGeometry | int) -> Images:
    """Decode and resize masks as :func:`load_images` does images: uint8 in {0, 1}, ``(N, 1, S, S)``
    squashed, else a list of ``(1, h_i, w_i)`` (:func:`resize_mask`)."""
    geometry = as_geometry(geometry)
    masks = []
    for path in paths:
        mask = read_mask(path)
        masks.append(resize_mask(mask, geometry.shape(*mask.shape[:2])))
    if geometry.crops:
        return masks
    size = geometry.size
    return torch.stack(masks) if masks else torch.empty((0, 1, size, size), dtype=torch.uint8)


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
