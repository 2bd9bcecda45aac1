"""VGG (Simonyan & Zisserman 2014): configurations A, B, D, E, with and without BatchNorm.

Module layout equals torchvision's (``features``, ``avgpool``, ``classifier``), so its state
dicts load unchanged. Every builder registers itself (``@register_model``) and takes the
options of :class:`VGGOptions`.
"""

from __future__ import annotations

import functools
from typing import TypedDict, Unpack

import torch
from torch import nn

from .base import Backbone, CheckpointedSequential
from .registry import register_model

# Output channels of each 3×3 conv; "M" is a 2×2 max-pool. Table 1 of the paper.
CONFIGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
          512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}  # fmt: skip


def make_features(
    config: list[int | str], in_channels: int, batch_norm: bool
) -> CheckpointedSequential:
    """The convolutional trunk: 3×3 convs (padding 1), optional BN, ReLU, and max-pools.

    Under activation checkpointing each pooled block (its convs and the max-pool ending it,
    ``block1``…``block5`` of ``stage_modules``) is one segment: only the five block inputs
    are kept for backward.
    """
    layers: list[nn.Module] = []
    channels = in_channels
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(channels, int(item), kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(int(item)))
        layers.append(nn.ReLU(inplace=True))
        channels = int(item)
    return CheckpointedSequential(*layers, boundary=nn.MaxPool2d)


class VGGOptions(TypedDict, total=False):
    """Keyword options of the VGG builders."""

    in_channels: int
    dropout: float


class VGG(Backbone):
    """``features`` (five pooled blocks), 7×7 adaptive pool, 4096-4096 classifier with dropout."""

    head_name = "classifier.6"

    def __init__(
        self,
        config: str,
        num_classes: int = 1000,
        *,
        batch_norm: bool = False,
        in_channels: int = 3,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.features = make_features(CONFIGS[config], in_channels, batch_norm)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.num_features = 512
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                assert m.bias is not None  # every VGG conv has a bias
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(x), 1))

    def stage_modules(self) -> dict[str, list[nn.Module]]:
        """``block1``…``block5`` end at each max-pool; ``classifier`` is all but the last layer."""
        stages: dict[str, list[nn.Module]] = {}
        current: list[nn.Module] = []
        for module in self.features:
            current.append(module)
            if isinstance(module, nn.MaxPool2d):
                stages[f"block{len(stages) + 1}"] = current
                current = []
        stages["classifier"] = list(self.classifier)[:-1]
        stages["head"] = [self.get_head()]
        return stages


vgg_model = functools.partial(
    register_model, family="vgg", block="vgg", skips=False, feature_stride=32
)


@vgg_model(depth=11, torchvision_name="vgg11")
def vgg11(num_classes: int = 1000, **options: Unpack[VGGOptions]) -> VGG:
    """VGG-11, configuration A."""
    return VGG("A", num_classes, **options)


@vgg_model(depth=11, torchvision_name="vgg11_bn")
def vgg11_bn(num_classes: int = 1000, **options: Unpack[VGGOptions]) -> VGG:
    """VGG-11, configuration A with BatchNorm."""
    return VGG("A", num_classes, batch_norm=True, **options)


@vgg_model(depth=13, torchvision_name="vgg13")
def vgg13(num_classes: int = 1000, **options: Unpack[VGGOptions]) -> VGG:
    """VGG-13, configuration B."""
    return VGG("B", num_classes, **options)


@vgg_model(depth=13, torchvision_name="vgg13_bn")
def vgg13_bn(num_classes: int = 1000, **options: Unpack[VGGOptions]) -> VGG:
    """VGG-13, configuration B with BatchNorm."""
    return VGG("B", num_classes, batch_norm=True, **options)


@vgg_model(depth=16, torchvision_name="vgg16")
def vgg16(num_classes: int = 1000, **options: Unpack[VGGOptions]) -> VGG:
    """VGG-16, configuration D."""
    return VGG("D", num_classes, **options)


@vgg_model(depth=16, torchvision_name="vgg16_bn")
def vgg16_bn(num_classes: int = 1000, **options: Unpack[VGGOptions]) -> VGG:
    """VGG-16, configuration D with BatchNorm."""
    return VGG("D", num_classes, batch_norm=True, **options)


@vgg_model(depth=19, torchvision_name="vgg19")
def vgg19(num_classes: int = 1000, **options: Unpack[VGGOptions]) -> VGG:
    """VGG-19, configuration E."""
    return VGG("E", num_classes, **options)


@vgg_model(depth=19, torchvision_name="vgg19_bn")
def vgg19_bn(num_classes: int = 1000, **options: Unpack[VGGOptions]) -> VGG:
    """VGG-19, configuration E with BatchNorm."""
    return VGG("E", num_classes, batch_norm=True, **options)
