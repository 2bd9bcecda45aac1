"""What the loop needs before its first step: the device plan, the loaders, the run's facts."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import ImageSet, make_loader, pixel_mean_of
from ..errors import ResnetlabError
from ..preprocessing import IMAGENET_MEAN, IMAGENET_STD
from .config import TrainConfig
from .distributed import Dist


@dataclass
class Plan:
    """How this run uses its machine, resolved from the config's "auto" values."""

    device: str
    bf16: bool
    channels_last: bool
    cuda_graphs: bool
    compile: bool
    sync_bn: bool


def make_plan(
    config: TrainConfig,
    dist: Dist,
    model: nn.Module,
    hooked: bool,
    image_size: tuple[int, ...] | None = None,
) -> Plan:
    """CUDA: bf16 autocast, channels_last and (small CIFAR nets) CUDA graphs; CPU: fp32, and
    channels_last where it is faster there (see ``cpu_channels_last``).

    ``hooked`` (callbacks given) keeps "auto" CUDA graphs off, since a hook may change the
    model between steps (freezing, new heads), which a recorded graph would not see.
    Activation checkpointing keeps them off too; asked for explicitly with it, they are refused.
    """
    cuda = dist.device.type == "cuda"
    if config.precision == "bf16" and not cuda:
        raise ResnetlabError("precision bf16 is for CUDA devices here; use --precision fp32.")
    bf16 = config.precision == "bf16" or (
        config.precision == "auto" and cuda and torch.cuda.is_bf16_supported()
    )
    if config.channels_last == "auto":
        channels_last = cuda or cpu_channels_last(model, image_size)
    else:
        channels_last = bool(config.channels_last)
    small = getattr(getattr(model, "info", None), "cifar_stem", False)
    if config.cuda_graphs == "auto":
        graphs = cuda and small and not config.compile
        graphs = graphs and not dist.enabled and not hooked
        graphs = graphs and not config.activation_checkpointing
    else:
        graphs = bool(config.cuda_graphs)
        if graphs and config.activation_checkpointing:
            raise ResnetlabError(
                "cuda_graphs and activation_checkpointing exclude each other; use "
                "--no-cuda-graphs or --no-activation-checkpointing."
            )
        if graphs and (not cuda or dist.enabled or config.compile):
            raise ResnetlabError(
                "cuda_graphs needs one CUDA device, no DDP and no compile; use --no-cuda-graphs."
            )
    sync_bn = (cuda and dist.enabled) if config.sync_bn == "auto" else bool(config.sync_bn)
    if sync_bn and not cuda:
        raise ResnetlabError("SyncBatchNorm runs on CUDA only in PyTorch; use --no-sync-bn.")
    return Plan(str(dist.device), bf16, channels_last, graphs, bool(config.compile), sync_bn)


def cpu_channels_last(model: nn.Module, image_size: tuple[int, ...] | None) -> bool:
    """Whether a conv net trains faster channels-last on the CPU: yes (by 10-20 % with oneDNN)
    unless its last feature maps are under 4 px a side, where it measured up to 20 % slower
    (docs/BENCHMARKS.md). The model's ``info.feature_stride`` says by how much it downsamples
    (CIFAR nets 4, the ImageNet ones 32; 32 when unknown)."""
    if image_size is None or not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return False
    stride = getattr(getattr(model, "info", None), "feature_stride", 32)
    return min(image_size[-2:]) // stride >= 4


