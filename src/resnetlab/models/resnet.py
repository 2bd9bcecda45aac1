"""ImageNet ResNets (He et al. 2015) and their plain twins, weight-compatible with torchvision;
with the "Bag of Tricks" stem and shortcut (He et al. 2019) weight-compatible with timm.

Every builder registers itself (``@register_model``) and takes the options of
:class:`ResNetOptions`, which ``create_model`` checks against its signature.
"""

from __future__ import annotations

import functools
from typing import Any, TypedDict, Unpack

import torch
from torch import nn

from .base import Backbone, CheckpointedSequential
from .blocks import BasicBlock, BottleneckBlock, conv3x3
from .registry import register_model

Block = type[BasicBlock] | type[BottleneckBlock]
STAGE_WIDTHS = (64, 128, 256, 512)
STEMS = ("imagenet", "deep")
DEEP_STEM_WIDTH = 32


class ResNetOptions(TypedDict, total=False):
    """Keyword options of every ImageNet ResNet and plain twin builder."""

    in_channels: int
    stem: str  # "imagenet": 7×7 conv; "deep": three 3×3 convs (ResNet-C)
    avg_down: bool  # ResNet-D shortcut; a plain twin has no shortcut, so it changes nothing
    shortcut: str
    zero_init_residual: bool
    groups: int
    width_per_group: int
    stride_in_1x1: bool


