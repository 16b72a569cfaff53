import pytest
import torch

from fsds.method.networks import build_model, count_parameters


def test_forward_shape_and_encoder_features():
    model = build_model("albunet34").eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        features = model.encode(x)
        logits = model.decode(features)
        assert torch.equal(model(x), logits)
    assert logits.shape == (2, 1, 64, 96)
    deepest = features[-1]
    assert deepest.shape == (2, 512, 2, 3)  # ResNet-34: 512 channels at stride 32
    assert [f.shape[-1] for f in features] == [96, 48, 24, 12, 6, 3]


def test_albunet34_parameter_count():
    # ResNet-34 encoder (21.3M without its fc layer) plus the U-Net decoder: about 24.4M.
    n = count_parameters(build_model("albunet34"))
    assert 24_000_000 < n < 25_000_000


def _torchvision_resnet34_state():
    import torchvision

    torch.manual_seed(1)
    return torchvision.models.resnet34().state_dict()  # with the classifier fc.*, as torchvision saves it


def test_encoder_weights_from_a_state_dict_file(tmp_path):
    from fsds.method.weights import encoder_weights

    state = _torchvision_resnet34_state()
    torch.save(state, tmp_path / "r34.pth")
    loaded, source = encoder_weights("albunet34", str(tmp_path / "r34.pth"))
    assert source == str(tmp_path / "r34.pth")
    model = build_model("albunet34", loaded)
    assert torch.equal(model.encoder.state_dict()["layer4.2.conv2.weight"], state["layer4.2.conv2.weight"])
    assert torch.equal(model.encoder.state_dict()["bn1.running_mean"], state["bn1.running_mean"])


def test_encoder_weights_from_an_fsds_checkpoint(tmp_path):
    from fsds.method.weights import encoder_weights

    donor = build_model("albunet34")
    torch.save({"model": donor.state_dict(), "iteration": 3}, tmp_path / "ckpt.pt")
    loaded, _ = encoder_weights("albunet34", str(tmp_path / "ckpt.pt"))
    model = build_model("albunet34", loaded)
    for key, value in donor.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[key], value), key


def test_imagenet_weights_from_the_torch_hub_cache(tmp_path, monkeypatch):
    import urllib.error

    import fsds.method.weights as fm

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)

    def offline(url, dst, progress=True):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    expected = tmp_path / "hub" / "checkpoints" / "resnet34-b627a593.pth"
    with pytest.raises(FileNotFoundError, match=rf"imagenet needs {expected}, which is not there.*copy it to"):
        fm.encoder_weights("albunet34", "imagenet")
    expected.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_torchvision_resnet34_state(), expected)
    loaded, source = fm.encoder_weights("albunet34", "imagenet")
    assert source == f"imagenet ({expected})"
    build_model("albunet34", loaded)


def test_bad_encoder_weights_are_named(tmp_path):
    from fsds.method.weights import encoder_weights

    with pytest.raises(FileNotFoundError, match="model.encoder_weights: .*missing.pt is not a file"):
        encoder_weights("albunet34", str(tmp_path / "missing.pt"))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pt")
    loaded, _ = encoder_weights("albunet34", str(tmp_path / "wrong.pt"))
    with pytest.raises(ValueError, match="encoder weights do not fit the network"):
        build_model("albunet34", loaded)