def preprocess_for(config: TrainConfig, train_set: Any) -> dict[str, Any]:
    """The input normalisation: per-pixel mean (He et al.), channel mean/std, or given values."""
    norm = config.normalisation
    if isinstance(norm, dict):
        return {"pixel_mean": None, "mean": list(norm["mean"]), "std": list(norm["std"])}
    if norm == "per-pixel-mean":
        return {"pixel_mean": pixel_mean_of(train_set), "mean": None, "std": None}
    if norm == "imagenet":
        return {"pixel_mean": None, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    if norm == "mean-std":
        if not hasattr(train_set, "images"):
            raise ResnetlabError("mean-std from the data needs in-memory images; use imagenet.")
        mean, std = channel_stats(train_set.images)
        return {"pixel_mean": None, "mean": mean, "std": std}
    return {"pixel_mean": None, "mean": None, "std": None}


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, H, W) on the [0, 1] scale."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].to(torch.float64) / 255.0
        total += x.sum((0, 2, 3))
        squares += (x * x).sum((0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()


def make_loaders(
    config: TrainConfig, bundle: Any, dist: Dist, plan: Plan, preprocess: dict[str, Any]
) -> dict[str, Any]:
    """The train loader and one evaluation loader per present split, sharded by rank.

    Every loader gets the GLOBAL batch size and this process's rank: each rank takes its own
    contiguous chunk of every global batch.
    """
    if config.batch_size % dist.world_size:
        raise ResnetlabError(
            f"batch_size {config.batch_size} (global) must divide evenly over "
            f"{dist.world_size} processes; pick a multiple of {dist.world_size}."
        )
    in_memory = isinstance(bundle.train, ImageSet)
    if not in_memory and preprocess["pixel_mean"] is not None:
        raise ResnetlabError(
            "per-pixel mean subtraction needs an in-memory data set; use "
            "--normalisation mean-std or imagenet for large images."
        )
    common: dict[str, Any] = {
        "device": dist.device,
        "seed": config.seed,
        "rank": dist.rank,
        "world_size": dist.world_size,
        "channels_last": plan.channels_last,
        "mean": preprocess["mean"],
        "std": preprocess["std"],
    }
    if in_memory:
        common["pixel_mean"] = preprocess["pixel_mean"]
    else:
        common["num_workers"] = config.num_workers
    train_options: dict[str, Any] = {"augment": config.augment, "flip": config.flip}
    if in_memory:
        train_options["pad"] = config.pad
    loaders = {
        "train": make_loader(bundle.train, config.batch_size, train=True, **train_options, **common)
    }
    eval_batch = config.eval_batch_size or max(config.batch_size, 256)
    eval_batch += -eval_batch % dist.world_size
    for name in ("val", "test"):
        split = getattr(bundle, name)
        if split is not None and len(split) > 0:
            loaders[name] = make_loader(split, eval_batch, train=False, **common)
    return loaders


def run_facts(config: TrainConfig, bundle: Any, model: nn.Module, plan: Plan) -> dict:
    """What ``run.json`` adds to the machine and versions (``resnetlab.runfolder``): where the
    data came from, which model, and how the run uses its machine."""
    info = getattr(model, "info", None)
    return {
        "data": {
            "description": bundle.description,
            "source": bundle.source,
            "classes": list(bundle.classes),
            "sizes": {
                name: len(split)
                for name in ("train", "val", "test")
                if (split := getattr(bundle, name)) is not None
            },
            "image_size": list(bundle.image_size),
            "in_channels": bundle.in_channels,
        },
        "model": {
            "name": getattr(info, "name", type(model).__name__),
            "family": getattr(info, "family", None),
            "depth": getattr(info, "depth", None),
            "skips": getattr(info, "skips", None),
            "parameters": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        },
        "plan": asdict(plan),
    }


def batches_from(loader: Any, step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The training batches from update ``step`` on, across epochs (the loader is stateless)."""
    epoch, start = divmod(step, len(loader))
    while True:
        yield from loader.epoch(epoch, start_batch=start)
        epoch, start = epoch + 1, 0


def chain(first, rest: Iterator) -> Iterator:
    """``first`` followed by everything in ``rest``."""
    yield first
    yield from rest


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (model initialisation draws from torch's generator)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_classes(bundle: Any, class_weights: tuple[float, ...] | None = None) -> None:
    """Refuse data a classifier cannot learn from: fewer than two classes overall or in any
    split, or loss weights that do not give one weight per class."""
    classes = list(bundle.classes)
    if len(classes) < 2:
        raise ResnetlabError(
            f"{bundle.description}: only {len(classes)} class ({', '.join(classes) or 'none'}); "
            "a classifier needs at least two classes, each in its own sub-folder."
        )
    for split in ("train", "val", "test"):
        part = getattr(bundle, split, None)
        if part is None or len(part) == 0:
            continue
        present = torch.unique(part.labels).numel()
        if present < 2:
            only = classes[int(part.labels[0])]
            raise ResnetlabError(
                f"the {split} split holds images of one class only ({only!r}); every split "
                "needs at least two classes: add images of the others or change the split."
            )
    if class_weights is not None and len(class_weights) != len(classes):
        raise ResnetlabError(
            f"class_weights gives {len(class_weights)} weight(s) but the data has "
            f"{len(classes)} classes ({', '.join(classes)}); give one weight per class."
        )
