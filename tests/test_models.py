"""The networks are exact: torchvision's weights load strictly and give the same outputs."""

from __future__ import annotations

import pytest
import torch
import torchvision.models as tvm
from torch import nn

import resnetlab
from resnetlab.errors import ResnetlabError
from resnetlab.models import (
    BasicBlock,
    BottleneckBlock,
    PreActBasicBlock,
    PreActBottleneckBlock,
    create_model,
    list_models,
    model_info,
)
from resnetlab.models.summary import count_parameters, summarize

TORCHVISION_EQUIVALENTS = [
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2",
    "resnext50_32x4d", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn",
    "vgg19_bn",
]  # fmt: skip

# torchvision's documented parameter counts (weights metadata `num_params`).
PUBLISHED_PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808, "wide_resnet50_2": 68_883_240,
    "resnext50_32x4d": 25_028_904, "vgg11": 132_863_336, "vgg11_bn": 132_868_840,
    "vgg13": 133_047_848, "vgg13_bn": 133_053_736, "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992, "vgg19": 143_667_240, "vgg19_bn": 143_678_248,
}  # fmt: skip


# VGG's 120M-parameter heads take seconds each on a CPU: run with the slow tests.
@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n.startswith("vgg") else n
    for n in TORCHVISION_EQUIVALENTS
])  # fmt: skip
def test_torchvision_weights_load_strictly_and_outputs_match(name: str) -> None:
    torch.manual_seed(0)
    reference = getattr(tvm, name)().eval()
    ours = create_model(name).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert count_parameters(ours)[0] == count_parameters(reference)[0] == PUBLISHED_PARAMS[name]
    # Random BN statistics make the comparison meaningful for BN models too.
    with torch.no_grad():
        for m in reference.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        ours.load_state_dict(reference.state_dict(), strict=True)
        x = torch.randn(2, 3, 64, 64)
        expected, actual = reference(x), ours(x)
    scale = expected.abs().max().item()
    assert scale > 0
    assert (actual - expected).abs().max().item() <= 1e-5 * scale


@pytest.mark.parametrize(
    ("name", "params"),
    [("resnet20", 269_722), ("resnet32", 464_154), ("resnet44", 658_586), ("resnet56", 853_018)],
)
def test_cifar_parameter_counts(name: str, params: int) -> None:
    assert count_parameters(create_model(name))[0] == params


@pytest.mark.parametrize(("name", "millions"), [("resnet110", 1.7), ("resnet1202", 19.4)])
def test_cifar_deep_counts_match_paper_table6(name: str, millions: float) -> None:
    with torch.device("meta"):
        total, _ = count_parameters(create_model(name))
    assert round(total / 1e6, 1) == millions


@pytest.mark.parametrize(
    ("name", "millions"),
    [("preact_resnet110", 1.7), ("preact_resnet164", 1.7), ("preact_resnet1001", 10.3)],
)
def test_preact_counts(name: str, millions: float) -> None:
    # He et al. 2016 Table 3: 1.7M (110, 164) and 10.2M (1001, counted without the final BN/FC).
    with torch.device("meta"):
        total, _ = count_parameters(create_model(name))
    assert abs(total / 1e6 - millions) < 0.15


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_plain_twins_have_identical_parameters_with_shortcut_a(depth: int) -> None:
    residual, plain = create_model(f"resnet{depth}"), create_model(f"plain{depth}")
    assert [(k, v.shape) for k, v in residual.state_dict().items()] == [
        (k, v.shape) for k, v in plain.state_dict().items()
    ]
    for name in ("resnet18", "resnet34", "resnet50"):
        a = create_model(name, shortcut="A")
        b = create_model(name.replace("resnet", "plain"), shortcut="A")
        assert count_parameters(a) == count_parameters(b)


