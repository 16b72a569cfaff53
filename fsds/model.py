"""The segmentation networks: encoder -> decoder -> head.

``model.arch`` (or a variant's ``arch``) names one of the paper's six networks:

- ``albunet34``: the baseline B, a U-Net whose encoder is ResNet-34 (smp ``Unet``, resnet34);
- ``ternausnet11`` / ``ternausnet16``: U-Net with a VGG-11 / VGG-16 encoder (smp ``Unet``, vgg11/vgg16);
- ``unetplusplus``: U-Net++ with nested dense skips (smp ``UnetPlusPlus``, resnet34 encoder);
- ``unet`` / ``attention_unet``: the original U-Net and Attention U-Net (:mod:`fsds.unet`).

Every network is a :class:`Segmenter` whose ``encode`` returns the encoder's feature maps,
deepest last: Normal Background Regularization and the CaP weight lambda work on that one.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path
from typing import Any, Mapping

import segmentation_models_pytorch as smp
import torch
import torchvision
from torch import nn

from fsds.config import ModelConfig
from fsds.unet import unet_parts


class Segmenter(nn.Module):
    """A U-Net-like network whose ``encode`` returns the list of encoder feature maps."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.head = head

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps from full resolution down to stride 32; the last one is what NBR pools."""
        return list(self.encoder(x))

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Logits ``(B, 1, H, W)`` from the encoder's feature maps."""
        return self.head(self.decoder(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


# torchvision's ImageNet weights for each encoder: smp's ResNet and VGG encoders use
# torchvision's parameter names, so the same files serve (minus the classifier). U-Net and
# Attention U-Net have no pretrained encoder: they always start from random weights.
_RESNET34 = torchvision.models.ResNet34_Weights.IMAGENET1K_V1.url
IMAGENET_URLS = {
    "albunet34": _RESNET34,
    "unetplusplus": _RESNET34,
    "ternausnet11": torchvision.models.VGG11_Weights.IMAGENET1K_V1.url,
    "ternausnet16": torchvision.models.VGG16_Weights.IMAGENET1K_V1.url,
}
_SMP = {  # arch -> (smp model class, encoder name)
    "albunet34": (smp.Unet, "resnet34"),
    "ternausnet11": (smp.Unet, "vgg11"),
    "ternausnet16": (smp.Unet, "vgg16"),
    "unetplusplus": (smp.UnetPlusPlus, "resnet34"),
}
_CLASSIFIER_PREFIXES = ("fc.", "classifier.")


def build_model(cfg: ModelConfig, encoder_state: Mapping[str, torch.Tensor] | None = None) -> Segmenter:
    """Build the network named by ``model.arch``: random weights, or the given encoder weights."""
    if cfg.arch in _SMP:
        cls, encoder = _SMP[cfg.arch]
        net = cls(encoder_name=encoder, encoder_weights=None, classes=1, activation=None)
        model = Segmenter(net.encoder, net.decoder, net.segmentation_head)
    elif cfg.arch in ("unet", "attention_unet"):
        model = Segmenter(*unet_parts(attention=cfg.arch == "attention_unet"))
    else:
        raise ValueError(f"model.arch: unknown architecture {cfg.arch!r}")
    if encoder_state is not None:
        load_encoder_weights(model, encoder_state)
    return model


def encoder_weights(cfg: ModelConfig) -> tuple[dict[str, torch.Tensor] | None, str]:
    """Resolve ``model.encoder_weights`` to a state dict (or None) and a description of its source.

    ``none``: random initialisation (the offline default). ``imagenet``: torchvision's file in
    the torch hub cache (``$TORCH_HOME/hub/checkpoints``), downloaded there if the network
    allows. Anything else: the path of a state dict (an encoder's, a torchvision ResNet's, or an
    fsds checkpoint, whose encoder is taken). Called before training, so a missing file stops
    the run at once.
    """
    spec = cfg.encoder_weights
    if spec == "none":
        return None, "none (random initialisation)"
    if spec == "imagenet":
        if cfg.arch not in IMAGENET_URLS:
            return None, f"none ({cfg.arch} has no ImageNet encoder; random initialisation)"
        url = IMAGENET_URLS[cfg.arch]
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        if not path.is_file():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(url, str(path), progress=True)
            except (urllib.error.URLError, OSError) as exc:
                raise FileNotFoundError(
                    f"model.encoder_weights: imagenet needs {path}, which is not there, and {url} cannot be "
                    f"downloaded ({exc}). Download it on a machine with internet and copy it to {path} "
                    "(or point TORCH_HOME elsewhere), or use model.encoder_weights: none"
                ) from exc
        return torch.load(path, map_location="cpu", weights_only=True), f"imagenet ({path})"
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"model.encoder_weights: {path} is not a file; use none, imagenet or the path of a state dict")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # an fsds checkpoint
    if not isinstance(state, dict):
        raise ValueError(f"model.encoder_weights: {path} does not hold a state dict")
    if any(k.startswith("encoder.") for k in state):
        state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    return state, str(path)


def load_encoder_weights(model: Segmenter, state: Mapping[str, torch.Tensor]) -> None:
    """Load encoder weights strictly (a classifier head, ``fc.*`` or ``classifier.*``, is ignored)."""
    state = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIXES)}
    # nn.Module's own method: smp's encoders override load_state_dict and report nothing back.
    try:
        result = nn.Module.load_state_dict(model.encoder, state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"encoder weights do not fit model.arch: {str(exc)[:500]}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"encoder weights do not fit model.arch: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )


def model_args(cfg: ModelConfig) -> dict[str, Any]:
    """What :func:`build_model` needs to rebuild the network from a checkpoint alone."""
    return {"arch": cfg.arch, "encoder_weights": cfg.encoder_weights}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
