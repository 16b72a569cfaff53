"""params.yaml resolved once into the plain values the engine takes.

Each stage loads its :class:`~fsds.config.Config` and asks this module what to do: which network
and loss a variant trains (:func:`recipe`), where and how the network runs (:func:`train_runtime`,
:func:`predict_runtime`), how the predict stage batches and tiles. Every ``auto`` is decided here,
once; below the pipeline nothing reads ``Config``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from fsds.config import Config, ModelConfig, Variant, load_config
from fsds.engine.device import Runtime, set_up_runtime
from fsds.engine.prediction import Tiling
from fsds.engine.recipe import Recipe
from fsds.errors import ConfigError, InputError
from fsds.method.registry import network

# train.frozen_encoder_stages auto: a pretrained encoder keeps its stem and stride-4 stage as loaded
# (faster, and as accurate or better: lab/findings/speed.md); a random encoder trains every stage.
FROZEN_STAGES_PRETRAINED = 2


def load(path: str = "params.yaml", variants: Sequence[str] | None = None) -> Config:
    """params.yaml as a :class:`Config`, its ``variants`` (default: ``methods``) checked with :func:`check`."""
    cfg = load_config(path)
    return check(cfg, cfg.methods if variants is None else variants)


def check(cfg: Config, variants: Sequence[str]) -> Config:
    """What params.yaml alone cannot check, for the ``variants`` named: each one's network is in the
    registry. (Their ``paper`` ids are the report's to check: :func:`fsds.evaluation.tables.check_variants`.)
    Returns ``cfg``."""
    for name in variants:
        variant = cfg.variant(name)
        network(variant.arch or cfg.model.arch, f"variants.{name}.arch" if variant.arch else "model.arch")
    return cfg


def model_of(cfg: Config, name: str) -> ModelConfig:
    """The network of variant ``name``: its own ``arch`` and ``encoder_weights``, else ``model``'s."""
    variant = cfg.variant(name)
    return ModelConfig(arch=variant.arch or cfg.model.arch,
                       encoder_weights=variant.encoder_weights or cfg.model.encoder_weights)


def batch_size(cfg: Config, shot: int | None = None) -> int:
    """``train.batch_size`` at ``shot`` shots (default ``cfg.shot``); auto: the paper's 2 for 1-shot, 4 for more."""
    if cfg.train.batch_size == "auto":
        return 2 if (cfg.shot if shot is None else shot) <= 1 else 4
    return int(cfg.train.batch_size)


def frozen_stages(cfg: Config, pretrained: bool) -> int:
    """``train.frozen_encoder_stages``; auto: :data:`FROZEN_STAGES_PRETRAINED` for a pretrained encoder, else 0."""
    if cfg.train.frozen_encoder_stages == "auto":
        return FROZEN_STAGES_PRETRAINED if pretrained else 0
    return int(cfg.train.frozen_encoder_stages)


def recipe(cfg: Config, name: str, pretrained: bool) -> Recipe:
    """What variant ``name`` trains (``pretrained``: whether its encoder starts from loaded weights)."""
    return make_recipe(cfg, cfg.variant(name), model_of(cfg, name).arch, pretrained)


def make_recipe(cfg: Config, variant: Variant, arch: str, pretrained: bool) -> Recipe:
    """The :class:`Recipe` of a ``variant`` on network ``arch`` under ``cfg``'s training params."""
    tc = cfg.train
    return Recipe(
        arch=arch, nbr=variant.nbr, cap=variant.cap, seg_loss=variant.seg_loss or tc.seg_loss,
        iterations=tc.iterations, lr=tc.lr, betas=(tc.beta1, tc.beta2),
        batch_size=batch_size(cfg), frozen_stages=frozen_stages(cfg, pretrained),
        cap_probability=tc.cap_probability, nbr_weight=tc.nbr_weight, augment=tc.augment,
        defect_crop_fraction=tc.defect_crop_fraction, threshold=cfg.metrics.threshold, log_every=tc.log_every,
        eval_every=tc.eval_every, checkpoint_every=tc.checkpoint_every,
    )


def train_runtime(cfg: Config) -> Runtime:
    tc = cfg.train
    return set_up_runtime(tc.device, tc.precision, tc.channels_last, tc.fp32_depthwise, tc.num_threads, training=True)


def predict_runtime(cfg: Config) -> Runtime:
    """Prediction (the predict stage, calibration) on the training's device and precision."""
    tc = cfg.train
    return set_up_runtime(tc.device, tc.precision, tc.channels_last, num_threads=tc.num_threads, training=False)


def tiling(cfg: Config) -> Tiling:
    """``predict.tile_size`` and ``predict.tile_overlap``, checked by :class:`Tiling`'s rule."""
    try:
        return Tiling(cfg.predict.tile_size, cfg.predict.tile_overlap)
    except InputError as exc:
        raise ConfigError(f"predict.tile_size / predict.tile_overlap: {exc}") from exc


def predict_batch_size(cfg: Config, side: int) -> int:
    """``predict.batch_size``; auto: about half a megapixel per batch (2 images at 512 px, 32 at 128).
    On a CPU, larger batches push the activations out of the caches and run slower per image."""
    if cfg.predict.batch_size == "auto":
        return max(1, round(2 * 512**2 / side**2))
    return int(cfg.predict.batch_size)


def input_description(cfg: Config) -> str:
    """How images enter the network, in words: ``128 px`` or ``128 px crops of images at up to 512 px``."""
    tc = cfg.train
    if not tc.working_size:
        return f"{tc.image_size} px"
    return f"{tc.image_size} px crops of images at up to {tc.working_size} px"


def stage_params(cfg: Config, name: str) -> dict[str, Any]:
    """The params that decide variant ``name``'s trained models: logged to MLflow, kept in each
    checkpoint, and keyed into the resume snapshots."""
    return {
        "dataset": cfg.dataset, "shot": cfg.shot, "seed": cfg.seed, "profile": cfg.profile,
        "train": dataclasses.asdict(cfg.train), "model": dataclasses.asdict(model_of(cfg, name)),
        "metrics": {"threshold": cfg.metrics.threshold, "calibration_fpr": cfg.metrics.calibration_fpr},
        "variant": {"name": name, **dataclasses.asdict(cfg.variant(name))},
    }
