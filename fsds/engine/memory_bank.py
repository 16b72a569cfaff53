"""Building a category's memory of normal patches (:mod:`fsds.method.memory`) from its images:
patch vectors of the normal training images, a bank chosen from them, a threshold from the held-out
normals."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm import tqdm

from fsds.data.crops import pad_to
from fsds.data.images import Images, InputStats, normalize
from fsds.engine.device import Runtime
from fsds.engine.prediction import CPU
from fsds.method.memory import NormalMemory, calibrated_distance, greedy_coreset
from fsds.method.networks import build_model
from fsds.method.weights import encoder_weights

SAMPLERS = ("coreset", "random")


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pretrained_encoder(arch: str) -> tuple[torch.nn.Module, InputStats]:
    """The ImageNet encoder of network ``arch`` (its registry entry says where the weights are) and the
    input statistics it expects."""
    state, source = encoder_weights(arch, "imagenet")
    if state is None:
        raise ValueError(f"memory.arch: {arch} has no ImageNet encoder ({source}); the memory needs pretrained features")
    model = build_model(arch, state)
    return model.encoder.eval(), model.input_stats


def empty_memory(spec: MemorySpec, encoder: torch.nn.Module, stats: InputStats, channels: int) -> NormalMemory:
    return NormalMemory(encoder, stats, spec.strides, torch.zeros(1, channels), 1.0, grid_stride=spec.grid_stride,
                        pool=spec.pool, k=spec.k, sigma=spec.sigma)


def _inputs(memory: NormalMemory, images: Images, runtime: Runtime, batch_size: int, desc: str):
    """Normalised batches of ``images`` (stacked: ``batch_size`` at a time; a list: one by one) padded to a
    multiple of 32 as prediction pads them, each with its height and width before the padding."""
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False):
        chunk = images[start : start + batch_size]
        for batch in [chunk] if isinstance(chunk, torch.Tensor) else [c[None] for c in chunk]:
            h, w = batch.shape[-2:]
            x = pad_to(batch, -(-h // 32) * 32, -(-w // 32) * 32).to(runtime.device)
            yield normalize(x, memory.input_stats, runtime.channels_last), h, w


@torch.no_grad()
def patch_vectors(memory: NormalMemory, images: Images, runtime: Runtime = CPU, batch_size: int = 8,
                  desc: str = "patches") -> torch.Tensor:
    """Every patch vector of ``images`` (uint8, stacked or a list), ``(N, C)`` in fp32, the patches over
    the padding dropped."""
    memory = memory.to(runtime.device).eval()
    g, out = memory.grid_stride, []
    for x, h, w in _inputs(memory, images, runtime, batch_size, desc):
        with runtime.autocast():
            feats = memory.features(x)
        feats = feats[..., : -(-h // g), : -(-w // g)].float()
        out.append(feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]).cpu())
    return torch.cat(out)


def choose_bank(vectors: torch.Tensor, spec: MemorySpec, seed: int) -> torch.Tensor:
    """``spec.bank_size`` rows of ``vectors``, by ``spec.sampler``, the same for the same ``seed``."""
    if spec.bank_size >= len(vectors):
        return vectors.clone()
    if spec.sampler == "random":
        index = torch.randperm(len(vectors), generator=torch.Generator().manual_seed(seed))[: spec.bank_size]
    else:
        index = greedy_coreset(vectors, spec.bank_size, seed)
    return vectors[index].clone()


@dataclass(frozen=True)
class BuiltMemory:
    memory: NormalMemory
    info: dict[str, Any]  # what went in and how long it took


def build_memory(spec: MemorySpec, normals: Images, calibration: Images, seed: int, max_fpr: float,
                 runtime: Runtime = CPU, batch_size: int = 8, desc: str = "memory") -> BuiltMemory:
    """A category's memory: the patch vectors of its ``normals`` (the normal training images, never
    a calibration or test image), ``spec.bank_size`` of them kept, and the distance that at most
    ``max_fpr`` of the ``calibration`` normals' pixels reach as its threshold."""
    if not len(normals):
        raise ValueError("the memory needs at least one normal training image")
    if not len(calibration):
        raise ValueError("the memory's threshold needs held-out normal images (split.calibration_normals >= 1)")
    started = time.perf_counter()
    encoder, stats = pretrained_encoder(spec.arch)
    probe = empty_memory(spec, encoder, stats, 1)
    vectors = patch_vectors(probe, normals, runtime, batch_size, desc=f"{desc} patches")
    featured = time.perf_counter()
    bank = choose_bank(vectors, spec, seed)
    chosen = time.perf_counter()
    memory = NormalMemory(encoder, stats, spec.strides, bank, 1.0, grid_stride=spec.grid_stride, pool=spec.pool,
                          k=spec.k, sigma=spec.sigma)
    distances = memory_distances(memory, calibration, runtime, batch_size)
    memory.threshold.fill_(calibrated_distance(distances, max_fpr))
    done = time.perf_counter()
    info = {"normals": len(normals), "patches": len(vectors), "bank": len(bank), "calibration_images": len(calibration),
            "threshold": float(memory.threshold), "seconds_features": featured - started,
            "seconds_bank": chosen - featured, "seconds_calibration": done - chosen, "seconds": done - started}
    return BuiltMemory(memory.cpu(), info)


@torch.no_grad()
def memory_distances(memory: NormalMemory, images: Images, runtime: Runtime = CPU, batch_size: int = 8,
                     desc: str = "distances") -> list[torch.Tensor]:
    """Each image's distance map at its own size (padding cut off), fp32 on the CPU."""
    memory = memory.to(runtime.device).eval()
    out = []
    for x, h, w in _inputs(memory, images, runtime, batch_size, desc):
        with runtime.autocast():
            d = memory.distances(x)
        out.extend(d[:, 0, :h, :w].float().cpu())
    return out
