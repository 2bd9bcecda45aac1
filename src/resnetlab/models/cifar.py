"""CIFAR ResNets (He et al. 2015 §4.2) and pre-activation ResNets (He et al. 2016).

6n+2 layers: a 3×3 stem conv with 16 filters, three stages of n blocks at 16/32/64 channels
(feature maps 32/16/8), global average pooling and a linear classifier. Every builder registers
itself (``@register_model``) and takes the options of :class:`CifarOptions` or
:class:`PreActOptions`, which ``create_model`` checks against its signature.
"""

from __future__ import annotations

import functools
from typing import TypedDict, Unpack

import torch
from torch import nn

from .base import Backbone, CheckpointedSequential
from .blocks import BasicBlock, PreActBasicBlock, PreActBottleneckBlock, dirac_init
from .registry import register_model
from .resnet import init_weights

CIFAR_WIDTHS = (16, 32, 64)
INITS = ("he", "dirac")


class CifarOptions(TypedDict, total=False):
    """Keyword options of the CIFAR ResNet and plain-net builders."""

    in_channels: int
    shortcut: str
    zero_init_residual: bool
    init: str
    residual_scale: bool  # residual nets only


class PreActOptions(TypedDict, total=False):
    """Keyword options of the pre-activation ResNet builders."""

    in_channels: int
    skip: bool
    shortcut: str
    init: str
    residual_scale: bool


def _check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")


def _stage(block, in_channels: int, out_channels: int, count: int, stride: int, **options):
    blocks = [block(in_channels, out_channels, stride, **options)]
    blocks += [block(out_channels, out_channels, 1, **options) for _ in range(count - 1)]
    return CheckpointedSequential(*blocks)


class CifarResNet(Backbone):
    """The paper's CIFAR-10 net: ``conv1``/``bn1``, ``layer1``…``layer3``, ``fc``.

    Shortcut ``"A"`` (zero-padding) by default as in the paper; ``skip=False`` is the plain net.
    ``init="dirac"`` starts the blocks' 3×3 convs as identities (see ``blocks.dirac_init``);
    ``residual_scale=True`` adds a zero-initialised scale to every residual branch.
    """

    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        *,
        in_channels: int = 3,
        skip: bool = True,
        shortcut: str = "A",
        zero_init_residual: bool = False,
        init: str = "he",
        residual_scale: bool = False,
    ) -> None:
        super().__init__()
        _check_init(init)
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        options = {"skip": skip, "shortcut": shortcut, "residual_scale": residual_scale}
        self.layer1 = _stage(BasicBlock, 16, 16, n, 1, **options)
        self.layer2 = _stage(BasicBlock, 16, 32, n, 2, **options)
        self.layer3 = _stage(BasicBlock, 32, 64, n, 2, **options)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = 64
        self.fc = nn.Linear(64, num_classes)
        init_weights(self, zero_init_residual)
        if init == "dirac":
            dirac_init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def stage_modules(self) -> dict[str, list[nn.Module]]:
        return {
            "stem": [self.conv1, self.bn1],
            "layer1": [self.layer1],
            "layer2": [self.layer2],
            "layer3": [self.layer3],
            "head": [self.get_head()],
        }


