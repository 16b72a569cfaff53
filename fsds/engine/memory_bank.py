"""Building a category's memory of normal patches (:mod:`fsds.method.memory`) from its images:
patch vectors of the normal training images, a bank chosen from them, a threshold from the held-out
normals."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from fsds.data.crops import pad_to
from fsds.data.images import Images, InputGeometry, InputStats, normalize
from fsds.engine.device import Runtime
from fsds.engine.prediction import CPU
from fsds.errors import ConfigError, InputError, MissingFileError
from fsds.io import atomic_path, read_torch_file
from fsds.method.memory import (
    MemorySpec,
    NormalMemory,
    calibrated_distance,
    empty_memory,
    greedy_coreset,
)
from fsds.method.networks import build_model
from fsds.method.weights import encoder_weights


def pretrained_encoder(arch: str) -> tuple[torch.nn.Module, InputStats]:
    """The ImageNet encoder of network ``arch`` (its registry entry says where the weights are) and the
    input statistics it expects."""
    state, source = encoder_weights(arch, "imagenet")
    if state is None:
        raise ConfigError(f"memory.arch: {arch} has no ImageNet encoder ({source}); the memory needs pretrained "
                          "features: use one with ImageNet weights, e.g. lite0_unet")
    model = build_model(arch, state)
    return model.encoder.eval(), model.input_stats


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
    """``spec.bank_size`` rows of ``vectors``, by ``spec.sampler``, the same for the same ``seed``. The
    coreset picks among ``spec.coreset_candidates`` rows drawn at random first, where there are more:
    its time grows with the rows it looks at."""
    if spec.bank_size >= len(vectors):
        return vectors.clone()
    if spec.sampler == "random":
        return vectors[torch.randperm(len(vectors), generator=torch.Generator().manual_seed(seed))[: spec.bank_size]].clone()
    if spec.coreset_candidates and len(vectors) > spec.coreset_candidates:
        drawn = torch.randperm(len(vectors), generator=torch.Generator().manual_seed(seed))[: spec.coreset_candidates]
        vectors = vectors[drawn.sort().values]
    return vectors[greedy_coreset(vectors, spec.bank_size, seed, spec.coreset_dims)].clone()


@dataclass(frozen=True)
class BuiltMemory:
    memory: NormalMemory
    info: dict[str, Any]  # what went in and how long it took


def build_memory(spec: MemorySpec, normals: Images, calibration: Images, seed: int, max_fpr: float,
                 runtime: Runtime = CPU, batch_size: int = 8, desc: str = "memory") -> BuiltMemory:
    """A category's memory: the patch vectors of its ``normals`` (the normal training images, never
    a calibration or test image), ``spec.bank_size`` of them kept, and the distance that at most
    ``max_fpr`` of the ``calibration`` normals' pixels reach as its threshold (without calibration
    images: none, ``info["threshold"]`` None, and the memory must not be used as a model)."""
    if not len(normals):
        raise ValueError("the memory needs at least one normal training image")
    started = time.perf_counter()
    encoder, stats = pretrained_encoder(spec.arch)
    probe = NormalMemory(encoder, stats, spec.strides, torch.zeros(1, 1), grid_stride=spec.grid_stride, pool=spec.pool)
    vectors = patch_vectors(probe, normals, runtime, batch_size, desc=f"{desc} patches")
    featured = time.perf_counter()
    bank = choose_bank(vectors, spec, seed)
    chosen = time.perf_counter()
    memory = NormalMemory(encoder, stats, spec.strides, bank, 1.0, grid_stride=spec.grid_stride, pool=spec.pool,
                          k=spec.k, sigma=spec.sigma, arch=spec.arch)
    if len(calibration):
        distances = memory_distances(memory, calibration, runtime, batch_size)
        memory.threshold.fill_(calibrated_distance(distances, max_fpr))
    done = time.perf_counter()
    info = {"normals": len(normals), "patches": len(vectors), "bank": len(bank), "calibration_images": len(calibration),
            "threshold": float(memory.threshold) if len(calibration) else None, "seconds_features": featured - started,
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


MEMORY_FORMAT = 1


def save_memory(path: str | Path, built: BuiltMemory, spec: MemorySpec, geometry: InputGeometry,
                extra: dict[str, Any] | None = None) -> None:
    """A category's memory as the memory stage's output, written atomically: its bank, threshold and
    encoder weights (the state dict), how it was built (``spec``) and the input geometry it takes."""
    state = {"format": MEMORY_FORMAT, "kind": "fsds-memory", "spec": spec.to_dict(), "input": geometry.to_dict(),
             "layout": built.memory.layout(), "state": built.memory.state_dict(), "info": built.info, **(extra or {})}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_memory(path: str | Path) -> tuple[NormalMemory, InputGeometry, dict[str, Any]]:
    """A memory written by :func:`save_memory`, in eval mode on the CPU, its geometry and the whole file."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"memory {path} not found; run the memory stage first (dvc repro memory)")
    state = read_torch_file(path, "memory", "build it again (dvc repro memory)")
    if not isinstance(state, dict) or state.get("kind") != "fsds-memory":
        raise InputError(f"{path} is not a memory of the memory stage; give data/memory/<category>.pt")
    if isinstance(state.get("format"), int) and state["format"] > MEMORY_FORMAT:
        raise InputError(f"memory {path} has format {state['format']}, newer than this fsds reads ({MEMORY_FORMAT}): "
                         "it was written by a newer fsds; upgrade fsds, or build it again with this one (dvc repro memory)")
    if state.get("format") != MEMORY_FORMAT:
        raise InputError(f"memory {path} has format {state.get('format')}; this fsds reads {MEMORY_FORMAT}: "
                         "build it again (dvc repro memory)")
    memory = empty_memory(state["layout"])
    memory.load_state_dict(state["state"])
    return memory.eval(), InputGeometry(**state["input"]), state
