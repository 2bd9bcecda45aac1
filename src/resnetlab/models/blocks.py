"""Residual blocks in the papers' vocabulary: basic, bottleneck and their pre-activation forms.

Every block maps ``in_channels`` to ``out_channels`` (the block's output width) and takes
``skip`` (False gives the plain twin: same layers, no addition) and ``shortcut``, He et al. 2015
§3.3: ``"A"`` subsample + zero-pad (no parameters), ``"B"`` 1×1 projection where the shape
changes, ``"C"`` 1×1 projection in every block; ``avg_down=True`` puts a 2×2 average pool
before a strided projection (ResNet-D, He et al. 2019, "Bag of Tricks"). ``residual_scale=True``
multiplies the residual branch by a learnable scalar that starts at 0 (SkipInit, De & Smith
2020; ReZero, Bachlechner et al. 2020), so the block starts as its shortcut.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

NormLayer = Callable[[int], nn.Module]
SHORTCUTS = ("A", "B", "C")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3×3 convolution with padding 1 and no bias (a BatchNorm follows)."""
    return nn.Conv2d(
        in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=False
    )


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1×1 convolution with no bias."""
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class PadShortcut(nn.Module):
    """Option A: take every ``stride``-th pixel and zero-pad the new channels, half on each side."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError("shortcut 'A' cannot reduce channels; use shortcut 'B' or 'C'")
        self.stride = stride
        self.pad_before = (out_channels - in_channels) // 2
        self.pad_after = out_channels - in_channels - self.pad_before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_before}, {self.pad_after})"


class ResidualScale(nn.Module):
    """A learnable scalar on the residual branch, initialised at zero (SkipInit/ReZero)."""

    def __init__(self) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.alpha


def residual_scale_for(skip: bool, residual_scale: bool) -> nn.Module | None:
    """The scale module, or None; a plain block has no residual branch to scale."""
    if residual_scale and not skip:
        raise ValueError("residual_scale needs the skip connections (a plain net has none)")
    return ResidualScale() if residual_scale else None


def make_shortcut(
    in_channels: int,
    out_channels: int,
    stride: int,
    shortcut: str,
    norm_layer: NormLayer | None,
    avg_down: bool = False,
) -> nn.Module | None:
    """The shortcut branch for one block, or None for the identity (or for a plain block).

    With ``avg_down`` a projection is ``(pool, conv, bn)``: the pool (an Identity at stride 1)
    does the subsampling and the 1×1 conv has stride 1, so it sees every pixel; the indices
    match timm's ``avg_down`` state dicts.
    """
    if shortcut not in SHORTCUTS:
        raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
    if avg_down and shortcut == "A":
        raise ValueError("avg_down pools before a projection; use shortcut 'B' or 'C'")
    changes_shape = stride != 1 or in_channels != out_channels
    if shortcut == "A":
        return PadShortcut(in_channels, out_channels, stride) if changes_shape else None
    if shortcut == "B" and not changes_shape:
        return None
    if avg_down:
        return nn.Sequential(
            avg_pool(stride), conv1x1(in_channels, out_channels), *_norm(norm_layer, out_channels)
        )
    layers: list[nn.Module] = [conv1x1(in_channels, out_channels, stride)]
    if norm_layer is not None:
        layers.append(norm_layer(out_channels))
    return nn.Sequential(*layers)


def avg_pool(stride: int) -> nn.Module:
    """ResNet-D's subsampling: a 2×2 average over real pixels only (ceil mode), or Identity."""
    if stride == 1:
        return nn.Identity()
    return nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)


def _norm(norm_layer: NormLayer | None, channels: int) -> list[nn.Module]:
    return [] if norm_layer is None else [norm_layer(channels)]


