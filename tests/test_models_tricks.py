"""ResNet-C/D ("Bag of Tricks", He et al. 2019) against timm, the registry's facts, and the
signature check of ``create_model``'s options."""

from __future__ import annotations

import inspect

import pytest
import timm
import torch
from torch import nn

from resnetlab.errors import ResnetlabError
from resnetlab.models import (
    BasicBlock,
    BottleneckBlock,
    CifarResNet,
    PreActBasicBlock,
    PreActBottleneckBlock,
    PreActResNet,
    ResNet,
    create_model,
    list_models,
    model_info,
)
from resnetlab.models.summary import count_parameters
from resnetlab.weights import catalog

# (timm name, resnetlab name, options): timm's resnet50c is ResNet-50 with the deep stem.
TIMM_EQUIVALENTS = [
    pytest.param("resnet50d", "resnet50d", {}, marks=pytest.mark.slow),
    ("resnet18d", "resnet18d", {}),
    pytest.param("resnet50c", "resnet50c", {}, marks=pytest.mark.slow),
    pytest.param("resnet50c", "resnet50", {"stem": "deep"}, marks=pytest.mark.slow),
]
BLOCK_OF = {BasicBlock: "basic", BottleneckBlock: "bottleneck", PreActBasicBlock: "preact-basic",
            PreActBottleneckBlock: "preact-bottleneck"}  # fmt: skip


def _randomise_bn(model: nn.Module) -> None:
    """Random BN statistics and affine terms, so every BN matters in the comparison."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


@pytest.mark.parametrize(("timm_name", "name", "options"), TIMM_EQUIVALENTS)
def test_timm_weights_load_from_a_file_and_outputs_match(tmp_path, timm_name, name, options):
    torch.manual_seed(0)
    reference = timm.create_model(timm_name, pretrained=False).eval()
    _randomise_bn(reference)
    path = tmp_path / f"{timm_name}.pth"
    torch.save(reference.state_dict(), path)
    ours = create_model(name, pretrained=str(path), **options).eval()
    assert list(ours.state_dict()) == list(reference.state_dict())  # timm's names, same order
    assert count_parameters(ours)[0] == count_parameters(reference)[0]
    # 100 px: the max-pool leaves 25×25 maps, so the shortcut pools see odd sides (ceil mode,
    # padding not counted) in layer2.
    x = torch.randn(2, 3, 100, 100)
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    scale = expected.abs().max().item()
    assert scale > 0
    assert (actual - expected).abs().max().item() <= 1e-5 * scale


def test_resnet50d_has_timms_published_parameter_count() -> None:
    with torch.device("meta"):
        assert count_parameters(create_model("resnet50d"))[0] == 25_576_264
        assert count_parameters(create_model("resnet50", stem="deep"))[0] == 25_576_264


def test_every_resnet_c_of_timm_is_registered_with_timms_names_and_sizes() -> None:
    """timm's resnetXc: the deep stem without the pooled shortcut, the same state-dict names."""
    names = timm.list_models("resnet*c")
    assert names == ["resnet50c", "resnet101c", "resnet152c"]
    for name in names:
        with torch.device("meta"):
            ours, reference = create_model(name), timm.create_model(name)
        assert list(ours.state_dict()) == list(reference.state_dict()), name
        assert count_parameters(ours)[0] == count_parameters(reference)[0], name
        assert not any(isinstance(m, nn.AvgPool2d) for m in ours.modules()), name
        assert model_info(name).family == "resnet-c"


