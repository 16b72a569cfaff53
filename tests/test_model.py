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
