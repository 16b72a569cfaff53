"""Checkpoints: everything that rebuilds a trained network and says how it takes images, written
atomically.

A checkpoint is the one owner of a trained model's facts: its network (a key of
:data:`fsds.method.registry.NETWORKS`), its weights, its input geometry (how images are sized for
it) and its threshold. Every reader (the predict stage, the report, ``fsds predict``, the MLflow
model) asks :func:`load_checkpoint` for them. ``format`` says which layout a file has; a file of
another format is refused with its version named, never read with guesses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fsds.data.images import InputGeometry
from fsds.errors import InputError, MissingFileError
from fsds.io import atomic_path, read_torch_file
from fsds.method.fusion import LateFusion, MemoryGuided
from fsds.method.memory import NormalMemory, empty_memory
from fsds.method.networks import Segmenter, build_model

Model = Segmenter | NormalMemory | LateFusion | MemoryGuided  # each takes normalised images (its input_stats) to logits


def memory_use(model: Model) -> str:
    """What ``model`` is (a variant's ``memory``): a segmenter (none), a memory (alone), their fusion (late),
    the segmenter guided by the memory (input)."""
    uses = {NormalMemory: "alone", LateFusion: "late", MemoryGuided: "input"}
    return uses.get(type(model), "none")


def _memory_of(model: Model) -> NormalMemory | None:
    return model if isinstance(model, NormalMemory) else getattr(model, "memory", None)


def rebuild(network: dict[str, Any], memory: dict[str, Any] | None) -> Model:
    """The empty model a checkpoint's ``network`` and ``memory`` describe, for its state dict to fill."""
    use = (memory or {}).get("use", "none")
    if use == "alone":
        return empty_memory(memory["layout"])
    segmenter = build_model(network["arch"])
    if use == "late":
        return LateFusion(segmenter, empty_memory(memory["layout"]))
    return MemoryGuided(segmenter, empty_memory(memory["layout"])) if use == "input" else segmenter

FORMAT = 3  # 1: before the network registry (model_args, input_stats, geometry inside the config); 2: no memory
           # (3 also reads the memory use "input", added later: older format-3 files never hold it)


@dataclass
class Checkpoint:
    """A loaded checkpoint: the network (eval mode) and what it needs to be used."""

    model: Model  # a segmenter, a memory of normal patches, or the two as one (``state["memory"]["use"]``)
    geometry: InputGeometry  # how an image becomes its input (squashed, or a working scale)
    threshold: float  # its calibrated threshold, else the metrics.threshold it was trained with
    min_area: float  # its calibrated image decision: defective when the defect area exceeds it (0: any pixel)
    state: dict[str, Any]  # the whole file: config (the params it was trained with), iteration, calibration, ...


def save_checkpoint(path: str | Path, model: Model, geometry: InputGeometry, threshold: float, *,
                    encoder_weights: str, config: dict[str, Any], iteration: int,
                    extra: dict[str, Any] | None = None, optimizer: torch.optim.Optimizer | None = None,
                    min_area: float = 0.0) -> None:
    """What rebuilds the model (and, given the ``optimizer``, continues training it), written atomically.

    ``config`` is the params it was trained with, kept as a record. A finished model's checkpoint
    leaves the optimizer out: Adam's two moments would triple its size.
    """
    state = {
        "format": FORMAT,
        "model": model.state_dict(),
        "network": {"arch": model.arch, "encoder_weights": encoder_weights},
        "memory": {"use": memory_use(model), "layout": _memory_of(model).layout()} if _memory_of(model) is not None else None,
        "input": geometry.to_dict(),
        "threshold": float(threshold),
        "min_area": float(min_area),
        "config": config,
        "iteration": iteration,
        **(extra or {}),
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> Checkpoint:
    """Rebuild the network from a checkpoint alone, in eval mode on ``device``."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path} not found; run the train stage first")
    state = read_torch_file(path, "checkpoint", "copy it again, or train it again (dvc repro)", device)
    if not isinstance(state, dict) or not ({"format", "model_args"} & set(state)):
        raise InputError(f"{path} is not an fsds checkpoint (a training snapshot, or another program's file?); "
                         "give a data/models/<method>/<category>.pt of the train stage")
    found = state.get("format", 1)  # format 1 had no version
    if isinstance(found, int) and found > FORMAT:
        raise InputError(f"checkpoint {path} has format {found}, newer than this fsds reads ({FORMAT}): it was "
                         "written by a newer fsds; upgrade fsds to use it")
    if found != FORMAT:
        raise InputError(f"checkpoint {path} has format {found}; this fsds reads format {FORMAT}. "
                         "Train it again with this version (dvc repro), or use the fsds it was made with")
    model = rebuild(state["network"], state.get("memory"))
    model.load_state_dict(state["model"])
    model.to(device).eval()
    # min_area came within format 3: a file from before it decides by any pixel, as it did then
    return Checkpoint(model, InputGeometry(**state["input"]), float(state["threshold"]),
                      float(state.get("min_area", 0.0)), state)
