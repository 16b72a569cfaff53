"""A memory of the normal pool: each test patch scored by its distance to the nearest normal patch.

PatchCore's idea (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022),
written here. A pretrained encoder's feature maps at the chosen ``strides`` (stride 4 and 8 of the
ImageNet EfficientNet-Lite0 by default) are each averaged over a ``pool`` x ``pool`` neighbourhood,
so that a patch sees its surroundings, brought to one grid (``grid_stride``) and concatenated: one
vector per patch. The vectors of a category's normal training images, reduced by
:func:`greedy_coreset`, are its *bank*. A patch of any image scores the mean distance to its ``k``
nearest bank vectors; the map of those scores is upsampled to the input and smoothed by a Gaussian.

The distance ``threshold`` that the held-out normals calibrate (:func:`calibrated_distance`) sits at
probability 0.5: :class:`NormalMemory` returns the logit ``log(d / threshold)``, so its output is
read like the segmenter's (sigmoid, uint8 maps, the same thresholds and metrics) and can be fused
with it. Distances are always computed in fp32, also under a bf16 runtime.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fsds.data.images import InputStats
from fsds.method.registry import network

EPS = 1e-6  # the smallest distance the logit takes (log(0) would be -inf)


@dataclass(frozen=True)
class MemorySpec:
    """How a memory is built, every value resolved (params.yaml ``memory``)."""

    arch: str  # the network whose pretrained encoder makes the features (fsds.method.registry)
    strides: tuple[int, ...]  # the encoder maps the patch vectors concatenate, e.g. (4, 8)
    grid_stride: int  # the patch grid's stride in input pixels
    pool: int  # neighbourhood each map is averaged over
    bank_size: int  # patch vectors kept
    sampler: str  # coreset (greedy k-center) | random
    k: int  # nearest bank vectors a patch's distance averages
    sigma: float  # Gaussian smoothing of the map, input pixels
    coreset_dims: int = 64  # the random projection the coreset measures distances in
    coreset_candidates: int = 0  # the coreset picks from this many vectors drawn at random first (0: from all)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stride_index(stride: int) -> int:
    """The position of the feature map at ``stride`` in an encoder's output (index 0 is the input)."""
    index = int(round(math.log2(stride)))
    if stride < 2 or 2 ** index != stride:
        raise ValueError(f"memory strides must be powers of two of at least 2, got {stride}")
    return index


