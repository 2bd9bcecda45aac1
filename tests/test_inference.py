"""The inference copy (BatchNorm folded, channels-last) computes what the model computes."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from resnetlab import create_model
from resnetlab.errors import ResnetlabError
from resnetlab.models.inference import conv_bn_pairs, fold_batchnorm, optimize_for_inference


def randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so a wrong fold shows."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


@pytest.mark.parametrize(
    ("name", "size", "folded", "left"),
    [
        ("resnet20", 32, 19, 0),
        ("plain20", 32, 19, 0),
        # pre-activation: each block's bn1 normalises the input the shortcut also reads, and
        # the final bn follows an addition; only bn2 (right after conv1) can be folded
        ("preact_resnet110", 32, 54, 55),
        ("resnet18", 64, 20, 0),
        ("resnet50", 64, 53, 0),
        ("vgg11_bn", 64, 8, 0),
    ],
)
def test_folded_copy_matches_the_model(name: str, size: int, folded: int, left: int) -> None:
    torch.manual_seed(0)
    model = randomise_bn(create_model(name))
    fast = optimize_for_inference(model, engine="torch")
    assert len(conv_bn_pairs(model)) == folded
    assert sum(isinstance(m, nn.BatchNorm2d) for m in fast.modules()) == left
    first_conv = next(m for m in fast.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        expected = model(x)
        for inputs in (x, x.contiguous(memory_format=torch.channels_last)):
            got = fast(inputs)
            assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is intact
    assert model.training is False and not any(p.requires_grad for p in fast.parameters())


def test_torchvision_models_fold_too() -> None:
    model = randomise_bn(torchvision.models.resnet18(num_classes=5))
    fast = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(fast(x), model(x), atol=1e-5, rtol=1e-4)


def test_a_conv_read_twice_is_not_folded() -> None:
    class TwoReaders(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y  # the raw conv output is read as well

    model = randomise_bn(TwoReaders())
    assert conv_bn_pairs(model) == []
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(fold_batchnorm(model)(x), model(x))


def test_untraceable_model_gets_a_clear_error() -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(ResnetlabError, match="cannot trace DataDependent"):
        optimize_for_inference(DataDependent())
