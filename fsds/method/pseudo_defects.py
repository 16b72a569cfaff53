"""Pseudo-defects drawn from normal images (beyond the paper): teach "not normal" from the normal pool.

With K shots, most test defects are of types the network never saw; the thousands of normal
images say what a good part looks like, so anything else can be taught as a defect. A
pseudo-defect changes a region of a normal image, and its mask is **exactly the pixels that
changed**. The region is thresholded smooth noise (blobs) or a few thick random strokes
(scratches), confined to the part when a plain background can be told from it
(:func:`foreground`). The change is one of (the ideas of DRAEM and CutPaste, written here):

- ``texture``: foreign texture blended in with an opacity in [0.3, 1]: another image of the
  normal pool (turned, flipped, shifted, recoloured) or a procedural one (smooth noise, stripes);
- ``cutpaste``: the region filled from elsewhere in the same image (a cut-out patch moved);
- ``warp``: the pixels of the region displaced by a smooth field of a few pixels (a local dent).

Everything is drawn from a numpy Generator, so the same seed gives the same pseudo-defects.
Images are uint8 ``(3, H, W)`` tensors, as :class:`fsds.engine.training.TrainData` holds them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

KINDS = ("texture", "cutpaste", "warp")
AREA = (0.002, 0.06)  # the share of the image a region covers, drawn log-uniformly
MIN_COMPONENT = 0.01  # a connected part of the foreground smaller than this share of the image is dropped
MIN_FOREGROUND = 0.02  # a foreground estimate covering less than this share of the image is not trusted


def smooth_noise(height: int, width: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise on a coarse grid of about ``cells`` cells along the longer side, bicubically
    upsampled to ``(height, width)``: smooth blobs of about ``max(height, width) / cells`` pixels."""
    cells_y = max(1, round(cells * height / max(height, width)))
    cells_x = max(1, round(cells * width / max(height, width)))
    coarse = torch.from_numpy(rng.standard_normal((1, 1, cells_y + 1, cells_x + 1)).astype(np.float32))
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)[0, 0].numpy()


def blob_region(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean region of one or a few blobs: the top share of smooth noise, the share drawn in :data:`AREA`."""
    noise = smooth_noise(height, width, int(rng.integers(2, 9)), rng)
    if rng.random() < 0.5:  # rougher edges
        noise = noise + 0.3 * smooth_noise(height, width, int(rng.integers(12, 25)), rng)
    area = float(np.exp(rng.uniform(np.log(AREA[0]), np.log(AREA[1]))))
    return noise >= np.quantile(noise, 1.0 - area)


def stroke_region(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean region of a random polyline (1-4 segments) a few pixels thick: a scratch or a crack."""
    side = max(height, width)
    thickness = max(1.0, rng.uniform(0.005, 0.025) * side)
    points = [np.array([rng.uniform(0, height), rng.uniform(0, width)])]
    heading = rng.uniform(0, 2 * np.pi)
    for _ in range(int(rng.integers(1, 5))):
        heading += rng.uniform(-1.0, 1.0)
        length = rng.uniform(0.05, 0.3) * side
        points.append(points[-1] + length * np.array([np.sin(heading), np.cos(heading)]))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    region = np.zeros((height, width), dtype=bool)
    for a, b in zip(points[:-1], points[1:]):
        d = b - a
        t = np.clip(((ys - a[0]) * d[0] + (xs - a[1]) * d[1]) / max(float(d @ d), 1e-6), 0.0, 1.0)
        region |= (ys - a[0] - t * d[0]) ** 2 + (xs - a[1] - t * d[1]) ** 2 <= (thickness / 2) ** 2
    return region


def foreground(image: np.ndarray, tolerance: float = 24.0) -> np.ndarray | None:
    """Where the part is, for an ``(H, W, 3)`` uint8 image on a plain background: the pixels that
    differ from the border's median colour by more than ``tolerance`` levels (in some channel),
    holes filled, components under :data:`MIN_COMPONENT` of the image dropped. None (anywhere may hold a defect) when the border is not plain (a texture, a
    surface filling the frame) or the estimate covers less than :data:`MIN_FOREGROUND` of the image."""
    pixels = image.astype(np.float32)
    border = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3),
                             pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])
    colour = np.median(border, axis=0)
    if np.median(np.abs(border - colour).max(axis=1)) > tolerance / 2:
        return None
    part = np.abs(pixels - colour).max(axis=2) > tolerance
    part = ndimage.binary_fill_holes(ndimage.binary_opening(part, iterations=2))
    labels, n = ndimage.label(part)
    if n:  # specks and streaks of shading are not a part: keep components of at least 1% of the image
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        part = (sizes >= MIN_COMPONENT * part.size)[labels] & part
    if part.mean() < MIN_FOREGROUND:
        return None
    return part


def draw_region(height: int, width: int, rng: np.random.Generator, allowed: np.ndarray | None = None,
                tries: int = 8) -> np.ndarray:
    """A blob or stroke region within ``allowed`` (None: anywhere); empty if ``tries`` draws all miss it."""
    for _ in range(tries):
        region = blob_region(height, width, rng) if rng.random() < 0.6 else stroke_region(height, width, rng)
        if allowed is not None:
            region &= allowed
        if region.any():
            return region
    return np.zeros((height, width), dtype=bool)