def patch_features(maps: Sequence[torch.Tensor], size: tuple[int, int], pool: int) -> torch.Tensor:
    """Feature maps ``(B, C_i, h_i, w_i)`` -> patch vectors ``(B, sum C_i, *size)``: each map averaged
    over ``pool`` x ``pool`` neighbours (stride 1, the border averaging only what is there), resized to
    ``size`` (area-averaged down, bilinear up) and concatenated, in fp32."""
    out = []
    for m in maps:
        m = m.float()
        if pool > 1:
            m = F.avg_pool2d(m, pool, stride=1, padding=pool // 2, count_include_pad=False)
        if tuple(m.shape[-2:]) != tuple(size):
            if m.shape[-2] >= size[0] and m.shape[-1] >= size[1]:
                m = F.adaptive_avg_pool2d(m, size)
            else:
                m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
        out.append(m)
    return torch.cat(out, 1)


def nearest_distances(queries: torch.Tensor, bank: torch.Tensor, k: int = 1, chunk: int = 4096) -> torch.Tensor:
    """The mean Euclidean distance of each row of ``queries`` ``(M, C)`` to its ``k`` nearest rows of
    ``bank`` ``(K, C)``, in fp32, ``chunk`` queries at a time (bounds the ``chunk x K`` distance matrix)."""
    if not 1 <= k <= bank.shape[0]:
        raise ValueError(f"k must be in 1..{bank.shape[0]} (the bank's size), got {k}")
    bank = bank.float()
    bank_sq = (bank * bank).sum(1)
    out = []
    # Exported (ONNX), in one piece: a loop over chunks would fix the batch size into the graph.
    parts = [queries.float()] if torch.compiler.is_exporting() else queries.float().split(chunk)
    for part in parts:
        # Which are nearest: |q - b|^2 = |q|^2 - 2 q.b + |b|^2, one matrix product per chunk (|q|^2 is
        # the same for a row, so it is left out); how near: the difference itself, exact where the
        # expansion would round (a patch equal to a bank vector is at 0, not at sqrt(rounding error)).
        scores = torch.addmm(bank_sq[None, :], part, bank.T, alpha=-2.0)
        index = scores.topk(k, dim=1, largest=False).indices if k > 1 else scores.argmin(1, keepdim=True)
        out.append((part[:, None, :] - bank[index]).norm(dim=2).mean(1))
    return torch.cat(out) if out else queries.new_zeros(0)


def greedy_coreset(vectors: torch.Tensor, size: int, seed: int, dims: int = 128) -> torch.Tensor:
    """Indices of ``size`` rows of ``vectors`` ``(N, C)`` chosen by greedy k-center (PatchCore's
    coreset): start at a row drawn by ``seed``, then repeatedly add the row farthest from every row
    chosen so far, so the chosen rows cover the others as tightly as ``size`` allows. Distances are
    taken in a random projection to ``dims`` dimensions (Johnson-Lindenstrauss; none when ``C`` is
    at most ``dims``). The same ``vectors`` and ``seed`` give the same indices."""
    n = vectors.shape[0]
    if size >= n:
        return torch.arange(n)
    if size < 1:
        raise ValueError(f"coreset size must be >= 1, got {size}")
    generator = torch.Generator().manual_seed(seed)
    x = vectors.float()
    if x.shape[1] > dims:
        x = x @ (torch.randn(x.shape[1], dims, generator=generator) / math.sqrt(dims))
    x = x.contiguous()
    chosen = torch.empty(size, dtype=torch.long)
    chosen[0] = int(torch.randint(n, (1,), generator=generator))
    sq = (x * x).sum(1)
    nearest = torch.full((n,), float("inf"))
    for i in range(1, size + 1):
        c = x[chosen[i - 1]]
        d2 = sq - 2.0 * (x @ c) + float(c @ c)
        torch.minimum(nearest, d2, out=nearest)
        if i < size:
            chosen[i] = int(nearest.argmax())
    return chosen


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalised 1-D Gaussian of ``sigma`` pixels, truncated at 4 sigma."""
    radius = max(1, int(round(4 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """``(B, 1, H, W)`` smoothed by a separable Gaussian of ``sigma`` pixels (edges reflected, or
    replicated where the map is smaller than the kernel); ``sigma`` 0 leaves it as it is."""
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel(sigma).to(maps.device)
    r = kernel.numel() // 2
    mode = "reflect" if min(maps.shape[-2:]) > r else "replicate"
    out = F.conv2d(F.pad(maps, (r, r, 0, 0), mode=mode), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(out, (0, 0, r, r), mode=mode), kernel.view(1, 1, -1, 1))


def calibrated_distance(distances: Sequence[torch.Tensor], max_fpr: float) -> float:
    """The distance that at most ``max_fpr`` of the pixels of ``distances`` (maps of held-out normal
    images) reach: their ``1 - max_fpr`` quantile, the memory's threshold."""
    if not 0.0 < max_fpr < 1.0:
        raise ValueError(f"max_fpr must be in (0, 1), got {max_fpr}")
    values = torch.cat([d.reshape(-1).float() for d in distances]) if distances else torch.zeros(0)
    if values.numel() == 0:
        raise ValueError("no calibration pixels: give at least one normal image")
    ordered = values.sort().values
    index = min(values.numel() - 1, int(math.ceil((1.0 - max_fpr) * values.numel())))
    return max(float(ordered[index]), EPS)


class NormalMemory(nn.Module):
    """A category's memory: a frozen pretrained ``encoder``, its ``bank`` of normal patch vectors and
    the calibrated distance ``threshold``; ``forward`` gives the logit ``log(d / threshold)`` of each
    pixel, ``(B, 1, H, W)`` for normalised images ``(B, 3, H, W)`` (``input_stats``)."""

    def __init__(self, encoder: nn.Module, input_stats: InputStats, strides: Sequence[int], bank: torch.Tensor,
                 threshold: float = 1.0, *, grid_stride: int, pool: int = 3, k: int = 1, sigma: float = 4.0,
                 arch: str = "") -> None:
        super().__init__()
        self.arch = arch  # the encoder's network in fsds.method.registry ("" for a stand-in encoder)
        self.encoder = encoder.eval().requires_grad_(False)
        self.input_stats = input_stats
        self.strides = tuple(int(s) for s in strides)
        self.indices = [stride_index(s) for s in self.strides]
        self.grid_stride = int(grid_stride)
        stride_index(self.grid_stride)
        if pool < 1 or pool % 2 == 0:
            raise ValueError(f"memory pool must be an odd number >= 1, got {pool}")
        if threshold <= 0:
            raise ValueError(f"memory threshold must be > 0, got {threshold}")
        self.pool, self.k, self.sigma = int(pool), int(k), float(sigma)
        self.register_buffer("bank", bank.float().contiguous())
        self.register_buffer("threshold", torch.tensor(float(threshold)))

    def layout(self) -> dict[str, Any]:
        """What rebuilds this memory around its state dict (:func:`empty_memory`)."""
        return {"arch": self.arch, "strides": list(self.strides), "grid_stride": self.grid_stride, "pool": self.pool,
                "k": self.k, "sigma": self.sigma, "bank_shape": list(self.bank.shape)}

    def train(self, mode: bool = True) -> "NormalMemory":
        super().train(mode)
        self.encoder.eval()  # the encoder's statistics are the pretrained ones, always
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Patch vectors ``(B, C, h, w)`` on the grid of ``grid_stride`` (input ``H, W`` divisible by it)."""
        maps = list(self.encoder(x))
        size = (x.shape[-2] // self.grid_stride, x.shape[-1] // self.grid_stride)
        return patch_features([maps[i] for i in self.indices], size, self.pool)

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """Each pixel's distance to the normal patches, ``(B, 1, H, W)``: the patch distances upsampled
        (bilinear) to the input and smoothed (``sigma`` pixels)."""
        feats = self.features(x)
        b, c, h, w = feats.shape
        with torch.autocast(x.device.type, enabled=False):
            d = nearest_distances(feats.permute(0, 2, 3, 1).reshape(-1, c), self.bank, self.k)
            d = d.view(b, 1, h, w)
            d = F.interpolate(d, size=x.shape[-2:], mode="bilinear", align_corners=False)
            return gaussian_blur(d, self.sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.distances(x).clamp_min(EPS) / self.threshold)



def empty_memory(layout: dict[str, Any]) -> NormalMemory:
    """A memory of ``layout`` (:meth:`NormalMemory.layout`) with random encoder weights and a zero bank,
    for a state dict to fill: how a stored memory is rebuilt."""
    entry = network(layout["arch"], "memory.arch")
    encoder, _, _ = entry.parts()
    return NormalMemory(encoder, entry.input_stats, layout["strides"], torch.zeros(layout["bank_shape"]), 1.0,
                        grid_stride=layout["grid_stride"], pool=layout["pool"], k=layout["k"], sigma=layout["sigma"],
                        arch=layout["arch"])
