"""What the studies of trained networks share: the net to study, its data, and its blocks.

A subject is a registered model name with ``--pretrained VALUE`` (a checkpoint file, a URL or
a tag such as ``cifar10``), or a run folder (its model card, or an older train run's
``config.json`` and ``best.pt``/``last.pt``, give the weights and the normalisation it was
trained with): both opened by the one loader, :func:`resnetlab.artifact.load_trained`.
A net is seen as stem, blocks in forward order, and head,
so a study can remove, reorder or re-route single blocks and reuse the intact activations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..artifact import load_trained
from ..data import open_data
from ..data.synthetic import subsample
from ..errors import ResnetlabError
from ..models.blocks import BasicBlock, BottleneckBlock
from ..models.cifar import CifarResNet, PreActResNet
from ..models.resnet import ResNet
from ..preprocessing import IMAGENET_MEAN, IMAGENET_STD

IMAGENET_NORM = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
NORMALISATIONS = ("auto", "imagenet", "none")
POST_ACTIVATION = (BasicBlock, BottleneckBlock)
WEIGHT_FILES = ("best.pt", "last.pt")


@dataclass
class Subject:
    """A net to study: the model (eval mode), its label and how its inputs are normalised."""

    model: nn.Module
    name: str
    label: str
    weights: str | None
    normalisation: dict[str, Any]


def run_weights(folder: Path) -> Path:
    """The weights file of a training run folder."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ResnetlabError(f"{folder} holds no best.pt or last.pt. Pass a finished training run.")


def load_subject(
    spec: str, pretrained: str | None = None, normalisation: str = "auto", seed: int = 0
) -> Subject:
    """The net named by ``spec`` (model name or run folder), loaded by the one loader
    (:func:`resnetlab.artifact.load_trained`) and in eval mode.

    ``normalisation`` ``auto``: a run folder's own, else ImageNet mean/std (the peer CIFAR
    ResNets' and the named CIFAR weights'); ``imagenet``; ``none``. A net without weights is
    initialised from ``seed``, so a resumed study sees the same one.
    """
    if normalisation not in NORMALISATIONS:
        raise ResnetlabError(
            f"unknown normalisation {normalisation!r}. Use auto, imagenet or none."
        )
    if Path(spec).is_dir():
        trained = load_trained(spec, pretrained)
        prep = trained.preprocessing
        pixel = torch.tensor(prep.pixel_mean) if prep.pixel_mean is not None else None
        own = {"pixel_mean": pixel, "mean": list(prep.mean), "std": list(prep.std)}
        norm = own if normalisation == "auto" else _named(normalisation)
        weights = str(trained.weights) if trained.weights else None
        return Subject(trained.model, trained.card["model"]["name"], trained.label, weights, norm)
    torch.manual_seed(seed)
    trained = load_trained(spec, pretrained or None)
    label = f"{spec} ({Path(str(pretrained)).name if pretrained else 'untrained'})"
    norm = _named("imagenet" if normalisation == "auto" else normalisation)
    return Subject(trained.model, spec, label, str(pretrained) if pretrained else None, norm)


def _named(normalisation: str) -> dict[str, Any]:
    return dict(IMAGENET_NORM) if normalisation == "imagenet" else {}


def normalise(images: torch.Tensor, norm: dict[str, Any]) -> torch.Tensor:
    """uint8 (N, C, H, W) to float in [0, 1], then the per-pixel mean or channel mean/std."""
    x = images.to(torch.float32).div(255.0)
    if norm.get("pixel_mean") is not None:
        x = x - torch.as_tensor(norm["pixel_mean"], dtype=torch.float32)
    elif norm.get("mean") is not None:
        x = x - torch.tensor(norm["mean"]).view(1, -1, 1, 1)
    if norm.get("std") is not None:
        x = x / torch.tensor(norm["std"]).view(1, -1, 1, 1)
    return x