def test_plain_twin_differs_only_by_the_addition() -> None:
    torch.manual_seed(0)
    residual = create_model("resnet20").eval()
    plain = create_model("plain20").eval()
    plain.load_state_dict(residual.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(residual(x), plain(x))
        pairs = zip(residual.modules(), plain.modules(), strict=True)
        for res_block, plain_block in pairs:
            if isinstance(plain_block, BasicBlock):
                plain_block.skip, plain_block.downsample = True, res_block.downsample
        assert torch.allclose(residual(x), plain(x))


def test_seed_example_block_shapes() -> None:
    x = torch.randn(4, 64, 56, 56)
    assert BasicBlock(64, 64)(x).shape == (4, 64, 56, 56)
    assert BottleneckBlock(64, 256, stride=1)(x).shape == (4, 256, 56, 56)


@pytest.mark.parametrize("block", [BasicBlock, BottleneckBlock, PreActBasicBlock,
                                   PreActBottleneckBlock])  # fmt: skip
@pytest.mark.parametrize("shortcut", ["A", "B", "C"])
def test_shortcut_options(block, shortcut: str) -> None:
    x = torch.randn(2, 64, 16, 16)
    down = block(64, 128 * block.expansion, stride=2, shortcut=shortcut)
    same = block(128 * block.expansion, 128 * block.expansion, shortcut=shortcut)
    y = same(down(x))
    assert y.shape == (2, 128 * block.expansion, 8, 8)
    projections = [m for m in (down.downsample, same.downsample) if m is not None]
    convs = [m for p in projections for m in p.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == {"A": 0, "B": 1, "C": 2}[shortcut]
    assert block(64, 64, shortcut=shortcut, skip=False).downsample is None


def test_option_a_pads_half_before_half_after() -> None:
    block = BasicBlock(16, 32, stride=2, shortcut="A")
    x = torch.randn(1, 16, 8, 8)
    padded = block.downsample(x)
    assert padded.shape == (1, 32, 4, 4)
    assert torch.equal(padded[:, 8:24], x[:, :, ::2, ::2])
    assert padded[:, :8].abs().sum() == 0 and padded[:, 24:].abs().sum() == 0


def test_stride_in_1x1_moves_the_stride() -> None:
    v15 = create_model("resnet50")
    paper = create_model("resnet50", stride_in_1x1=True)
    assert v15.layer2[0].conv2.stride == (2, 2) and v15.layer2[0].conv1.stride == (1, 1)
    assert paper.layer2[0].conv1.stride == (2, 2) and paper.layer2[0].conv2.stride == (1, 1)
    assert count_parameters(v15) == count_parameters(paper)
    assert paper(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_in_channels_num_classes_and_zero_init() -> None:
    model = create_model("resnet18", in_channels=1, num_classes=2, zero_init_residual=True)
    assert model.conv1.weight.shape[1] == 1
    assert model(torch.randn(3, 1, 64, 64)).shape == (3, 2)
    assert all(float(b.bn2.weight.detach().abs().sum()) == 0 for b in model.modules()
               if isinstance(b, BasicBlock))  # fmt: skip
    vgg = create_model("vgg11_bn", in_channels=1, num_classes=5)
    assert vgg(torch.randn(1, 1, 32, 32)).shape == (1, 5)
    cifar = create_model("plain20", in_channels=1, num_classes=2)
    assert cifar(torch.randn(2, 1, 28, 28)).shape == (2, 2)


def test_preact_forward_shapes() -> None:
    model = create_model("preact_resnet164", num_classes=100)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert model.layer3[-1].conv3.out_channels == 256


def test_forward_features_then_head_equals_forward() -> None:
    for name in ("resnet18", "resnet20", "vgg11", "preact_resnet110"):
        model = create_model(name).eval()
        x = torch.randn(1, *model.info.input_size[:1], 32, 32)
        with torch.no_grad():
            assert torch.equal(model.forward_head(model.forward_features(x)), model(x))


def test_registry_metadata_and_listing() -> None:
    names = list_models()
    assert len(names) == len(set(names)) >= 35
    assert list_models("plain*") == [n for n in names if n.startswith("plain")]
    info = model_info("resnet50")
    assert (info.family, info.depth, info.skips, info.input_size) == ("resnet", 50, True,
                                                                      (3, 224, 224))  # fmt: skip
    assert info.published[0].value == pytest.approx(76.13)
    assert "published" in str(info.published[0])
    assert not model_info("plain34").skips and model_info("resnet56").num_classes == 10
    assert resnetlab.create_model is create_model


def test_unknown_name_and_bad_option_are_user_errors() -> None:
    with pytest.raises(ResnetlabError, match="Did you mean resnet50"):
        create_model("resnt50")
    with pytest.raises(ResnetlabError, match="no option .colour.; its options are .*zero_init"):
        create_model("resnet50", colour="blue")
    with pytest.raises(ResnetlabError, match="num_classes"):
        create_model("resnet20", num_classes=0)


def test_summary_macs_match_torchvision_metadata() -> None:
    rows = summarize(create_model("resnet50"), (3, 224, 224))
    assert rows[-1].params == 25_557_032
    assert rows[-1].macs / 1e9 == pytest.approx(4.089, abs=0.001)  # torchvision: 4.089 GFLOPS
    assert [r.name for r in rows] == ["stem", "layer1", "layer2", "layer3", "layer4", "head",
                                      "total"]  # fmt: skip
    assert sum(r.params for r in rows[:-1]) == rows[-1].params
    assert rows[4].output_shape == (2048, 7, 7)
