import re

import pytest
import yaml

from fsds.config import ModelConfig, load_config, parse_config, variant_label
from fsds.errors import ConfigError
from fsds.evaluation.tables import check_variants
from fsds.pipeline import plan
from tests.conftest import REPO
from tests.params import make_config, params_with


def test_repository_params_load():
    cfg = load_config(REPO / "params.yaml")
    assert cfg.dataset == "synthetic"
    # the default run: Table V on the Lite0 U-Net with the ImageNet weights of its registry package, and
    # the best measured setting (B with BCE + Dice; lab/findings/small_defects.md)
    # the best measured: B with BCE + Dice, the memory of normal patches alone and fused with it
    assert cfg.methods == ("L0_B", "L0_B_NBR", "L0_B_NBR_CaP", "L0_B_Dice", "Memory", "L0_B_Dice_Memory")
    for name in cfg.methods:
        assert plan.model_of(cfg, name) == ModelConfig(arch="lite0_unet", encoder_weights="imagenet")
    assert [cfg.variant(m).nbr for m in cfg.methods] == ["none", "cosine", "cosine", "none", "none", "none"]
    assert [cfg.variant(m).cap for m in cfg.methods] == ["none", "none", "weighted", "none", "none", "none"]
    assert [cfg.variant(m).memory for m in cfg.methods] == ["none"] * 4 + ["alone", "late"]
    assert [plan.recipe(cfg, m, pretrained=True).seg_loss for m in cfg.methods] == ["bce"] * 3 + ["bce_dice", "bce", "bce_dice"]  # the memory trains nothing
    assert cfg.variant("B_NBR_CaP").cap == "weighted"
    # the paper's benchmark networks are trained with plain CaP and ordinary BCE
    nets = {"AlbuNet": "albunet34", "TernausNet11": "ternausnet11", "TernausNet16": "ternausnet16",
            "UNet": "unet", "AttentionUNet": "attention_unet", "UNetPP": "unetplusplus"}
    for name, arch in nets.items():
        assert (plan.model_of(cfg, name).arch, cfg.variant(name).cap, cfg.variant(name).nbr) == (arch, "plain", "none")
    assert cfg.variant("B_NBR_CaP1").cap == "plain" and cfg.variant("B_NBReuc_CaP").nbr == "euclidean"
    assert plan.model_of(cfg, "B") == cfg.model == ModelConfig(arch="albunet34", encoder_weights="none")  # the paper's B
    assert (cfg.profile, cfg.train.image_size, cfg.train.iterations, cfg.train.working_size) == ("fast256", 256, 300, 0)
    assert cfg.data.synthetic.categories == ("washer",)


