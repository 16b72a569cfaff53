"""Drawing primitives for the synthetic data (:mod:`fsds.data.synthetic`): numpy on a pixel grid.

Coordinates are pixel centres, points are (x, y); every random draw comes from the caller's
generator, so what is drawn depends only on its stream.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

Rng = np.random.Generator


@lru_cache(maxsize=8)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (yy, xx); cached because every renderer needs them."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def smooth_noise(rng: Rng, size: int, cells_y: int, cells_x: int) -> np.ndarray:
    """Value noise: a coarse random grid upsampled with smoothstep-bilinear weights."""
    grid = rng.standard_normal((cells_y + 1, cells_x + 1))

    def axis(cells: int) -> tuple[np.ndarray, np.ndarray]:
        t = (np.arange(size) + 0.5) * (cells / size)
        i = t.astype(np.intp)
        f = t - i
        return i, f * f * (3 - 2 * f)

    iy, fy = axis(cells_y)
    ix, fx = axis(cells_x)
    rows = grid[iy] * (1 - fy)[:, None] + grid[iy + 1] * fy[:, None]
    return rows[:, ix] * (1 - fx) + rows[:, ix + 1] * fx


def loguniform(rng: Rng, lo: float, hi: float) -> float:
    """Log-uniform draw, so small/subtle values are as common as large/obvious ones."""
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def pick_point(rng: Rng, region: np.ndarray) -> np.ndarray:
    """A random pixel centre (x, y) inside a boolean region."""
    flat = np.flatnonzero(region)
    k = int(flat[rng.integers(flat.size)])
    return np.array([k % region.shape[1], k // region.shape[1]], dtype=np.float64)


def blob(rng: Rng, size: int, centre: np.ndarray, radius: float, rough: float,
          aspect: float = 1.0, angle: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Blob with a wobbly outline: returns (edge - rho, rho / edge); first is > 0 inside."""
    yy, xx = pixel_grid(size)
    dx, dy = xx - centre[0], yy - centre[1]
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = (dy * np.cos(angle) - dx * np.sin(angle)) / aspect
    rho, th = np.hypot(u, v), np.arctan2(v, u)
    k = np.arange(2, 6)
    wobble = np.cos(th[..., None] * k + rng.uniform(0, 2 * np.pi, k.size)) @ (rng.normal(0, rough, k.size) / k)
    edge = radius * (1 + np.clip(wobble, -0.5, 0.5))
    return edge - rho, rho / edge


def polyline_distance(pts: np.ndarray, size: int) -> np.ndarray:
    """Euclidean distance from every pixel to a polyline given as an (N, 2) array of x, y."""
    yy, xx = pixel_grid(size)
    dist = np.full((size, size), np.inf)
    for a, b in zip(pts[:-1], pts[1:]):  # loop over segments only; pixels are vectorised
        ab = b - a
        t = np.clip(((xx - a[0]) * ab[0] + (yy - a[1]) * ab[1]) / max(ab @ ab, 1e-9), 0, 1)
        dist = np.minimum(dist, np.hypot(xx - a[0] - t * ab[0], yy - a[1] - t * ab[1]))
    return dist


def random_walk(rng: Rng, start: np.ndarray, angle: float, steps: int, step: float, wiggle: float) -> np.ndarray:
    """Jagged polyline: a heading that performs a random walk (crack-like)."""
    heading = angle + np.cumsum(rng.normal(0, wiggle, steps))
    moves = step * np.stack([np.cos(heading), np.sin(heading)], axis=1)
    return np.vstack([start, start + np.cumsum(moves, axis=0)])