def test_deep_stem_and_avg_down_layers() -> None:
    model = create_model("resnet50d")
    convs = [m for m in model.conv1 if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (3, 32, (3, 3), (2, 2)), (32, 32, (3, 3), (1, 1)), (32, 64, (3, 3), (1, 1))]  # fmt: skip
    pool, conv, _ = model.layer2[0].downsample
    assert isinstance(pool, nn.AvgPool2d) and pool.ceil_mode and not pool.count_include_pad
    assert conv.stride == (1, 1) and isinstance(model.layer1[0].downsample[0], nn.Identity)
    one_channel = create_model("resnet18d", in_channels=1, num_classes=3)
    assert one_channel(torch.randn(2, 1, 64, 64)).shape == (2, 3)
    with pytest.raises(ResnetlabError, match="avg_down pools before a projection"):
        create_model("resnet18", avg_down=True, shortcut="A")
    with pytest.raises(ResnetlabError, match="stem must be one of"):
        create_model("resnet18", stem="tiered")


@pytest.mark.parametrize("depth", [18, 50])
def test_plain_twins_take_the_stem_and_have_no_shortcut_to_pool(depth: int) -> None:
    """A plain twin has no downsample branch, so avg_down leaves it unchanged; the deep stem
    gives it the same stem as ResNet-D."""
    plain = create_model(f"plain{depth}", stem="deep")
    pooled = create_model(f"plain{depth}", stem="deep", avg_down=True)
    assert list(plain.state_dict()) == list(pooled.state_dict())
    assert not any("downsample" in k for k in plain.state_dict())
    residual = create_model(f"resnet{depth}d")
    assert [k for k in residual.state_dict() if "downsample" not in k] == list(plain.state_dict())


def test_every_builder_takes_only_options_its_class_has() -> None:
    for name in list_models():
        info = model_info(name)
        signature = inspect.signature(info.builder, eval_str=True)
        cls = signature.return_annotation
        accepted = set(inspect.signature(cls.__init__).parameters)
        assert info.options is not None and set(info.options) <= accepted, name
        assert info.num_classes == signature.parameters["num_classes"].default


def test_unknown_option_is_one_line_naming_the_valid_ones() -> None:
    with pytest.raises(ResnetlabError) as err:
        create_model("resnet56", stem="deep")
    message = str(err.value)
    assert "\n" not in message and "resnet56 has no option 'stem'" in message
    for option in ("pretrained", "num_classes", "in_channels", "shortcut", "init"):
        assert option in message
    with pytest.raises(ResnetlabError, match="Did you mean avg_down"):
        create_model("resnet50d", avg_dwn=False)
    # plain CIFAR nets take no skip, ImageNet plain twins neither
    with pytest.raises(ResnetlabError, match="has no option 'skip'"):
        create_model("plain34", skip=True)


@pytest.mark.parametrize("name", ["resnet18", "resnet50c", "resnet50d", "plain34", "vgg11_bn",
                                  "resnet20",
                                  "plain56", "preact_resnet110", "preact_resnet164"])  # fmt: skip
def test_model_info_facts_match_the_built_model(name: str) -> None:
    info = model_info(name)
    model = create_model(name).eval()
    side = info.input_size[-1] if info.cifar_stem else 64  # ImageNet nets: 64 px, to be quick
    x = torch.randn(1, info.input_size[0], side, side)
    with torch.no_grad():
        features = model.forward_features(x)
    assert features.shape[-1] == side // info.feature_stride
    assert model(x).shape == (1, info.num_classes)
    blocks = {BLOCK_OF[type(m)] for m in model.modules() if type(m) in BLOCK_OF}
    assert blocks == ({info.block} if info.block != "vgg" else set())
    assert info.cifar_stem == isinstance(model, CifarResNet | PreActResNet)
    assert info.preact == isinstance(model, PreActResNet)
    if isinstance(model, ResNet):
        deep = isinstance(model.conv1, nn.Sequential)
        assert deep == name.endswith(("c", "d")) and not info.cifar_stem


def test_published_figures_come_from_the_weights_catalog() -> None:
    info = model_info("resnet50")
    entry = catalog.get_weights("resnet50", "imagenet-v1")
    assert info.published[0].value == entry.acc1 and info.published == catalog.published("resnet50")
    assert [p.source for p in model_info("resnet56").published] == [catalog.HE2015_T6]
    assert model_info("resnet50d").published == ()  # nothing published is quoted for it
