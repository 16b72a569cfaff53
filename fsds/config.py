"""Typed, frozen view of params.yaml.

Every section of params.yaml becomes a frozen dataclass. Unknown keys, wrong types and
out-of-range values are rejected before any work starts, with a message that names the
key (``train.image_size``) and what is allowed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from fsds.errors import ConfigError
from fsds.typed import build, check, check_choice, coerce

DATASETS = ("synthetic", "mvtec", "magnetic_tile", "folder")
NBR_KINDS = ("none", "cosine", "euclidean")
SEG_LOSSES = ("bce", "bce_dice", "focal")
CAP_KINDS = ("none", "plain", "weighted")
DEVICES = ("auto", "cpu", "cuda")
MEMORY_USES = ("none", "alone", "late", "input")  # a variant's use of the memory of normal patches
MEMORY_SAMPLERS = ("coreset", "random")
PRECISIONS = ("auto", "fp32", "bf16")
ENCODER_STAGES = 5  # every network's encoder: feature maps at strides 2, 4, 8, 16, 32
SPLIT_UNITS = ("defect_type", "category")
MVTEC_DOWNLOADS = ("per_category", "full")


@dataclass(frozen=True)
class SyntheticConfig:
    seed: int
    n_train_good: int
    n_test_good: int
    n_per_defect: int
    size: int
    categories: tuple[str, ...]  # the generator's categories it renders when data.categories is all

    def __post_init__(self) -> None:
        check(len(self.categories) >= 1, "data.synthetic.categories", "must name at least one category")
        check(self.seed >= 0, "data.synthetic.seed", "must be >= 0")
        check(self.n_train_good >= 1, "data.synthetic.n_train_good", "must be >= 1")
        check(self.n_test_good >= 1, "data.synthetic.n_test_good", "must be >= 1")
        check(self.n_per_defect >= 2, "data.synthetic.n_per_defect", "must be >= 2")
        check(self.size >= 32, "data.synthetic.size", "must be >= 32")


@dataclass(frozen=True)
class DataConfig:
    root: str  # data already on disk (mvtec: an extraction; folder: MVTec layout); "" = fetch
    categories: tuple[str, ...] | Literal["all"]
    mvtec_download: str  # per_category archives, or the full archive
    test_normal_fraction: float  # magnetic_tile: share of the normal images held out for testing
    synthetic: SyntheticConfig

    def __post_init__(self) -> None:
        check_choice(self.mvtec_download, MVTEC_DOWNLOADS, "data.mvtec_download")
        check(0 < self.test_normal_fraction < 1, "data.test_normal_fraction", "must be in (0, 1)")


@dataclass(frozen=True)
class SplitConfig:
    unit: str
    calibration_normals: int  # normal training images per category held out to pick the threshold

    def __post_init__(self) -> None:
        check_choice(self.unit, SPLIT_UNITS, "split.unit")
        check(self.calibration_normals >= 0, "split.calibration_normals", "must be >= 0 (0 = no calibrated threshold)")


@dataclass(frozen=True)
class Profile:
    """Image size, iteration count and learning rate: ``profiles.paper`` is the paper's 512 px, 1350
    iterations and Adam 1e-4; a shorter budget trains its randomly initialised decoder faster at a
    higher rate (lab/findings/pretrained.md measures it)."""

    image_size: int
    iterations: int
    lr: float
    # 0 = whole images squashed to image_size x image_size (the paper). Else images keep their aspect
    # ratio at a working scale (each category's largest image's longest side at most working_size,
    # never enlarged), training draws image_size x image_size crops, prediction sees whole images.
    working_size: int = 0

    def __post_init__(self) -> None:  # train.image_size etc. come only from here: checked once
        check(self.image_size >= 32 and self.image_size % 32 == 0, "profiles.*.image_size",
              f"must be a positive multiple of 32 (the encoders downsample 5 times), got {self.image_size}")
        check(self.iterations >= 1, "profiles.*.iterations", "must be >= 1")
        check(0 < self.lr < 1, "profiles.*.lr", "must be in (0, 1)")
        check(self.working_size == 0 or self.working_size >= self.image_size, "profiles.*.working_size",
              f"must be 0 (squash whole images to image_size) or at least image_size ({self.image_size}), the crop "
              f"size; got {self.working_size}")


PROFILE_KEYS = tuple(f.name for f in dataclasses.fields(Profile))  # train keys that the chosen profile sets


@dataclass(frozen=True)
class TrainConfig:
    image_size: int  # filled in from the selected profile
    iterations: int  # filled in from the selected profile
    batch_size: int | Literal["auto"]
    lr: float  # filled in from the selected profile
    working_size: int  # filled in from the selected profile: 0 = squash, else crops at this working scale
    defect_crop_fraction: float  # crops: the share of defect crops drawn to hold defect pixels
    beta1: float
    beta2: float
    cap_probability: float
    augment: bool
    nbr_weight: float
    seg_loss: str  # the segmentation loss of variants that do not name one: bce (the paper) | bce_dice | focal
    # The encoder's first N stages (of 5, from the input) keep their weights and stored statistics;
    # auto: fsds.pipeline.plan decides (a pretrained encoder's first two, a random one's none)
    frozen_encoder_stages: int | Literal["auto"]
    device: str
    precision: str
    channels_last: bool | Literal["auto"]  # NHWC memory for the network and its inputs
    fp32_depthwise: bool | Literal["auto"]  # depthwise convolutions in fp32 under bf16 autocast (auto: on a CPU)
    num_threads: int
    log_every: int
    eval_every: int  # test IoU every N iterations (the paper's Fig. 9); 0 = off
    eval_images: int  # at most this many test images per category for it
    checkpoint_every: int  # snapshot for resuming a killed training every N iterations; 0 = off

    def __post_init__(self) -> None:
        check(0 <= self.defect_crop_fraction <= 1, "train.defect_crop_fraction", "must be in [0, 1]")
        check(self.batch_size == "auto" or self.batch_size >= 1, "train.batch_size", "must be 'auto' or >= 1")
        check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "train.beta1/beta2", "must be in [0, 1)")
        check(0 <= self.cap_probability <= 1, "train.cap_probability", "must be in [0, 1]")
        check(self.nbr_weight >= 0, "train.nbr_weight", "must be >= 0")
        check_choice(self.seg_loss, SEG_LOSSES, "train.seg_loss")
        check(self.frozen_encoder_stages == "auto" or 0 <= self.frozen_encoder_stages <= ENCODER_STAGES,
               "train.frozen_encoder_stages",
               f"must be 'auto' or 0 to {ENCODER_STAGES} (the encoder stages, from the input, that stay as loaded)")
        check_choice(self.device, DEVICES, "train.device")
        check_choice(self.precision, PRECISIONS, "train.precision")
        check(self.num_threads >= 0, "train.num_threads", "must be >= 0 (0 = all cores)")
        check(self.log_every >= 1, "train.log_every", "must be >= 1")
        check(self.eval_every >= 0, "train.eval_every", "must be >= 0 (0 = no test IoU during training)")
        check(self.eval_images >= 1, "train.eval_images", "must be >= 1")
        check(self.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0 (0 = no snapshots)")


@dataclass(frozen=True)
class ModelConfig:
    arch: str  # a key of fsds.method.registry.NETWORKS (checked by fsds.pipeline.plan)
    encoder_weights: str

    def __post_init__(self) -> None:
        check(bool(self.arch), "model.arch", "name a network, e.g. albunet34 (the paper's B) or lite0_unet")
        check(bool(self.encoder_weights), "model.encoder_weights", "use none, imagenet or the path of a state dict")


@dataclass(frozen=True)
class Variant:
    """One method: a network (``arch``, default ``model.arch``) with its encoder weights
    (``encoder_weights``, default ``model.encoder_weights``), an NBR loss, a CaP flavour, a
    segmentation loss (``seg_loss``, default ``train.seg_loss``: the paper's ``bce``, or
    ``bce_dice`` / ``focal``, weighted by lambda under weighted CaP as eq. 5 weights the BCE)."""

    nbr: str
    cap: str
    # Optional per variant; leaving them out is not a default that could differ from params.yaml.
    arch: str = ""  # "" = model.arch
    encoder_weights: str = ""  # "" = model.encoder_weights
    seg_loss: str = ""  # "" = train.seg_loss
    label: str = ""  # display name in reports; "" = the id with '_' -> '+'
    # Where the report shows it: the paper's method it reproduces (a row id of fsds.evaluation.paper,
    # e.g. B_NBR_CaP; "" = beyond the paper) and the network family whose ablation tables hold it
    # ("" = the paper's own networks, which also fill Tables II-IV).
    paper: str = ""
    family: str = ""
    # The memory of normal patches (params.yaml `memory`, built by the memory stage): none; alone (no
    # training: its map is the prediction); late (the segmenter trained as above, its calibrated map
    # fused with the memory's); input (the segmenter trained with the memory's map as a second input:
    # fsds/method/fusion.py)
    memory: str = "none"

    def __post_init__(self) -> None:
        check_choice(self.nbr, NBR_KINDS, "variants.*.nbr")
        check_choice(self.cap, CAP_KINDS, "variants.*.cap")
        check_choice(self.memory, MEMORY_USES, "variants.*.memory")
        if self.memory == "alone":
            check(self.nbr == "none" and self.cap == "none" and not self.seg_loss, "variants.*.memory",
                  "alone trains nothing: give it nbr: none, cap: none and no seg_loss")
        if self.seg_loss:
            check_choice(self.seg_loss, SEG_LOSSES, "variants.*.seg_loss")


@dataclass(frozen=True)
class MemoryConfig:
    """The memory of normal patches (fsds/method/memory.py): built by the memory stage, per category."""

    arch: str  # whose ImageNet encoder makes the patch features (fsds/method/registry.py)
    strides: tuple[int, ...]  # the encoder maps concatenated into a patch vector
    grid_stride: int  # the patch grid's stride, input pixels
    pool: int  # each map averaged over pool x pool neighbours
    bank_size: int  # patch vectors kept per category
    sampler: str  # coreset (greedy k-center) | random
    k: int  # nearest bank vectors a patch's distance averages
    sigma: float  # Gaussian smoothing of the map, input pixels
    coreset_dims: int  # the random projection the coreset measures distances in
    coreset_candidates: int  # the coreset picks from this many vectors drawn at random first (0: from all)

    def __post_init__(self) -> None:
        check(self.coreset_dims >= 1, "memory.coreset_dims", "must be >= 1")
        check(self.coreset_candidates == 0 or self.coreset_candidates >= self.bank_size, "memory.coreset_candidates",
              f"must be 0 (all vectors) or at least memory.bank_size ({self.bank_size})")
        check(len(self.strides) >= 1 and all(s in (2, 4, 8, 16, 32) for s in self.strides)
              and list(self.strides) == sorted(set(self.strides)), "memory.strides",
              f"must be increasing strides out of 2, 4, 8, 16, 32, got {list(self.strides)}")
        check(self.grid_stride in (2, 4, 8, 16, 32), "memory.grid_stride", "must be one of 2, 4, 8, 16, 32")
        check(self.pool >= 1 and self.pool % 2 == 1, "memory.pool", "must be an odd number >= 1")
        check(self.bank_size >= 1, "memory.bank_size", "must be >= 1")
        check_choice(self.sampler, MEMORY_SAMPLERS, "memory.sampler")
        check(1 <= self.k <= self.bank_size, "memory.k", "must be in 1..memory.bank_size")
        check(self.sigma >= 0, "memory.sigma", "must be >= 0 (0: no smoothing)")


@dataclass(frozen=True)
class MetricsConfig:
    threshold: float
    calibration_fpr: float  # the calibrated threshold keeps at most this share of calibration pixels defective
    image_fpr: float  # the calibrated image decision flags about at most this share of good parts

    def __post_init__(self) -> None:
        check(0 < self.threshold < 1, "metrics.threshold", "must be in (0, 1)")
        check(0 < self.calibration_fpr < 1, "metrics.calibration_fpr", "must be in (0, 1)")
        check(0 < self.image_fpr < 1, "metrics.image_fpr", "must be in (0, 1)")


@dataclass(frozen=True)
class PredictConfig:
    batch_size: int | Literal["auto"]
    tile_size: int  # 0 = each image in one pass; else tiles of this side (a multiple of 32), blended where they overlap
    tile_overlap: int  # pixels shared by neighbouring tiles

    def __post_init__(self) -> None:  # the tile rule is fsds.engine.prediction.Tiling's (fsds.pipeline.plan.tiling)
        check(self.batch_size == "auto" or self.batch_size >= 1, "predict.batch_size", "must be 'auto' or >= 1")


@dataclass(frozen=True)
class MlflowConfig:
    enabled: bool
    tracking_uri: str
    experiment: str


@dataclass(frozen=True)
class Config:
    dataset: str
    shot: int
    seed: int
    profile: str
    methods: tuple[str, ...]
    data: DataConfig
    split: SplitConfig
    train: TrainConfig
    model: ModelConfig
    variants: Mapping[str, Variant]
    profiles: Mapping[str, Profile]
    memory: MemoryConfig
    predict: PredictConfig
    metrics: MetricsConfig
    mlflow: MlflowConfig

    def __post_init__(self) -> None:
        check_choice(self.dataset, DATASETS, "dataset")
        check(self.dataset != "folder" or bool(self.data.root), "data.root",
              "dataset 'folder' needs data.root: the folder in MVTec AD layout (see the README)")
        check(self.shot >= 1, "shot", f"must be >= 1 (K annotated defect images per defect type), got {self.shot}")
        check(self.seed >= 0, "seed", "must be >= 0")
        for name in self.variants:
            check(name.replace("_", "").isalnum(), f"variants.{name}", "variant ids must be file-safe (letters, digits, '_')")
        for name in self.methods:
            check(name in self.variants, "methods",
                  f"{name!r} is not a variant; params.yaml `variants` defines: {', '.join(self.variants)}")

    def variant(self, name: str) -> Variant:
        if name not in self.variants:
            raise ConfigError(f"unknown variant {name!r}; params.yaml defines: {', '.join(self.variants)}")
        return self.variants[name]

    def label(self, name: str) -> str:
        return variant_label(name, self.variants.get(name))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def variant_label(name: str, variant: Variant | None = None) -> str:
    """Display name of a variant: its ``label``, else the id with ``B_NBR_CaP`` -> ``B+NBR+CaP``."""
    if variant is not None and variant.label:
        return variant.label
    return name.replace("_", "+")


def load_config(path: str | Path = "params.yaml", overrides: Mapping[str, Any] | None = None) -> Config:
    """Read params.yaml into a validated :class:`Config`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file {path} not found; run from the repository root")
    raw = yaml.safe_load(path.read_text()) or {}
    if overrides:
        raw = {**raw, **overrides}
    return parse_config(raw)