def load_split(
    data: str, split: str, count: int | None, seed: int, norm: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """A split of ``data`` (stratified subsample of ``count``), normalised; and its description."""
    bundle = open_data(data, seed=seed)
    part = getattr(bundle, split)
    if part is None or not hasattr(part, "images"):
        raise ResnetlabError(f"{data} has no in-memory {split} split. Pass a CIFAR-style data set.")
    part = subsample(part, count, seed)
    return normalise(part.images, norm), part.labels, f"{bundle.description}; {part.source}"


class Chain:
    """A net as stem, blocks and head, for CIFAR, pre-activation and ImageNet ResNets."""

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, CifarResNet | PreActResNet | ResNet):
            raise ResnetlabError(
                f"{type(model).__name__} is not a ResNet or plain twin. Study a CIFAR or "
                "ImageNet ResNet/plain net."
            )
        self.model = model
        stages = [n for n in ("layer1", "layer2", "layer3", "layer4") if hasattr(model, n)]
        self.names = [f"{s}.{i}" for s in stages for i in range(len(getattr(model, s)))]
        self.blocks: list[nn.Module] = [model.get_submodule(n) for n in self.names]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        if isinstance(m, PreActResNet):
            return m.conv1(x)
        x = m.relu(m.bn1(m.conv1(x)))
        return m.maxpool(x) if isinstance(m, ResNet) else x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        if isinstance(m, PreActResNet):
            x = m.relu(m.bn(x))
        return m.forward_head(x)

    def forward(self, x: torch.Tensor, blocks: Sequence[nn.Module] | None = None) -> torch.Tensor:
        x = self.stem(x)
        for block in blocks if blocks is not None else self.blocks:
            x = block(x)
        return self.head(x)


def changes_shape(block: nn.Module) -> bool:
    """Whether the block's output shape differs from its input's (a downsampling block)."""
    downsample: nn.Module | None = getattr(block, "downsample", None)
    shortcut = set(downsample.modules()) if downsample is not None else set()
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d) and m not in shortcut]
    stride = max(m.stride[0] for m in convs)
    return stride != 1 or convs[0].in_channels != convs[-1].out_channels


class Bypass(nn.Module):
    """A block with its residual branch deleted: its shortcut alone (Veit et al. 2016, §4);
    for a plain block of unchanged shape, the identity."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b: Any = self.block  # any residual block class: its parts are read by name
        if not b.skip:
            return x
        if b.downsample is None:
            return F.relu(x) if isinstance(b, POST_ACTIVATION) else x
        if isinstance(b, POST_ACTIVATION):
            return F.relu(b.downsample(x))
        return b.downsample(b.relu(b.bn1(x)))


def deletable(block: nn.Module) -> bool:
    """A residual block always keeps its shortcut; a plain one only where shapes allow."""
    return bool(block.skip) or not changes_shape(block)


@torch.inference_mode()
def errors_of_variants(
    chain: Chain,
    x: torch.Tensor,
    y: torch.Tensor,
    variants: list[list[nn.Module]],
    batch: int = 500,
    progress: Any = None,
) -> list[dict[str, float]]:
    """Test error and loss of each variant (a full list of blocks) plus the intact net first.

    Per batch the intact activations before every block are kept, and each variant runs
    from its first changed block only, so a single-block deletion costs what follows it.
    """
    intact = chain.blocks
    starts = []
    for blocks in variants:
        first = next(
            (i for i, (a, b) in enumerate(zip(blocks, intact, strict=True)) if a is not b),
            len(intact),
        )
        starts.append(first)
    wrong = torch.zeros(len(variants) + 1)
    loss = torch.zeros(len(variants) + 1, dtype=torch.float64)
    for start in range(0, len(x), batch):
        xb, yb = x[start : start + batch], y[start : start + batch]
        acts = [chain.stem(xb)]
        for block in intact:
            acts.append(block(acts[-1]))
        logits = [chain.head(acts[-1])]
        for blocks, first in zip(variants, starts, strict=True):
            h = acts[first]
            for block in blocks[first:]:
                h = block(h)
            logits.append(chain.head(h))
        for i, out in enumerate(logits):
            wrong[i] += (out.argmax(1) != yb).sum()
            loss[i] += F.cross_entropy(out.float(), yb, reduction="sum").double()
        if progress is not None:
            progress.update(len(xb))
    n = len(x)
    return [{"error": float(w) / n, "loss": float(v) / n} for w, v in zip(wrong, loss, strict=True)]
