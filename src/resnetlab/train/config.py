"""Training settings as one plain dataclass, and named recipes from the papers.

Every length is counted in iterations (optimiser steps on the global batch): ``max_iters``,
``milestones``, ``warmup_iters``, ``eval_every``, ``checkpoint_every``, ``log_every``.
``epochs`` is accepted instead of ``max_iters`` and converted once the data size is known.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import ResnetlabError, close_matches

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("multistep", "cosine", "onecycle", "constant")
WARMUPS = ("linear", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
NORMALISATIONS = ("per-pixel-mean", "mean-std", "imagenet", "none")
ON_BAD = ("error", "skip")


@dataclass
class TrainConfig:
    """Everything a training run needs; plain values only, so it round-trips through JSON.

    ``batch_size`` is the GLOBAL batch: under DDP with W processes each one gets
    ``batch_size / W`` images per step, and ``lr`` applies to the global batch (the gradients
    are averaged over all processes, so a run on 1 or W processes takes the same steps).
    """

    # model and data
    model: str = "resnet20"
    model_options: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None
    data: str = "cifar10"
    data_root: str | None = None
    val_size: int | float | None = None
    normalisation: str | dict[str, list[float]] = "per-pixel-mean"
    augment: bool = True
    pad: int = 4
    flip: bool = True
    num_workers: int = 4
    on_bad: str = "error"  # unreadable image files: "error", or "skip" them with a warning
    # optimisation
    batch_size: int = 128
    eval_batch_size: int | None = None
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    no_decay_bn_bias: bool = False
    schedule: str = "multistep"
    milestones: tuple[int, ...] = (32000, 48000)
    gamma: float = 0.1
    min_lr: float = 0.0
    onecycle_pct: float = 0.3
    warmup_iters: int = 0
    warmup_lr: float = 0.0
    warmup: str = "linear"
    max_iters: int | None = 64000
    epochs: float | None = None
    label_smoothing: float = 0.0
    class_weights: tuple[float, ...] | None = None  # per-class loss weights (imbalance)
    grad_clip: float | None = None
    ema: float | None = None
    # machine
    precision: str = "auto"
    channels_last: bool | str = "auto"
    compile: bool = False
    cuda_graphs: bool | str = "auto"
    activation_checkpointing: bool = False  # recompute block activations in backward
    sync_bn: bool | str = "auto"
    device: str = "auto"
    deterministic: bool = False
    seed: int = 0
    # bookkeeping
    eval_every: int = 2000
    eval_splits: tuple[str, ...] = ("val", "test")
    checkpoint_every: int = 2000
    log_every: int = 100
    out_dir: str = "runs/run"
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.milestones = tuple(int(m) for m in self.milestones)
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        self.eval_splits = tuple(self.eval_splits)
        if self.class_weights is not None:
            self.class_weights = tuple(float(w) for w in self.class_weights)
        self.validate()

    def validate(self) -> None:
        """Refuse impossible values with one line naming the field and the fix."""
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("warmup", self.warmup, WARMUPS)
        _choice("precision", self.precision, PRECISIONS)
        _choice("on_bad", self.on_bad, ON_BAD)
        for name in ("channels_last", "cuda_graphs", "sync_bn"):
            value = getattr(self, name)
            if value not in (True, False, "auto"):
                raise ResnetlabError(f"{name} is True, False or 'auto'; got {value!r}.")
        if isinstance(self.normalisation, str):
            _choice("normalisation", self.normalisation, NORMALISATIONS)
        elif set(self.normalisation) != {"mean", "std"}:
            raise ResnetlabError("normalisation as values needs exactly the keys mean and std.")
        for name in ("batch_size", "eval_every", "checkpoint_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ResnetlabError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ResnetlabError(f"lr must be a positive number, got {self.lr}.")
        if self.weight_decay < 0 or self.warmup_iters < 0 or self.warmup_lr < 0:
            raise ResnetlabError("weight_decay, warmup_iters and warmup_lr must not be negative.")
        if self.max_iters is None and self.epochs is None:
            raise ResnetlabError("set max_iters (iterations) or epochs.")
        if self.max_iters is not None and self.max_iters < 1:
            raise ResnetlabError(f"max_iters must be at least 1, got {self.max_iters}.")
        if self.epochs is not None and self.epochs <= 0:
            raise ResnetlabError(f"epochs must be positive, got {self.epochs}.")
        if list(self.milestones) != sorted(self.milestones):
            raise ResnetlabError(f"milestones must increase, got {list(self.milestones)}.")
        if self.ema is not None and not 0.0 < self.ema < 1.0:
            raise ResnetlabError(f"ema is a decay in (0, 1), e.g. 0.999; got {self.ema}.")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ResnetlabError(f"grad_clip must be positive, got {self.grad_clip}.")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ResnetlabError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}.")
        if not 0.0 < self.onecycle_pct < 1.0:
            raise ResnetlabError(f"onecycle_pct must be in (0, 1), got {self.onecycle_pct}.")
        for split in self.eval_splits:
            _choice("eval split", split, ("val", "test"))

    def total_iters(self, batches_per_epoch: int) -> int:
        """``max_iters``, or ``epochs`` converted to iterations (rounded up)."""
        if self.max_iters is not None:
            return int(self.max_iters)
        return max(1, math.ceil(float(self.epochs) * batches_per_epoch))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            hint = close_matches(unknown[0], sorted(known))
            raise ResnetlabError(f"unknown training setting {unknown[0]!r}.{hint}")
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        hint = close_matches(str(value), list(choices)) or f" Choose from {', '.join(choices)}."
        raise ResnetlabError(f"unknown {name} {value!r}.{hint}")


# He et al. 2015 §4.2 (CIFAR-10): quoted from the paper, see ../shared/REFERENCES.md.
RECIPES: dict[str, dict[str, Any]] = {
    "he2015-cifar": {
        "data": "cifar10",
        "val_size": 5000,
        "batch_size": 128,
        "optimizer": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 1e-4,
        "no_decay_bn_bias": False,
        "schedule": "multistep",
        "milestones": (32000, 48000),
        "gamma": 0.1,
        "max_iters": 64000,
        "epochs": None,
        "augment": True,
        "pad": 4,
        "flip": True,
        "normalisation": "per-pixel-mean",
        "label_smoothing": 0.0,
        "ema": None,
    },
    # A short smoke recipe: same optimiser, cosine decay, for quick checks on small machines.
    "quick-cifar": {
        "data": "cifar10",
        "val_size": 5000,
        "batch_size": 128,
        "lr": 0.1,
        "schedule": "cosine",
        "warmup_iters": 100,
        "max_iters": 2000,
        "eval_every": 500,
        "checkpoint_every": 500,
    },
}

# "ResNet-110: lr 0.01 until training error < 80 % (about 400 iterations)", He et al. 2015 §4.2.
DEEP_CIFAR_WARMUP = {"warmup_iters": 400, "warmup_lr": 0.01, "warmup": "constant"}
DEEP_CIFAR_DEPTH = 110


def recipe_config(name: str | None = None, **overrides: Any) -> TrainConfig:
    """A ``TrainConfig`` from a named recipe, with ``overrides`` applied on top.

    For ``he2015-cifar`` and a CIFAR net of 110 layers or more, the paper's warm-up (lr 0.01
    for the first 400 iterations) is added unless the overrides set warm-up themselves.
    """
    values: dict[str, Any] = {}
    if name is not None:
        if name not in RECIPES:
            hint = close_matches(name, list(RECIPES)) or f" Recipes: {', '.join(RECIPES)}."
            raise ResnetlabError(f"unknown recipe {name!r}.{hint}")
        values.update(RECIPES[name])
    values.update(overrides)
    if name == "he2015-cifar" and _cifar_depth(values.get("model", "resnet20")) >= DEEP_CIFAR_DEPTH:
        for key, value in DEEP_CIFAR_WARMUP.items():
            if key not in overrides:
                values[key] = value
    return TrainConfig.from_dict(values)


def _cifar_depth(model: str) -> int:
    from ..models import model_info

    info = model_info(model)
    return info.depth if info.family.startswith("cifar") else 0
