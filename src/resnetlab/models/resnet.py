"""ImageNet ResNets (He et al. 2015) and their plain twins, weight-compatible with torchvision."""

from __future__ import annotations

import torch
from torch import nn

from .base import Backbone, CheckpointedSequential
from .blocks import BasicBlock, BottleneckBlock

Block = type[BasicBlock] | type[BottleneckBlock]
STAGE_WIDTHS = (64, 128, 256, 512)


class ResNet(Backbone):
    """7×7 stem, max-pool, four stages ``layer1``…``layer4``, global average pool, ``fc``.

    ``skip=False`` builds the plain net of the same depth (He et al. 2015, Fig. 3 middle).
    """

    stage_names = ("stem", "layer1", "layer2", "layer3", "layer4", "head")

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
    ) -> None:
        super().__init__()
        block_options: dict = {"skip": skip, "shortcut": shortcut}
        if block is BottleneckBlock:
            block_options |= {
                "groups": groups,
                "base_width": width_per_group,
                "stride_in_1x1": stride_in_1x1,
            }
        elif groups != 1 or width_per_group != 64 or stride_in_1x1:
            raise ValueError("groups, width_per_group and stride_in_1x1 need bottleneck blocks")
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
            bn = m.residual_bn() if hasattr(m, "residual_bn") else None
            if bn is not None and getattr(m, "skip", True):
                nn.init.constant_(bn.weight, 0)


def _resnet(block: Block, layers: list[int], **options) -> ResNet:
    return ResNet(block, layers, **options)


def resnet18(**options) -> ResNet:
    """ResNet-18: basic blocks [2, 2, 2, 2]."""
    return _resnet(BasicBlock, [2, 2, 2, 2], **options)


def resnet34(**options) -> ResNet:
    """ResNet-34: basic blocks [3, 4, 6, 3]."""
    return _resnet(BasicBlock, [3, 4, 6, 3], **options)


def resnet50(**options) -> ResNet:
    """ResNet-50: bottleneck blocks [3, 4, 6, 3]."""
    return _resnet(BottleneckBlock, [3, 4, 6, 3], **options)


def resnet101(**options) -> ResNet:
    """ResNet-101: bottleneck blocks [3, 4, 23, 3]."""
    return _resnet(BottleneckBlock, [3, 4, 23, 3], **options)


def resnet152(**options) -> ResNet:
    """ResNet-152: bottleneck blocks [3, 8, 36, 3]."""
    return _resnet(BottleneckBlock, [3, 8, 36, 3], **options)


def wide_resnet50_2(**options) -> ResNet:
    """Wide ResNet-50-2 (Zagoruyko & Komodakis 2016): bottlenecks twice as wide inside."""
    return _resnet(BottleneckBlock, [3, 4, 6, 3], width_per_group=128, **options)


def resnext50_32x4d(**options) -> ResNet:
    """ResNeXt-50 32×4d (Xie et al. 2017): grouped 3×3 convs, 32 groups of width 4."""
    return _resnet(BottleneckBlock, [3, 4, 6, 3], groups=32, width_per_group=4, **options)


def plain18(**options) -> ResNet:
    """Plain-18: ResNet-18 without shortcuts."""
    return resnet18(skip=False, **options)


def plain34(**options) -> ResNet:
    """Plain-34: ResNet-34 without shortcuts."""
    return resnet34(skip=False, **options)


def plain50(**options) -> ResNet:
    """Plain-50: ResNet-50 without shortcuts."""
    return resnet50(skip=False, **options)


def plain101(**options) -> ResNet:
    """Plain-101: ResNet-101 without shortcuts."""
    return resnet101(skip=False, **options)


def plain152(**options) -> ResNet:
    """Plain-152: ResNet-152 without shortcuts."""
    return resnet152(skip=False, **options)