def parse_config(raw: Mapping[str, Any]) -> Config:
    """Build a :class:`Config` from a plain mapping: every key must be there, none unknown.

    params.yaml is the only source of values: a missing key is an error that names it.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError("params must be a mapping at the top level")
    raw = dict(raw)
    for key in ("variants", "profiles", "profile", "methods", "train"):
        if key not in raw:
            raise ConfigError(f"{key}: missing from params.yaml; add it (the repository's params.yaml has every key)")
    variants = raw.pop("variants") or {}
    if not isinstance(variants, Mapping) or not variants:
        raise ConfigError("variants: must be a non-empty mapping of variant id -> {nbr, cap}")
    parsed_variants = {str(k): build(Variant, v, f"variants.{k}") for k, v in variants.items()}
    profiles = raw.pop("profiles") or {}
    if not isinstance(profiles, Mapping) or not profiles:
        raise ConfigError("profiles: must be a non-empty mapping of profile name -> {image_size, iterations, lr}")
    parsed_profiles = {str(k): build(Profile, v, f"profiles.{k}") for k, v in profiles.items()}
    profile = raw["profile"]
    train = raw["train"]
    if not isinstance(train, Mapping):
        raise ConfigError(f"train: expected a mapping, got {type(train).__name__}")
    for key in PROFILE_KEYS:
        if key in train:
            raise ConfigError(f"train.{key}: set it in profiles.<name>.{key} and choose the profile with `profile`")
    if profile not in parsed_profiles:
        raise ConfigError(f"profile: expected one of {', '.join(parsed_profiles)}, got {profile!r}")
    chosen = parsed_profiles[profile]
    raw["train"] = {**train, **{key: getattr(chosen, key) for key in PROFILE_KEYS}}
    raw["methods"] = coerce(raw["methods"], tuple[str, ...], "methods")
    # Built with the parsed mappings in place, so Config's cross-checks (methods against variants) run.
    return build(Config, {**raw, "variants": parsed_variants, "profiles": parsed_profiles}, "",
                 raw_fields=("variants", "profiles"))