class PreActResNet(Backbone):
    """Pre-activation ResNet for CIFAR (He et al. 2016): ``conv1``, three stages, ``bn``, ``fc``.

    Basic blocks give 6n+2 layers (ResNet-110); bottlenecks give 9n+2 (ResNet-164, -1001) with
    stage outputs 64/128/256. The first block reads conv1's output through its own BN-ReLU, and
    the network ends with BN-ReLU before pooling, as in the paper.
    """

    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        *,
        bottleneck: bool = False,
        in_channels: int = 3,
        skip: bool = True,
        shortcut: str = "B",
        init: str = "he",
        residual_scale: bool = False,
    ) -> None:
        super().__init__()
        _check_init(init)
        block = PreActBottleneckBlock if bottleneck else PreActBasicBlock
        per_block = 3 if bottleneck else 2
        if (depth - 2) % (3 * per_block):
            raise ValueError(f"pre-activation depth must be {3 * per_block}n+2, got {depth}")
        n = (depth - 2) // (3 * per_block)
        widths = [w * block.expansion for w in CIFAR_WIDTHS]
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        options = {"skip": skip, "shortcut": shortcut, "residual_scale": residual_scale}
        self.layer1 = _stage(block, 16, widths[0], n, 1, **options)
        self.layer2 = _stage(block, widths[0], widths[1], n, 2, **options)
        self.layer3 = _stage(block, widths[1], widths[2], n, 2, **options)
        self.bn = nn.BatchNorm2d(widths[2])
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = widths[2]
        self.fc = nn.Linear(widths[2], num_classes)
        init_weights(self)
        if init == "dirac":
            dirac_init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.relu(self.bn(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def stage_modules(self) -> dict[str, list[nn.Module]]:
        return {
            "stem": [self.conv1],
            "layer1": [self.layer1],
            "layer2": [self.layer2],
            "layer3": [self.layer3, self.bn],
            "head": [self.get_head()],
        }


cifar_model = functools.partial(
    register_model, input_size=(3, 32, 32), cifar_stem=True, feature_stride=4
)


@cifar_model(family="cifar-resnet", depth=20, block="basic")
def resnet20(num_classes: int = 10, **options: Unpack[CifarOptions]) -> CifarResNet:
    """ResNet-20 for CIFAR (n=3), He et al. 2015 §4.2."""
    return CifarResNet(20, num_classes, **options)


@cifar_model(family="cifar-resnet", depth=32, block="basic")
def resnet32(num_classes: int = 10, **options: Unpack[CifarOptions]) -> CifarResNet:
    """ResNet-32 for CIFAR (n=5), He et al. 2015 §4.2."""
    return CifarResNet(32, num_classes, **options)


@cifar_model(family="cifar-resnet", depth=44, block="basic")
def resnet44(num_classes: int = 10, **options: Unpack[CifarOptions]) -> CifarResNet:
    """ResNet-44 for CIFAR (n=7), He et al. 2015 §4.2."""
    return CifarResNet(44, num_classes, **options)


@cifar_model(family="cifar-resnet", depth=56, block="basic")
def resnet56(num_classes: int = 10, **options: Unpack[CifarOptions]) -> CifarResNet:
    """ResNet-56 for CIFAR (n=9), He et al. 2015 §4.2."""
    return CifarResNet(56, num_classes, **options)


@cifar_model(family="cifar-resnet", depth=110, block="basic")
def resnet110(num_classes: int = 10, **options: Unpack[CifarOptions]) -> CifarResNet:
    """ResNet-110 for CIFAR (n=18), He et al. 2015 §4.2."""
    return CifarResNet(110, num_classes, **options)


@cifar_model(family="cifar-resnet", depth=1202, block="basic")
def resnet1202(num_classes: int = 10, **options: Unpack[CifarOptions]) -> CifarResNet:
    """ResNet-1202 for CIFAR (n=200), He et al. 2015 §4.2."""
    return CifarResNet(1202, num_classes, **options)


@cifar_model(family="cifar-plain", depth=20, block="basic", skips=False)
def plain20(num_classes: int = 10, **options: Unpack[CifarOptions]) -> CifarResNet:
    """Plain net-20 for CIFAR (n=3), He et al. 2015 §4.2."""
    return CifarResNet(20, num_classes, skip=False, **options)


@cifar_model(family="cifar-plain", depth=32, block="basic", skips=False)
def plain32(num_classes: int = 10, **options: Unpack[CifarOptions]) -> CifarResNet:
    """Plain net-32 for CIFAR (n=5), He et al. 2015 §4.2."""
    return CifarResNet(32, num_classes, skip=False, **options)


@cifar_model(family="cifar-plain", depth=44, block="basic", skips=False)
def plain44(num_classes: int = 10, **options: Unpack[CifarOptions]) -> CifarResNet:
    """Plain net-44 for CIFAR (n=7), He et al. 2015 §4.2."""
    return CifarResNet(44, num_classes, skip=False, **options)


@cifar_model(family="cifar-plain", depth=56, block="basic", skips=False)
def plain56(num_classes: int = 10, **options: Unpack[CifarOptions]) -> CifarResNet:
    """Plain net-56 for CIFAR (n=9), He et al. 2015 §4.2."""
    return CifarResNet(56, num_classes, skip=False, **options)


@cifar_model(family="cifar-plain", depth=110, block="basic", skips=False)
def plain110(num_classes: int = 10, **options: Unpack[CifarOptions]) -> CifarResNet:
    """Plain net-110 for CIFAR (n=18), He et al. 2015 §4.2."""
    return CifarResNet(110, num_classes, skip=False, **options)


@cifar_model(family="cifar-plain", depth=1202, block="basic", skips=False)
def plain1202(num_classes: int = 10, **options: Unpack[CifarOptions]) -> CifarResNet:
    """Plain net-1202 for CIFAR (n=200), He et al. 2015 §4.2."""
    return CifarResNet(1202, num_classes, skip=False, **options)


@cifar_model(family="cifar-preact", depth=110, block="preact-basic")
def preact_resnet110(num_classes: int = 10, **options: Unpack[PreActOptions]) -> PreActResNet:
    """Pre-activation ResNet-110 (basic blocks, n=18), He et al. 2016."""
    return PreActResNet(110, num_classes, **options)


@cifar_model(family="cifar-preact", depth=164, block="preact-bottleneck")
def preact_resnet164(num_classes: int = 10, **options: Unpack[PreActOptions]) -> PreActResNet:
    """Pre-activation ResNet-164 (bottlenecks, n=18), He et al. 2016."""
    return PreActResNet(164, num_classes, bottleneck=True, **options)


@cifar_model(family="cifar-preact", depth=1001, block="preact-bottleneck")
def preact_resnet1001(num_classes: int = 10, **options: Unpack[PreActOptions]) -> PreActResNet:
    """Pre-activation ResNet-1001 (bottlenecks, n=111), He et al. 2016."""
    return PreActResNet(1001, num_classes, bottleneck=True, **options)
