"""Deterministic synthetic defect dataset in MVTec AD layout (the embedded default data).

Two categories: a woven texture ("fabric") and a keyed metal washer on a conveyor
("washer"), three defect types each. Every image is rendered from its own
``numpy.random.SeedSequence`` keyed by (seed, category, group, index), so the output
does not depend on generation order or on which categories are requested.
Defects are painted only inside a boolean mask and every mask pixel is changed, so
the ground-truth masks are pixel-exact.

This module renders the defect-free parts and writes the dataset; the defects are drawn by
:mod:`fsds.data.defects`, both with the primitives of :mod:`fsds.data.drawing`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from fsds.data.defects import DEFECTS
from fsds.data.drawing import Rng, pixel_grid, smooth_noise

CATEGORIES: dict[str, tuple[str, ...]] = {
    "fabric": ("scratch", "hole", "stain"),
    "washer": ("crack", "dent", "contamination"),
}

_MIN_DELTA = 2  # grey levels every defect pixel moves by, so "changed pixels == mask" holds
_MIN_PIXELS = 20  # smallest accepted defect mask
_MAX_TRIES = 200
_SHIFT = 0.025  # max washer centre shift, as a fraction of the image size
_R_OUT, _R_IN = 0.36, 0.16  # nominal washer radii, fractions of the image size


# --------------------------------------------------------------------------- normals


def _finish(rng: Rng, img: np.ndarray) -> np.ndarray:
    """Global illumination, white balance and sensor noise, then quantise to uint8."""
    size = img.shape[0]
    yy, xx = pixel_grid(size)
    ang = rng.uniform(0, 2 * np.pi)
    ramp = 1 + rng.uniform(0, 0.12) * ((xx * np.cos(ang) + yy * np.sin(ang)) / size - 0.5)
    light = rng.normal(1.0, 0.05) * ramp * (1 + 0.03 * smooth_noise(rng, size, 3, 3))
    img = img * light[..., None] * (1 + rng.normal(0, 0.008, 3))  # white balance
    img = img + rng.normal(0, rng.uniform(0.006, 0.016), img.shape)
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def _fabric(rng: Rng, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain-weave cloth with yarn irregularity; the whole frame is 'part'."""
    yy, xx = pixel_grid(size)
    period = max(9.0 * size / 256, 4.0) * rng.uniform(0.96, 1.04)
    a = np.deg2rad(rng.normal(0, 1.5))
    u = (xx * np.cos(a) + yy * np.sin(a)) / period + rng.uniform(0, 2)
    v = (yy * np.cos(a) - xx * np.sin(a)) / period + rng.uniform(0, 2)
    # yarns are never perfectly straight: slow waviness along each yarn direction
    u = u + 0.12 * smooth_noise(rng, size, 6, 2)
    v = v + 0.12 * smooth_noise(rng, size, 2, 6)
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = u - iu, v - iv
    warp_top = (iu + iv) % 2 == 0
    tone_u, tone_v = rng.normal(0, 0.05, 64), rng.normal(0, 0.05, 64)  # per-yarn thickness/dye
    # rounded yarn cross-section (dark gaps) that dips where the yarn goes under
    warp = np.sin(np.pi * fu) ** 0.7 * (0.8 + 0.2 * np.sin(np.pi * fv)) * (1 + tone_u[iu.astype(np.intp) % 64])
    weft = np.sin(np.pi * fv) ** 0.7 * (0.8 + 0.2 * np.sin(np.pi * fu)) * (1 + tone_v[iv.astype(np.intp) % 64])
    fine, coarse = max(size // 2, 2), max(size // 16, 2)  # fibre streaks run along each yarn
    warp = warp + 0.06 * smooth_noise(rng, size, coarse, fine)
    weft = weft + 0.06 * smooth_noise(rng, size, fine, coarse)
    c_warp = np.array([0.62, 0.55, 0.45]) * (1 + rng.normal(0, 0.012, 3))  # dye-lot jitter
    c_weft = c_warp * np.array([0.93, 0.95, 1.0])
    shade = np.where(warp_top, warp, weft)
    colour = np.where(warp_top[..., None], c_warp, c_weft)
    return colour * (0.4 + 0.6 * shade)[..., None], np.ones((size, size), dtype=bool)


def _washer(rng: Rng, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Keyed metal washer on a dark conveyor; returns (image, interior region of the ring)."""
    s = size / 256
    yy, xx = pixel_grid(size)
    cx, cy = size / 2 + rng.uniform(-_SHIFT, _SHIFT, 2) * size
    rot = np.deg2rad(-90 + rng.normal(0, 6))  # key points up, with small rotation jitter
    R = _R_OUT * size * rng.uniform(0.985, 1.015)
    r = _R_IN * size * rng.uniform(0.97, 1.03)
    light = np.deg2rad(225 + rng.normal(0, 8))  # fixed rig light from the top-left
    dx, dy = xx - cx, yy - cy
    rho, phi = np.hypot(dx, dy), np.arctan2(dy, dx)
    # conveyor with blotchy grime and a soft contact shadow cast away from the light
    bg = 0.2 + 0.02 * smooth_noise(rng, size, 4, 4) + 0.012 * smooth_noise(rng, size, size // 8, size // 8)
    rho_s = np.hypot(dx + 3 * s * np.cos(light), dy + 3 * s * np.sin(light))
    shadow = np.clip((R + 2 * s - rho_s) / (5 * s), 0, 1) * np.clip((rho_s - r + 2 * s) / (5 * s), 0, 1)
    bg = bg * (1 - 0.45 * shadow)
    # anti-aliased ring plus a key tab that protrudes into the bore
    ring = np.clip(R + 0.5 - rho, 0, 1) * np.clip(rho - r + 0.5, 0, 1)
    along = dx * np.cos(rot) + dy * np.sin(rot)
    across = np.abs(dy * np.cos(rot) - dx * np.sin(rot))
    tab = np.clip(0.09 * size + 0.5 - across, 0, 1) * np.clip(along - 0.7 * r + 0.5, 0, 1) * (rho < r + 1)
    alpha = np.maximum(ring, tab)
    # turned metal: concentric machining marks, anisotropic highlight lobes, lit bevels
    ring_r = np.arange(0, size, max(0.8 * s, 0.5))
    marks = np.interp(rho, ring_r, np.convolve(rng.normal(0, 1, ring_r.size), np.ones(3) / 3, "same"))
    lit = np.cos(phi - light)
    metal = 0.6 + 0.1 * np.cos(2 * (phi - light)) + 0.025 * marks + 0.03 * smooth_noise(rng, size, 5, 5)
    bevel = 2.0 * s + 0.5
    metal = metal + 0.2 * lit * (np.exp(-(((R - rho) / bevel) ** 2)) - np.exp(-(((rho - r) / bevel) ** 2)))
    tint = np.array([0.8, 0.82, 0.86]) * (1 + rng.normal(0, 0.008, 3))
    img = bg[..., None] * (1 - alpha[..., None]) + (metal[..., None] * tint) * alpha[..., None]
    margin = max(3.0 * s, 1.5)  # keep defects off the bevels so they lie on flat metal
    return img, (rho > r + margin) & (rho < R - margin)


# ---------------------------------------------------------------------------- images


_NORMALS: dict[str, Callable[[Rng, int], tuple[np.ndarray, np.ndarray]]] = {"fabric": _fabric, "washer": _washer}


def _paint(base: np.ndarray, mask: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Write `new` into a copy of `base` on `mask` only; nudge pixels that would round back."""
    out = base.copy()
    old = base[mask].astype(np.int16)
    want = new[mask] * 255
    q = np.clip(np.rint(want), 0, 255).astype(np.int16)
    weak = np.abs(q - old).max(axis=1) < _MIN_DELTA
    if weak.any():
        ow = old[weak]
        up = (want[weak] - ow).mean(axis=1) > 0
        # flip the nudge where clipping at 0/255 would swallow it
        up = np.where(up, ow.min(axis=1) <= 255 - _MIN_DELTA, ow.max(axis=1) < _MIN_DELTA)
        q[weak] = np.clip(ow + np.where(up, _MIN_DELTA, -_MIN_DELTA)[:, None], 0, 255)
    out[mask] = q.astype(np.uint8)
    return out


def _render_sample(seed: int, category: str, group: str, index: int, size: int, *,
                   apply_defect: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one image; group is "train", "good" or a defect type of the category.

    Returns (rgb uint8 HxWx3, defect mask bool HxW, part region bool HxW). With
    apply_defect=False the identical defect-free image is returned (for tests).
    """
    groups = ("train", "good", *CATEGORIES[category])
    key = np.random.SeedSequence([seed, list(CATEGORIES).index(category), groups.index(group), index])
    normal_ss, defect_ss = key.spawn(2)  # separate streams: the defect never perturbs the normal
    rng = np.random.default_rng(normal_ss)
    img, region = _NORMALS[category](rng, size)
    base = _finish(rng, img)
    empty = np.zeros((size, size), dtype=bool)
    if group in ("train", "good") or not apply_defect:
        return base, empty, region
    drng = np.random.default_rng(defect_ss)
    base_f = base / 255.0
    for attempt in range(_MAX_TRIES):
        # redraw a defect that fell (mostly) off the part; grow it a little each time so that
        # tiny images (where the washer ring is only a few pixels wide) still get >= 20 pixels
        alpha, new = DEFECTS[group](drng, base_f, region, size / 256 * 1.06**attempt)
        mask = (alpha > 0) & region
        if mask.sum() >= _MIN_PIXELS:
            break
    else:
        raise RuntimeError(f"could not place a {group!r} defect at size {size}")
    # the defect surface has its own sensor noise, otherwise opaque defects look flat
    new = new + drng.normal(0, 0.01, new.shape) * alpha[..., None]
    out = _paint(base, mask, new)
    if not np.array_equal((out != base).any(axis=2), mask):  # cheap guard on the core guarantee
        raise RuntimeError(f"{group!r} defect does not match its mask")
    return out, mask, region


def generate_synthetic(root: Path, seed: int, *, n_train_good: int, n_test_good: int, n_per_defect: int,
                       size: int, categories: Sequence[str] | None = None) -> None:
    """Write the dataset under root in MVTec AD layout (see module docstring)."""
    if categories is None:
        names = list(CATEGORIES)
    else:  # a bare string would otherwise be iterated character by character
        names = [categories] if isinstance(categories, str) else list(categories)
    unknown = [c for c in names if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown category {unknown[0]!r}; allowed: {', '.join(CATEGORIES)}")
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    if seed < 0 or min(n_train_good, n_test_good, n_per_defect) < 0:
        raise ValueError("seed and image counts must be non-negative")
    root = Path(root)
    for cat in dict.fromkeys(names):  # de-duplicate, keep order
        jobs = [("train", root / cat / "train" / "good", n_train_good),
                ("good", root / cat / "test" / "good", n_test_good)]
        jobs += [(t, root / cat / "test" / t, n_per_defect) for t in CATEGORIES[cat]]
        for group, out_dir, count in jobs:
            out_dir.mkdir(parents=True, exist_ok=True)
            if group not in ("train", "good"):
                (root / cat / "ground_truth" / group).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                img, mask, _ = _render_sample(seed, cat, group, i, size)
                Image.fromarray(img).save(out_dir / f"{i:03d}.png")
                if group not in ("train", "good"):
                    Image.fromarray(mask.astype(np.uint8) * 255).save(
                        root / cat / "ground_truth" / group / f"{i:03d}_mask.png")