class BasicBlock(nn.Module):
    """Two 3×3 convolutions (He et al. 2015, Fig. 2 left); expansion 1."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        skip: bool = True,
        shortcut: str = "B",
        norm_layer: NormLayer = nn.BatchNorm2d,
        residual_scale: bool = False,
        avg_down: bool = False,
    ) -> None:
        super().__init__()
        self.skip = skip
        self.scale = residual_scale_for(skip, residual_scale)
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = norm_layer(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = norm_layer(out_channels)
        self.downsample = (
            make_shortcut(in_channels, out_channels, stride, shortcut, norm_layer, avg_down)
            if skip
            else None
        )

    def residual_bn(self) -> nn.Module:
        """The BatchNorm closing the residual branch (zeroed by ``zero_init_residual``)."""
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.scale is not None:
            out = self.scale(out)
        if self.skip:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class BottleneckBlock(nn.Module):
    """1×1 reduce, 3×3, 1×1 expand (He et al. 2015, Fig. 5 right); expansion 4.

    The stride sits in the 3×3 conv as in torchvision ("ResNet v1.5"); ``stride_in_1x1=True``
    puts it in the first 1×1 conv as in the paper. ``groups``/``base_width`` give ResNeXt and
    Wide ResNet.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        skip: bool = True,
        shortcut: str = "B",
        groups: int = 1,
        base_width: int = 64,
        stride_in_1x1: bool = False,
        norm_layer: NormLayer = nn.BatchNorm2d,
        residual_scale: bool = False,
        avg_down: bool = False,
    ) -> None:
        super().__init__()
        self.skip = skip
        self.scale = residual_scale_for(skip, residual_scale)
        width = int(out_channels // self.expansion * (base_width / 64.0)) * groups
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(in_channels, width, stride_1x1)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride_3x3, groups)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, out_channels)
        self.bn3 = norm_layer(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            make_shortcut(in_channels, out_channels, stride, shortcut, norm_layer, avg_down)
            if skip
            else None
        )

    def residual_bn(self) -> nn.Module:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.scale is not None:
            out = self.scale(out)
        if self.skip:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class PreActBasicBlock(nn.Module):
    """BN → ReLU → 3×3 conv, twice; the identity path untouched (He et al. 2016, Fig. 4e).

    A projection shortcut reads the pre-activated input, as in the authors' code.
    """

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        skip: bool = True,
        shortcut: str = "B",
        norm_layer: NormLayer = nn.BatchNorm2d,
        residual_scale: bool = False,
    ) -> None:
        super().__init__()
        self.skip = skip
        self.scale = residual_scale_for(skip, residual_scale)
        self.bn1 = norm_layer(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn2 = norm_layer(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = (
            make_shortcut(in_channels, out_channels, stride, shortcut, None) if skip else None
        )

    def residual_bn(self) -> nn.Module | None:
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        if not self.skip:
            return out
        if self.scale is not None:
            out = self.scale(out)
        return out + (x if self.downsample is None else self.downsample(pre))


class PreActBottleneckBlock(nn.Module):
    """BN → ReLU → 1×1, BN → ReLU → 3×3, BN → ReLU → 1×1 (He et al. 2016); expansion 4."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        skip: bool = True,
        shortcut: str = "B",
        norm_layer: NormLayer = nn.BatchNorm2d,
        residual_scale: bool = False,
    ) -> None:
        super().__init__()
        self.skip = skip
        self.scale = residual_scale_for(skip, residual_scale)
        width = out_channels // self.expansion
        self.bn1 = norm_layer(in_channels)
        self.conv1 = conv1x1(in_channels, width)
        self.bn2 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn3 = norm_layer(width)
        self.conv3 = conv1x1(width, out_channels)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = (
            make_shortcut(in_channels, out_channels, stride, shortcut, None) if skip else None
        )

    def residual_bn(self) -> nn.Module | None:
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        if not self.skip:
            return out
        if self.scale is not None:
            out = self.scale(out)
        return out + (x if self.downsample is None else self.downsample(pre))


def dirac_init(model: nn.Module) -> None:
    """Dirac (identity) initialisation of every 3×3 convolution inside a block: output channel
    i copies input channel i for i < min(in, out), the other filters keep their random start
    (DiracNets, Zagoruyko & Komodakis 2017; the skip-free CIFAR nets of airbench, Jordan 2024).
    A plain basic block of equal widths is then the identity on its non-negative input."""
    for block in model.modules():
        if not isinstance(block, BasicBlock | BottleneckBlock | PreActBasicBlock
                          | PreActBottleneckBlock):  # fmt: skip
            continue
        for conv in block.modules():
            if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.groups == 1:
                keep = min(conv.in_channels, conv.out_channels)
                with torch.no_grad():
                    nn.init.dirac_(conv.weight[:keep])