def deep_stem(in_channels: int, width: int = DEEP_STEM_WIDTH, out_channels: int = 64):
    """ResNet-C's stem before its last BN: 3×3 convs in→w (stride 2), w→w, w→out, with BN and
    ReLU between them (timm's ``stem_type="deep"``, same indices 0…6)."""
    return nn.Sequential(
        conv3x3(in_channels, width, stride=2), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        conv3x3(width, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        conv3x3(width, out_channels),
    )  # fmt: skip


class ResNet(Backbone):
    """7×7 stem, max-pool, four stages ``layer1``…``layer4``, global average pool, ``fc``.

    ``skip=False`` builds the plain net of the same depth (He et al. 2015, Fig. 3 middle).
    ``stem="deep"`` replaces the 7×7 conv by three 3×3 ones (ResNet-C) and ``avg_down=True``
    subsamples projection shortcuts by average pooling (ResNet-D), He et al. 2019 §4.
    """

    layer1: nn.Module  # the stages, set by name in __init__
    layer2: nn.Module
    layer3: nn.Module
    layer4: nn.Module

    def __init__(
        self,
        block: Block,
        layers: list[int],
        num_classes: int = 1000,
        *,
        in_channels: int = 3,
        skip: bool = True,
        shortcut: str = "B",
        zero_init_residual: bool = False,
        groups: int = 1,
        width_per_group: int = 64,
        stride_in_1x1: bool = False,
        stem: str = "imagenet",
        avg_down: bool = False,
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        block_options: dict = {"skip": skip, "shortcut": shortcut, "avg_down": avg_down}
        if block is BottleneckBlock:
            block_options |= {
                "groups": groups,
                "base_width": width_per_group,
                "stride_in_1x1": stride_in_1x1,
            }
        elif groups != 1 or width_per_group != 64 or stride_in_1x1:
            raise ValueError("groups, width_per_group and stride_in_1x1 need bottleneck blocks")
        if stem == "deep":
            self.conv1: nn.Module = deep_stem(in_channels)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels = 64
        for index, (width, count) in enumerate(zip(STAGE_WIDTHS, layers, strict=True)):
            out_channels = width * block.expansion
            stride = 1 if index == 0 else 2
            blocks = []
            for i in range(count):
                blocks.append(
                    block(channels, out_channels, stride if i == 0 else 1, **block_options)
                )
                channels = out_channels
            setattr(self, f"layer{index + 1}", CheckpointedSequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = channels
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self, zero_init_residual)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def stage_modules(self) -> dict[str, list[nn.Module]]:
        return {
            "stem": [self.conv1, self.bn1],
            "layer1": [self.layer1],
            "layer2": [self.layer2],
            "layer3": [self.layer3],
            "layer4": [self.layer4],
            "head": [self.get_head()],
        }


def init_weights(model: nn.Module, zero_init_residual: bool = False) -> None:
    """He-normal (fan-out) convs, unit BN, and optionally a zero last BN in each residual branch."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    if zero_init_residual:
        for m in model.modules():
            block: Any = m  # a residual block when it has residual_bn
            bn = block.residual_bn() if hasattr(block, "residual_bn") else None
            if bn is not None and getattr(m, "skip", True):
                nn.init.constant_(bn.weight, 0)


imagenet_model = functools.partial(register_model, input_size=(3, 224, 224), feature_stride=32)


def _resnet(block: Block, layers: list[int], num_classes: int, **options) -> ResNet:
    return ResNet(block, layers, num_classes, **options)


@imagenet_model(family="resnet", depth=18, block="basic", torchvision_name="resnet18")
def resnet18(num_classes: int = 1000, **options: Unpack[ResNetOptions]) -> ResNet:
    """ResNet-18: basic blocks [2, 2, 2, 2]."""
    return _resnet(BasicBlock, [2, 2, 2, 2], num_classes, **options)


@imagenet_model(family="plain", depth=18, block="basic", skips=False)
def plain18(num_classes: int = 1000, **options: Unpack[ResNetOptions]) -> ResNet:
    """Plain-18: ResNet-18 without shortcuts."""
    return _resnet(BasicBlock, [2, 2, 2, 2], num_classes, skip=False, **options)


@imagenet_model(family="resnet", depth=34, block="basic", torchvision_name="resnet34")
def resnet34(num_classes: int = 1000, **options: Unpack[ResNetOptions]) -> ResNet:
    """ResNet-34: basic blocks [3, 4, 6, 3]."""
    return _resnet(BasicBlock, [3, 4, 6, 3], num_classes, **options)


@imagenet_model(family="plain", depth=34, block="basic", skips=False)
def plain34(num_classes: int = 1000, **options: Unpack[ResNetOptions]) -> ResNet:
    """Plain-34: ResNet-34 without shortcuts."""
    return _resnet(BasicBlock, [3, 4, 6, 3], num_classes, skip=False, **options)


@imagenet_model(family="resnet", depth=50, block="bottleneck", torchvision_name="resnet50")
def resnet50(num_classes: int = 1000, **options: Unpack[ResNetOptions]) -> ResNet:
    """ResNet-50: bottleneck blocks [3, 4, 6, 3]."""
    return _resnet(BottleneckBlock, [3, 4, 6, 3], num_classes, **options)


@imagenet_model(family="plain", depth=50, block="bottleneck", skips=False)
def plain50(num_classes: int = 1000, **options: Unpack[ResNetOptions]) -> ResNet:
    """Plain-50: ResNet-50 without shortcuts."""
    return _resnet(BottleneckBlock, [3, 4, 6, 3], num_classes, skip=False, **options)


@imagenet_model(family="resnet", depth=101, block="bottleneck", torchvision_name="resnet101")
def resnet101(num_classes: int = 1000, **options: Unpack[ResNetOptions]) -> ResNet:
    """ResNet-101: bottleneck blocks [3, 4, 23, 3]."""
    return _resnet(BottleneckBlock, [3, 4, 23, 3], num_classes, **options)


@imagenet_model(family="plain", depth=101, block="bottleneck", skips=False)
def plain101(num_classes: int = 1000, **options: Unpack[ResNetOptions]) -> ResNet:
    """Plain-101: ResNet-101 without shortcuts."""
    return _resnet(BottleneckBlock, [3, 4, 23, 3], num_classes, skip=False, **options)


@imagenet_model(family="resnet", depth=152, block="bottleneck", torchvision_name="resnet152")
def resnet152(num_classes: int = 1000, **options: Unpack[ResNetOptions]) -> ResNet:
    """ResNet-152: bottleneck blocks [3, 8, 36, 3]."""
    return _resnet(BottleneckBlock, [3, 8, 36, 3], num_classes, **options)


@imagenet_model(family="plain", depth=152, block="bottleneck", skips=False)
def plain152(num_classes: int = 1000, **options: Unpack[ResNetOptions]) -> ResNet:
    """Plain-152: ResNet-152 without shortcuts."""
    return _resnet(BottleneckBlock, [3, 8, 36, 3], num_classes, skip=False, **options)


@imagenet_model(family="resnet", depth=50, block="bottleneck", torchvision_name="wide_resnet50_2")
def wide_resnet50_2(num_classes: int = 1000, **options: Unpack[ResNetOptions]) -> ResNet:
    """Wide ResNet-50-2 (Zagoruyko & Komodakis 2016): bottlenecks twice as wide inside."""
    options = {"width_per_group": 128, **options}
    return _resnet(BottleneckBlock, [3, 4, 6, 3], num_classes, **options)


@imagenet_model(family="resnet", depth=50, block="bottleneck", torchvision_name="resnext50_32x4d")
def resnext50_32x4d(num_classes: int = 1000, **options: Unpack[ResNetOptions]) -> ResNet:
    """ResNeXt-50 32×4d (Xie et al. 2017): grouped 3×3 convs, 32 groups of width 4."""
    options = {"groups": 32, "width_per_group": 4, **options}
    return _resnet(BottleneckBlock, [3, 4, 6, 3], num_classes, **options)


# ResNet-C (He et al. 2019): the 7×7 stem conv replaced by three 3×3 ones, as timm's resnetXc.
TRICKS_C = {"stem": "deep"}


@imagenet_model(family="resnet-c", depth=50, block="bottleneck")
def resnet50c(num_classes: int = 1000, **options: Unpack[ResNetOptions]) -> ResNet:
    """ResNet-50-C: the deep stem, plain projection shortcuts (He et al. 2019)."""
    return _resnet(BottleneckBlock, [3, 4, 6, 3], num_classes, **(TRICKS_C | options))


@imagenet_model(family="resnet-c", depth=101, block="bottleneck")
def resnet101c(num_classes: int = 1000, **options: Unpack[ResNetOptions]) -> ResNet:
    """ResNet-101-C: the deep stem, plain projection shortcuts (He et al. 2019)."""
    return _resnet(BottleneckBlock, [3, 4, 23, 3], num_classes, **(TRICKS_C | options))


@imagenet_model(family="resnet-c", depth=152, block="bottleneck")
def resnet152c(num_classes: int = 1000, **options: Unpack[ResNetOptions]) -> ResNet:
    """ResNet-152-C: the deep stem, plain projection shortcuts (He et al. 2019)."""
    return _resnet(BottleneckBlock, [3, 8, 36, 3], num_classes, **(TRICKS_C | options))


# ResNet-D (He et al. 2019): ResNet-C's deep stem plus average-pooled shortcuts, as timm's
# resnetXd; either part can be switched back with stem="imagenet" or avg_down=False.
TRICKS_D = TRICKS_C | {"avg_down": True}


@imagenet_model(family="resnet-d", depth=18, block="basic")
def resnet18d(num_classes: int = 1000, **options: Unpack[ResNetOptions]) -> ResNet:
    """ResNet-18-D: deep stem and average-pooled shortcuts (He et al. 2019)."""
    return _resnet(BasicBlock, [2, 2, 2, 2], num_classes, **(TRICKS_D | options))


@imagenet_model(family="resnet-d", depth=34, block="basic")
def resnet34d(num_classes: int = 1000, **options: Unpack[ResNetOptions]) -> ResNet:
    """ResNet-34-D: deep stem and average-pooled shortcuts (He et al. 2019)."""
    return _resnet(BasicBlock, [3, 4, 6, 3], num_classes, **(TRICKS_D | options))


@imagenet_model(family="resnet-d", depth=50, block="bottleneck")
def resnet50d(num_classes: int = 1000, **options: Unpack[ResNetOptions]) -> ResNet:
    """ResNet-50-D: deep stem and average-pooled shortcuts (He et al. 2019)."""
    return _resnet(BottleneckBlock, [3, 4, 6, 3], num_classes, **(TRICKS_D | options))


@imagenet_model(family="resnet-d", depth=101, block="bottleneck")
def resnet101d(num_classes: int = 1000, **options: Unpack[ResNetOptions]) -> ResNet:
    """ResNet-101-D: deep stem and average-pooled shortcuts (He et al. 2019)."""
    return _resnet(BottleneckBlock, [3, 4, 23, 3], num_classes, **(TRICKS_D | options))


@imagenet_model(family="resnet-d", depth=152, block="bottleneck")
def resnet152d(num_classes: int = 1000, **options: Unpack[ResNetOptions]) -> ResNet:
    """ResNet-152-D: deep stem and average-pooled shortcuts (He et al. 2019)."""
    return _resnet(BottleneckBlock, [3, 8, 36, 3], num_classes, **(TRICKS_D | options))
