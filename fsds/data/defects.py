"""The synthetic defects (:mod:`fsds.data.synthetic`), one painter per defect type.

Each defect returns (alpha, new): alpha > 0 marks the pixels it touches; new is the
full float image with the defect (only pixels with alpha > 0 are ever used).
A painter takes (rng, base float image, region where the defect may lie, scale s: size / 256,
grown a little on each retry) and starts the defect at a random point of the region.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from fsds.data.drawing import Rng, blob, loguniform, pick_point, pixel_grid, polyline_distance, random_walk

DefectFn = Callable[[Rng, np.ndarray, np.ndarray, float], tuple[np.ndarray, np.ndarray]]


def _scratch(rng: Rng, base: np.ndarray, region: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Thin curved line of abraded yarn: weave flattened towards a lighter/darker mean."""
    size = base.shape[0]
    p0 = pick_point(rng, region)
    length, ang = max(rng.uniform(0.08, 0.35) * size, 12.0), rng.uniform(0, 2 * np.pi)
    d = np.array([np.cos(ang), np.sin(ang)])
    ctrl = p0 + 0.5 * length * d + rng.normal(0, 0.25) * length * np.array([-d[1], d[0]])
    t = np.linspace(0, 1, 32)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * ctrl + t**2 * (p0 + length * d)
    half = max(rng.uniform(0.6, 2.2) * s, 0.5)
    alpha = np.clip(half + 0.5 - polyline_distance(pts, size), 0, 1)
    flat = base.mean(axis=(0, 1)) * (1 + rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.4))
    w = loguniform(rng, 0.4, 1.0) * alpha[..., None]  # how much of the weave is worn away
    return alpha, base * (1 - w) + flat * w


def _hole(rng: Rng, base: np.ndarray, region: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Dark hole with a ragged edge; partial 'thin spots' (low depth) are the subtle cases."""
    radius = max(loguniform(rng, 3.75, 18.0) * s, 2.6)
    inside, _ = blob(rng, base.shape[0], pick_point(rng, region), radius, 0.35,
                      rng.uniform(0.6, 1.0), rng.uniform(0, np.pi))
    alpha = np.clip(inside + 0.5, 0, 1) * loguniform(rng, 0.2, 1.0)
    backing = rng.uniform(0.03, 0.12)
    return alpha, base * (1 - alpha[..., None]) + backing * alpha[..., None]


def _stain(rng: Rng, base: np.ndarray, region: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Soft, low-contrast discoloration (coffee, grease, yellowing) with a blurry rim."""
    radius = max(loguniform(rng, 8.0, 40.0) * s, 4.0)
    _, q = blob(rng, base.shape[0], pick_point(rng, region), radius, 0.25,
                 rng.uniform(0.5, 1.0), rng.uniform(0, np.pi))
    # soft body plus an optional darker "coffee ring" where the liquid dried at the rim
    ring = rng.uniform(0, 0.5) * np.exp(-(((1 - q) / 0.12) ** 2)) * (q < 1)
    alpha = np.clip(0.6 * np.sqrt(np.clip(1 - q**2, 0, 1)) + ring, 0, 1)
    alpha = np.where(alpha > 0.1, alpha, 0.0)  # the faint fringe below this is not labelled or painted
    tint = np.array([[0.7, 0.55, 0.38], [0.55, 0.55, 0.57], [0.95, 0.85, 0.5]])[rng.integers(3)]
    k = loguniform(rng, 0.4, 1.0) * alpha[..., None]
    return alpha, base * (1 - k + k * tint)


def _crack(rng: Rng, base: np.ndarray, region: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Thin dark jagged crack, sometimes with a side branch."""
    size = base.shape[0]
    step, ang = max(2.0 * s, 1.0), rng.uniform(0, 2 * np.pi)
    steps = max(int(rng.uniform(0.06, 0.25) * size / step), 14)
    main = random_walk(rng, pick_point(rng, region), ang, steps, step, 0.35)
    dist = polyline_distance(main, size)
    if rng.random() < 0.6:
        root = main[rng.integers(2, len(main) - 2)]
        turn = rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
        branch = random_walk(rng, root, ang + turn, steps // 2, step, 0.35)
        dist = np.minimum(dist, polyline_distance(branch, size))
    half = max(rng.uniform(0.5, 1.2) * s, 0.45)
    alpha = np.clip(half + 0.5 - dist, 0, 1)
    return alpha, base * (1 - loguniform(rng, 0.15, 0.7) * alpha[..., None])


def _dent(rng: Rng, base: np.ndarray, region: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Shallow depression: shaded dark on the lit side and bright on the far side."""
    size = base.shape[0]
    yy, xx = pixel_grid(size)
    c = pick_point(rng, region)
    radius = max(loguniform(rng, 5.0, 18.0) * s, 2.8)
    _, q = blob(rng, size, c, radius, 0.1, rng.uniform(0.6, 1.0), rng.uniform(0, np.pi))
    bowl = np.clip(1 - q**2, 0, 1)
    light = np.deg2rad(225)
    facing = ((xx - c[0]) * np.cos(light) + (yy - c[1]) * np.sin(light)) / radius
    shade = loguniform(rng, 0.06, 0.45) * (facing - 0.3) * bowl
    return (q < 1).astype(np.float64), base + shade[..., None]


def _contamination(rng: Rng, base: np.ndarray, region: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray]:
    """A cluster of small oil/dust/rust spots, optionally with a smear."""
    size = base.shape[0]
    centre = pick_point(rng, region)
    spread = max(rng.uniform(6, 20) * s, 3.0)
    alpha = np.zeros((size, size))
    for _ in range(int(rng.integers(1, 6))):
        radius = max(rng.uniform(1.8, 6.8) * s, 1.3)
        inside, _ = blob(rng, size, centre + rng.normal(0, spread, 2), radius, 0.3)
        alpha = np.maximum(alpha, np.clip(inside + 0.5, 0, 1))
    if rng.random() < 0.4:
        length = max(rng.uniform(8, 25) * s, 4.0)
        _, q = blob(rng, size, centre, length, 0.1, rng.uniform(0.1, 0.3), rng.uniform(0, np.pi))
        alpha = np.maximum(alpha, 0.6 * np.clip(1 - q**2, 0, 1))
    colour = np.array([[0.3, 0.24, 0.14], [0.28, 0.28, 0.28], [0.5, 0.28, 0.14]])[rng.integers(3)]
    a = loguniform(rng, 0.12, 0.8) * alpha[..., None]
    return alpha, base * (1 - a) + colour * a


DEFECTS: dict[str, DefectFn] = {
    "scratch": _scratch, "hole": _hole, "stain": _stain,
    "crack": _crack, "dent": _dent, "contamination": _contamination,
}
