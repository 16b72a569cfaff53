"""Checkpoints: everything that rebuilds a trained network (``model_args``, its weights, the
config it was trained with), written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fsds.config import ModelConfig
from fsds.data.images import InputGeometry, InputStats
from fsds.errors import MissingFileError
from fsds.io import atomic_path
from fsds.method.networks import SMP_DECODER_CHANNELS, Segmenter, build_model, decoder_channels


def model_args(cfg: ModelConfig) -> dict[str, Any]:
    """What :func:`fsds.method.networks.build_model` needs to rebuild the network from a checkpoint
    alone: the decoder widths as built, so a later change of ``auto`` cannot change them."""
    args: dict[str, Any] = {"arch": cfg.arch, "encoder_weights": cfg.encoder_weights}
    widths = decoder_channels(cfg)
    if widths is not None:
        args["decoder_channels"] = list(widths)
    return args


def _model_config(args: dict[str, Any]) -> ModelConfig:
    """A checkpoint's ``model_args`` as a config; checkpoints from before ``decoder_channels`` was
    stored were built with smp's widths."""
    args = dict(args)
    if args["arch"] in ("unet", "attention_unet"):  # fixed widths: nothing stored
        args["decoder_channels"] = "auto"
    else:
        args["decoder_channels"] = tuple(args.get("decoder_channels", SMP_DECODER_CHANNELS))
    return ModelConfig(**args)


def save_checkpoint(
    path: str | Path,
    model: Segmenter,
    model_cfg: ModelConfig,
    config: dict[str, Any],
    iteration: int,
    extra: dict[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """What rebuilds the model (and, given the ``optimizer``, continues training it), written atomically.

    ``config`` is the params it was trained with (at least ``train.image_size`` and
    ``metrics.threshold``, which prediction reads back). A finished model's checkpoint leaves the
    optimizer out: Adam's two moments would triple its size.
    """
    state = {
        "model": model.state_dict(),
        "model_args": model_args(model_cfg),
        "input_stats": model.input_stats._asdict(),
        "config": config,
        "iteration": iteration,
        **(extra or {}),
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[Segmenter, dict[str, Any]]:
    """Rebuild the network from a checkpoint alone; returns it in eval mode with the raw dict."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path} not found; run the train stage first")
    state = torch.load(path, map_location=device, weights_only=False)
    model = build_model(_model_config(state["model_args"]))
    model.load_state_dict(state["model"])
    if "input_stats" in state:  # checkpoints before it was stored used their arch's, which build_model set
        model.input_stats = InputStats(**{k: tuple(v) for k, v in state["input_stats"].items()})
    model.to(device).eval()
    return model, state




def checkpoint_geometry(state: dict[str, Any]) -> InputGeometry:
    """How the checkpoint's network takes images (``input``: size and working scale); checkpoints
    from before it was stored squashed every image to ``train.image_size``."""
    if state.get("input"):
        return InputGeometry(**state["input"])
    return InputGeometry(int(state["config"]["train"]["image_size"]))