@pytest.mark.parametrize(
    ("arch", "deep_channels", "stride", "params"),
    [
        ("albunet34", 512, 32, 24_436_369),
        ("ternausnet11", 512, 32, 18_254_033),
        ("ternausnet16", 512, 32, 23_748_241),
        ("unet", 1024, 16, 31_037_633),
        ("attention_unet", 1024, 16, 31_388_205),
        ("unetplusplus", 512, 32, 26_078_609),
    ],
)
def test_every_arch_segments_and_exposes_its_deepest_features(arch, deep_channels, stride, params):
    from fsds.method.losses import cap_lambda, nbr_loss

    torch.manual_seed(0)
    model = build_model(arch)
    assert count_parameters(model) == params
    x = torch.randn(4, 3, 64, 96)
    features = model.encode(x)
    assert features[-1].shape == (4, deep_channels, 64 // stride, 96 // stride)
    logits = model.decode([f[:2] for f in features])  # the decoder runs on a slice of the batch
    assert logits.shape == (2, 1, 64, 96)
    mask = torch.zeros(2, 1, 64, 96)
    mask[:, :, 10:30, 20:50] = 1
    loss = nbr_loss(features[-1][:2], features[-1][2:], mask) + torch.nn.functional.binary_cross_entropy_with_logits(logits, mask)
    loss.backward()
    assert cap_lambda(features[-1][:2], features[-1][2:]).shape == (2,)
    assert all(p.grad is not None for p in model.encoder.parameters())  # NBR and BCE reach the whole encoder


def test_vgg_encoder_weights_load_from_a_torchvision_state_dict(tmp_path):
    import torchvision

    from fsds.method.weights import encoder_weights

    torch.manual_seed(2)
    state = torchvision.models.vgg11().state_dict()  # features.* and the classifier.*
    torch.save(state, tmp_path / "vgg11.pth")
    loaded, _ = encoder_weights("ternausnet11", str(tmp_path / "vgg11.pth"))
    model = build_model("ternausnet11", loaded)
    assert torch.equal(model.encoder.state_dict()["features.0.weight"], state["features.0.weight"])


def test_imagenet_on_a_network_without_a_pretrained_encoder_says_so():
    from fsds.method.weights import encoder_weights

    state, source = encoder_weights("unet", "imagenet")
    assert state is None and source.startswith("none (unet has no ImageNet encoder")


def test_a_checkpoint_keeps_its_format_network_geometry_and_threshold(tmp_path):
    from fsds.data.images import InputGeometry
    from fsds.engine.checkpoint import FORMAT, load_checkpoint, save_checkpoint

    model = build_model("unet")
    save_checkpoint(tmp_path / "u.pt", model, InputGeometry(64, 0.5), 0.3, encoder_weights="none", config={}, iteration=1,
                    min_area=0.002)
    loaded = load_checkpoint(tmp_path / "u.pt")
    assert set(loaded.state) == {"format", "model", "network", "memory", "input", "threshold", "min_area", "config",
                                 "iteration"}
    assert loaded.min_area == 0.002
    assert loaded.state["memory"] is None  # a segmenter alone (tests/test_fusion.py: with the memory)
    assert loaded.state["format"] == FORMAT and loaded.state["network"] == {"arch": "unet", "encoder_weights": "none"}
    assert loaded.model.arch == "unet" and type(loaded.model.decoder).__name__ == "UNetDecoder"  # its fixed widths
    assert loaded.geometry == InputGeometry(64, 0.5) and loaded.threshold == 0.3
    assert not loaded.model.training
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model.eval()(x))


@pytest.mark.parametrize("format_key", [{}, {"format": 1}, {"format": 2}, {"format": 4}])
def test_a_checkpoint_of_another_format_is_refused_naming_its_format(tmp_path, format_key):
    """A checkpoint from before the network registry (no ``format``: format 1, with ``model_args``),
    from before the memory (2) or from a later fsds is refused, never read with guesses."""
    from fsds.engine.checkpoint import FORMAT, load_checkpoint
    from fsds.errors import InputError

    model = build_model("lite0_unet")
    torch.save({"model": model.state_dict(), "model_args": {"arch": "lite0_unet", "encoder_weights": "none"},
                "config": {}, "iteration": 1, **format_key}, tmp_path / "old.pt")
    found = format_key.get("format", 1)
    said = (rf"has format {found}, newer than this fsds reads \({FORMAT}\).*upgrade fsds" if found > FORMAT
            else rf"has format {found}; this fsds reads format {FORMAT}")
    with pytest.raises(InputError, match=rf"old\.pt {said}"):
        load_checkpoint(tmp_path / "old.pt")


@pytest.mark.parametrize("damage", ["truncated", "text"])
def test_a_damaged_checkpoint_or_memory_is_one_line_naming_the_file(tmp_path, damage):
    """A checkpoint cut short (a copy that stopped) or a file that is not PyTorch's: an InputError naming
    the file and the fix, not torch's zip or pickle traceback (the CLI prints it as one line)."""
    from fsds.engine.checkpoint import load_checkpoint
    from fsds.engine.memory_bank import load_memory
    from fsds.errors import InputError

    whole = tmp_path / "whole.pt"
    torch.save({"format": 3, "model": build_model("lite0_unet").state_dict()}, whole)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2] if damage == "truncated" else b"not a model\n")
    with pytest.raises(InputError, match=r"checkpoint .*bad\.pt cannot be read: it is truncated, damaged") as caught:
        load_checkpoint(bad)
    assert "\n" not in str(caught.value) and "train it again" in str(caught.value)
    with pytest.raises(InputError, match=r"memory .*bad\.pt cannot be read.*dvc repro memory"):
        load_memory(bad)


def test_a_file_that_is_no_fsds_checkpoint_is_named_so(tmp_path):
    from fsds.engine.checkpoint import load_checkpoint
    from fsds.errors import InputError

    torch.save(build_model("albunet34").encoder.state_dict(), tmp_path / "encoder.pt")  # a bare state dict
    with pytest.raises(InputError, match=r"encoder\.pt is not an fsds checkpoint"):
        load_checkpoint(tmp_path / "encoder.pt")
