import pytest
import torch

from fsds.config import ModelConfig
from fsds.model import build_model, count_parameters


def test_forward_shape_and_encoder_features():
    model = build_model(ModelConfig()).eval()
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
    n = count_parameters(build_model(ModelConfig()))
    assert 24_000_000 < n < 25_000_000


def _torchvision_resnet34_state():
    import torchvision

    torch.manual_seed(1)
    return torchvision.models.resnet34().state_dict()  # with the classifier fc.*, as torchvision saves it


def test_encoder_weights_from_a_state_dict_file(tmp_path):
    from fsds.model import encoder_weights

    state = _torchvision_resnet34_state()
    torch.save(state, tmp_path / "r34.pth")
    loaded, source = encoder_weights(ModelConfig(encoder_weights=str(tmp_path / "r34.pth")))
    assert source == str(tmp_path / "r34.pth")
    model = build_model(ModelConfig(), loaded)
    assert torch.equal(model.encoder.state_dict()["layer4.2.conv2.weight"], state["layer4.2.conv2.weight"])
    assert torch.equal(model.encoder.state_dict()["bn1.running_mean"], state["bn1.running_mean"])


def test_encoder_weights_from_an_fsds_checkpoint(tmp_path):
    from fsds.model import encoder_weights

    donor = build_model(ModelConfig())
    torch.save({"model": donor.state_dict(), "iteration": 3}, tmp_path / "ckpt.pt")
    loaded, _ = encoder_weights(ModelConfig(encoder_weights=str(tmp_path / "ckpt.pt")))
    model = build_model(ModelConfig(), loaded)
    for key, value in donor.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[key], value), key


def test_imagenet_weights_from_the_torch_hub_cache(tmp_path, monkeypatch):
    import urllib.error

    import fsds.model as fm

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)

    def offline(url, dst, progress=True):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    expected = tmp_path / "hub" / "checkpoints" / "resnet34-b627a593.pth"
    with pytest.raises(FileNotFoundError, match=rf"imagenet needs {expected}, which is not there.*copy it to"):
        fm.encoder_weights(ModelConfig(encoder_weights="imagenet"))
    expected.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_torchvision_resnet34_state(), expected)
    loaded, source = fm.encoder_weights(ModelConfig(encoder_weights="imagenet"))
    assert source == f"imagenet ({expected})"
    build_model(ModelConfig(), loaded)


def test_bad_encoder_weights_are_named(tmp_path):
    from fsds.model import encoder_weights

    with pytest.raises(FileNotFoundError, match="model.encoder_weights: .*missing.pt is not a file"):
        encoder_weights(ModelConfig(encoder_weights=str(tmp_path / "missing.pt")))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pt")
    loaded, _ = encoder_weights(ModelConfig(encoder_weights=str(tmp_path / "wrong.pt")))
    with pytest.raises(ValueError, match="encoder weights do not fit model.arch"):
        build_model(ModelConfig(), loaded)
