"""CIFAR ResNets (He et al. 2015 §4.2) and pre-activation ResNets (He et al. 2016).

6n+2 layers: a 3×3 stem conv with 16 filters, three stages of n blocks at 16/32/64 channels
(feature maps 32/16/8), global average pooling and a linear classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Backbone, CheckpointedSequential
from .blocks import BasicBlock, PreActBasicBlock, PreActBottleneckBlock, dirac_init
from .resnet import init_weights

CIFAR_WIDTHS = (16, 32, 64)
INITS = ("he", "dirac")


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

    stage_names = ("stem", "layer1", "layer2", "layer3", "head")

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

    stage_names = ("stem", "layer1", "layer2", "layer3", "head")

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


def _cifar_builder(depth: int, skip: bool):
    kind = "ResNet" if skip else "Plain net"

    def build(**options) -> CifarResNet:
        return CifarResNet(depth, skip=skip, **options)

    build.__name__ = f"{'resnet' if skip else 'plain'}{depth}"
    build.__doc__ = f"{kind}-{depth} for CIFAR (n={(depth - 2) // 6}), He et al. 2015 §4.2."
    return build


CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)
CIFAR_BUILDERS = {
    f"{'resnet' if skip else 'plain'}{d}": _cifar_builder(d, skip)
    for skip in (True, False)
    for d in CIFAR_DEPTHS
}


def preact_resnet110(**options) -> PreActResNet:
    """Pre-activation ResNet-110 (basic blocks, n=18), He et al. 2016."""
    return PreActResNet(110, **options)


def preact_resnet164(**options) -> PreActResNet:
    """Pre-activation ResNet-164 (bottlenecks, n=18), He et al. 2016."""
    return PreActResNet(164, bottleneck=True, **options)


def preact_resnet1001(**options) -> PreActResNet:
    """Pre-activation ResNet-1001 (bottlenecks, n=111), He et al. 2016."""
    return PreActResNet(1001, bottleneck=True, **options)