def foreign_texture(height: int, width: int, pool: Sequence[torch.Tensor] | torch.Tensor,
                    rng: np.random.Generator) -> np.ndarray:
    """An ``(H, W, 3)`` float texture: a random image of the normal ``pool`` turned, flipped, shifted
    and recoloured (70%), else a procedural one (smooth colour noise or stripes)."""
    if len(pool) and rng.random() < 0.7:
        source = pool[int(rng.integers(0, len(pool)))].permute(1, 2, 0).numpy().astype(np.float32)
        source = np.rot90(source, int(rng.integers(0, 4)))
        if rng.random() < 0.5:
            source = source[:, ::-1]
        reps = (-(-height // source.shape[0]) + 1, -(-width // source.shape[1]) + 1, 1)
        tiled = np.tile(source, reps)
        top, left = int(rng.integers(0, source.shape[0])), int(rng.integers(0, source.shape[1]))
        texture = tiled[top : top + height, left : left + width]
        texture = texture[..., rng.permutation(3)] * rng.uniform(0.5, 1.5, size=3)
        if rng.random() < 0.3:
            texture = 255.0 - texture
        return np.clip(texture, 0, 255)
    colour = rng.uniform(0, 255, size=3)
    if rng.random() < 0.5:
        shade = smooth_noise(height, width, int(rng.integers(4, 32)), rng)[..., None]
    else:
        ys, xs = np.mgrid[0:height, 0:width]
        angle, period = rng.uniform(0, np.pi), rng.uniform(3, 20)
        shade = np.sin(2 * np.pi * (ys * np.sin(angle) + xs * np.cos(angle)) / period)[..., None]
    return np.clip(colour + rng.uniform(20, 80) * shade, 0, 255)


def _texture(image: np.ndarray, region: np.ndarray, pool, rng: np.random.Generator) -> np.ndarray:
    texture = foreign_texture(*image.shape[:2], pool, rng)
    opacity = rng.uniform(0.3, 1.0)
    weight = opacity * region[..., None]
    return image * (1 - weight) + texture * weight


def _cutpaste(image: np.ndarray, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = region.shape
    dy = int(rng.integers(h // 8, max(h // 8 + 1, h - h // 8))) * int(rng.choice([-1, 1]))
    dx = int(rng.integers(w // 8, max(w // 8 + 1, w - w // 8))) * int(rng.choice([-1, 1]))
    moved = np.roll(image, (dy, dx), axis=(0, 1))
    if rng.random() < 0.5:
        moved = moved * rng.uniform(0.7, 1.3)  # the patch a little brighter or darker
    return np.where(region[..., None], moved, image)


def _warp(image: np.ndarray, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = region.shape
    strength = rng.uniform(0.01, 0.04) * max(h, w)
    soft = ndimage.gaussian_filter(region.astype(np.float32), sigma=2.0)
    soft = np.where(region, np.maximum(soft, 0.5), 0.0)  # only the region moves
    cells = int(rng.integers(2, 6))
    dy = strength * soft * smooth_noise(h, w, cells, rng)
    dx = strength * soft * smooth_noise(h, w, cells, rng)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    coords = [ys + dy, xs + dx]
    return np.stack([ndimage.map_coordinates(image[..., c], coords, order=1, mode="reflect") for c in range(3)],
                    axis=-1)


def pseudo_defect(image: torch.Tensor, pool: Sequence[torch.Tensor] | torch.Tensor, rng: np.random.Generator,
                  confine: bool = True, tries: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """A normal ``(3, H, W)`` uint8 image with one pseudo-defect, and its ``(1, H, W)`` uint8 mask: 1
    exactly where a pixel changed. ``pool`` (normal images of any size) lends foreign textures;
    ``confine`` keeps the region on the part (:func:`foreground`). The mask may be empty if every
    draw left the pixels as they were (then the image is returned unchanged)."""
    rgb = image.permute(1, 2, 0).numpy()
    h, w = rgb.shape[:2]
    allowed = foreground(rgb) if confine else None
    pixels = rgb.astype(np.float32)
    for _ in range(tries):
        region = draw_region(h, w, rng, allowed)
        kind = KINDS[int(rng.integers(0, len(KINDS)))]
        if kind == "texture":
            changed = _texture(pixels, region, pool, rng)
        elif kind == "cutpaste":
            changed = _cutpaste(pixels, region, rng)
        else:
            changed = _warp(pixels, region, rng)
        out = np.clip(np.rint(changed), 0, 255).astype(np.uint8)
        out = np.where(region[..., None], out, rgb)  # nothing outside the region changes
        mask = (out != rgb).any(axis=2)
        if mask.any():
            return (torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1).contiguous(),
                    torch.from_numpy(mask.astype(np.uint8))[None])
    return image.clone(), torch.zeros((1, h, w), dtype=torch.uint8)