def test_profiles_select_image_size_and_iterations():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    paper = parse_config({**raw, "profile": "paper"})
    assert (paper.train.image_size, paper.train.iterations) == (512, 1350)
    assert plan.batch_size(paper) == 2 and plan.batch_size(parse_config({**raw, "profile": "paper", "shot": 5})) == 4
    assert paper.train.lr == 1e-4  # the paper's Adam rate; the default profile's is its own
    assert parse_config(raw).train.lr == raw["profiles"][raw["profile"]]["lr"]
    with pytest.raises(ConfigError, match=r"^profile: expected one of paper, (\w+, )*quick, got 'slow'"):
        parse_config({**raw, "profile": "slow"})
    with pytest.raises(ConfigError, match=r"^train\.lr: set it in profiles"):
        parse_config({**raw, "train": {**raw["train"], "lr": 0.01}})
    with pytest.raises(ConfigError, match=r"^profiles\.\*\.lr: must be in \(0, 1\)"):
        parse_config({**raw, "profiles": {"fast": {"image_size": 128, "iterations": 300, "lr": 2.0}}})
    with pytest.raises(ConfigError, match=r"^train\.image_size: set it in profiles"):
        parse_config({**raw, "train": {"image_size": 256}})
    with pytest.raises(ConfigError, match=r"^profiles\.\*\.image_size: must be a positive multiple of 32"):
        parse_config({**raw, "profiles": {"fast": {"image_size": 100, "iterations": 300, "lr": 1e-4}}})
    with pytest.raises(ConfigError, match=r"^methods: 'C' is not a variant"):
        parse_config({**raw, "methods": ["B", "C"]})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"shot": -1}, r"^shot: must be >= 1 \(K annotated defect images per defect type\), got -1"),
        ({"shot": 0}, r"^shot: must be >= 1 \(K annotated defect images per defect type\), got 0"),
        ({"shto": 1}, r"^shto: unknown key; allowed keys: .*shot"),
        ({"train": {"image_size": 100}}, r"^profiles\.\*\.image_size: must be a positive multiple of 32"),
        ({"train": {"lr": "fast"}}, r"^profiles\.fast256\.lr: expected a number"),
        ({"train": {"iteration": 5}}, r"^train\.iteration: unknown key; allowed keys: .*iterations"),
        ({"train": {"precision": "fp8"}}, r"^train\.precision: expected one of auto, fp32, bf16, got 'fp8'"),
        ({"train": {"batch_size": "big"}}, r"^train\.batch_size: "),
        ({"dataset": "imagenet"}, r"^dataset: expected one of synthetic"),
        ({"variants": {"X": {"nbr": "l1", "cap": "none"}}}, r"^variants\.\*\.nbr: expected one of none, cosine, euclidean"),
        ({"variants": {"X": {"nbr": "none", "capp": "none"}}}, r"^variants\.X\.capp: unknown key"),
        ({"variants": {"B+NBR": {"nbr": "none", "cap": "none"}}}, r"^variants\.B\+NBR: variant ids must be file-safe"),
        ({"model": {"arch": ""}}, r"^model\.arch: name a network"),
        ({"data": {"categories": []}}, r"^data\.categories: "),
        ({"mlflow": {"enabled": "yes"}}, r"^mlflow\.enabled: expected true or false"),
        ({"train": {"checkpoint_every": -1}}, r"^train\.checkpoint_every: must be >= 0"),
        ({"train": {"channels_last": "yes"}}, r"^train\.channels_last: expected true or false"),
        ({"predict": {"batch_size": 0}}, r"^predict\.batch_size: must be 'auto' or >= 1"),
        ({"train": {"frozen_encoder_stages": 6}}, r"^train\.frozen_encoder_stages: must be 'auto' or 0 to 5"),
        ({"train": {"frozen_encoder_stages": "some"}}, r"^train\.frozen_encoder_stages: "),
    ],
)
def test_bad_values_are_rejected_by_name(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(params_with(raw))


@pytest.mark.parametrize("key", ["shot", "train.augment", "train.eval_every", "data.synthetic.seed", "metrics.threshold",
                                 "variants.B.nbr", "mlflow.experiment", "methods", "model.encoder_weights"])
def test_a_missing_key_is_an_error_that_names_it(key):
    """params.yaml is the one source of every value: nothing falls back to a default in the code."""
    raw = params_with({})
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node[part]
    del node[leaf]
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: missing from params.yaml"):
        parse_config(raw)


def test_no_config_dataclass_has_a_default_that_params_yaml_could_contradict():
    """Only a variant's optional ``arch``, ``encoder_weights``, ``seg_loss``, ``label``, ``paper``,
    ``family`` and ``memory`` may be left out (meaning: model.arch, model.encoder_weights,
    train.seg_loss, the id, beyond the paper's methods, the paper's own networks, no memory of normal
    patches), and a profile's ``working_size``
    (meaning: whole images squashed, as the paper)."""
    import dataclasses

    import fsds.config as config

    optional = set()
    for cls in vars(config).values():
        if dataclasses.is_dataclass(cls):
            optional |= {f"{cls.__name__}.{f.name}" for f in dataclasses.fields(cls)
                         if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    assert optional == {"Variant.arch", "Variant.encoder_weights", "Variant.label", "Variant.seg_loss",
                        "Variant.paper", "Variant.family", "Variant.memory", "Profile.working_size"}


def test_unknown_variant_lists_the_known_ones(tiny_config):
    with pytest.raises(ConfigError, match="unknown variant 'C'; params.yaml defines: B, B_NBR, B_NBR_CaP"):
        tiny_config.variant("C")


def test_batch_size_auto_follows_the_paper():
    assert plan.batch_size(make_config({"shot": 1})) == 2
    assert plan.batch_size(make_config({"shot": 5})) == 4
    assert plan.batch_size(make_config({"shot": 1, "train": {"batch_size": 3}})) == 3
    # at a shot count other than the config's (the report names both)
    assert (plan.batch_size(make_config({"shot": 1}), 5), plan.batch_size(make_config({"shot": 5}), 1)) == (4, 2)
    assert plan.batch_size(make_config({"shot": 5, "train": {"batch_size": 3}}), 1) == 3
    assert plan.recipe(make_config({"shot": 5}), "B", pretrained=False).batch_size == 4  # what training takes


def test_predict_batch_auto_keeps_about_half_a_megapixel():
    auto = make_config()
    assert [plan.predict_batch_size(auto, s) for s in (512, 256, 128, 64, 1024)] == [2, 8, 32, 128, 1]
    assert plan.predict_batch_size(make_config({"predict": {"batch_size": 5}}), 512) == 5


def test_categories_list_and_overrides(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params_with({"data": {"categories": ["fabric"]}, "shot": 2})))
    cfg = load_config(path, overrides={"shot": 5})
    assert cfg.data.categories == ("fabric",)
    assert cfg.shot == 5
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_variant_label():
    assert variant_label("B_NBR_CaP") == "B+NBR+CaP"
    cfg = load_config(REPO / "params.yaml")
    assert cfg.label("UNetPP") == "U-Net++" and cfg.label("B_NBR") == "B+NBR"


def test_a_variant_takes_its_own_network_and_weights_or_models():
    variants = {"Own": {"nbr": "none", "cap": "none", "arch": "ternausnet11", "encoder_weights": "imagenet"},
                "ArchOnly": {"nbr": "none", "cap": "none", "arch": "lite0_unet"},
                "Plain": {"nbr": "none", "cap": "none"}}
    cfg = parse_config(params_with({"variants": variants, "model": {"arch": "unet", "encoder_weights": "none"}}))
    assert plan.model_of(cfg, "Own") == ModelConfig("ternausnet11", "imagenet")
    assert plan.model_of(cfg, "ArchOnly") == ModelConfig("lite0_unet", "none")
    assert plan.model_of(cfg, "Plain") == ModelConfig("unet", "none")
    assert [plan.recipe(cfg, name, pretrained=False).arch for name in variants] == ["ternausnet11", "lite0_unet", "unet"]
    with pytest.raises(ConfigError, match=r"^variants\.Bad\.weights: unknown key; allowed keys: arch, cap, encoder_weights, family, label, memory, nbr, paper, seg_loss$"):
        parse_config(params_with({"variants": {"Bad": {"nbr": "none", "cap": "none", "weights": "imagenet"}}}))


def test_a_variant_names_its_segmentation_loss_and_the_papers_methods_keep_bce():
    cfg = load_config(REPO / "params.yaml")
    paper = ["B", "B_NBR", "B_NBR_CaP", "B_NBR_CaP1", "B_NBReuc_CaP", "AlbuNet", "TernausNet11", "UNet", "UNetPP"]
    assert {plan.recipe(cfg, name, pretrained=False).seg_loss for name in paper} == {"bce"} and cfg.train.seg_loss == "bce"
    variants = {"B": {"nbr": "none", "cap": "none"},
                "Dice": {"nbr": "cosine", "cap": "weighted", "seg_loss": "bce_dice"},
                "Focal": {"nbr": "none", "cap": "none", "seg_loss": "focal"}}
    own = make_config({"variants": variants})
    seg_loss = lambda c, name: plan.recipe(c, name, pretrained=False).seg_loss  # noqa: E731
    assert seg_loss(own, "B") == "bce" and seg_loss(own, "Dice") == "bce_dice" and seg_loss(own, "Focal") == "focal"
    other = make_config({"variants": variants, "train": {"seg_loss": "focal"}})
    assert seg_loss(other, "B") == "focal" and seg_loss(other, "Dice") == "bce_dice"
    with pytest.raises(ConfigError, match=r"^train\.seg_loss: expected one of bce, bce_dice, focal, got 'dice'"):
        parse_config(params_with({"train": {"seg_loss": "dice"}}))
    with pytest.raises(ConfigError, match=r"^variants\.\*\.seg_loss: expected one of bce, bce_dice, focal, got 'dice'"):
        parse_config(params_with({"variants": {"Bad": {"nbr": "none", "cap": "none", "seg_loss": "dice"}}}))


def test_frozen_encoder_stages_auto_freezes_only_a_pretrained_encoder(monkeypatch):
    monkeypatch.setattr(plan, "FROZEN_STAGES_PRETRAINED", 2)
    auto = make_config({"train": {"frozen_encoder_stages": "auto"}})
    assert [plan.frozen_stages(auto, p) for p in (True, False)] == [2, 0]
    assert [plan.recipe(auto, "L0_B", pretrained=p).frozen_stages for p in (True, False)] == [2, 0]
    three = make_config({"train": {"frozen_encoder_stages": 3}})
    assert [plan.frozen_stages(three, p) for p in (True, False)] == [3, 3]


def test_a_network_is_checked_against_the_registry_naming_its_key():
    """params.yaml alone takes any network name; plan.check (every stage that trains or reports)
    refuses one the registry does not have, naming the key that set it."""
    variants = {"X": {"nbr": "none", "cap": "none", "arch": "resnet"}, "B": {"nbr": "none", "cap": "none"}}
    cfg = make_config({"variants": variants, "methods": ["B"]})
    assert plan.check(cfg, ["B"]) is cfg
    with pytest.raises(ConfigError, match=r"^variants\.X\.arch: unknown network 'resnet'; expected one of albunet34, "):
        plan.check(cfg, ["B", "X"])
    other = make_config({"model": {"arch": "segformer"}})
    with pytest.raises(ConfigError, match=r"^model\.arch: unknown network 'segformer'; expected one of albunet34"):
        plan.check(other, ["B"])
    assert plan.check(other, ["L0_B"]) is other  # L0_B names its own network


def test_a_variants_paper_id_must_be_a_method_of_the_papers_tables():
    """The report's check (fsds.evaluation.tables.check_variants; plan.check leaves it to the report)."""
    cfg = make_config({"variants": {"Mine": {"nbr": "cosine", "cap": "weighted", "paper": "B_NBR_CaP2"}}})
    with pytest.raises(ConfigError, match=r"^variants\.Mine\.paper: 'B_NBR_CaP2' is no method of the paper's tables"):
        check_variants(cfg.variants, ["Mine"])
    check_variants(make_config({"variants": {"Mine": {"nbr": "cosine", "cap": "weighted", "paper": "B_NBR_CaP"}}}).variants,
                   ["Mine"])


def test_the_repositorys_variants_all_pass_the_check():
    cfg = load_config(REPO / "params.yaml")
    plan.check(cfg, list(cfg.variants))
    check_variants(cfg.variants, cfg.variants)
    assert plan.load(str(REPO / "params.yaml")).methods == cfg.methods
    with pytest.raises(ConfigError, match=r"^unknown variant 'C'"):
        plan.load(str(REPO / "params.yaml"), ["C"])
