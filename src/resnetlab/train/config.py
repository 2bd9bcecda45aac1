"""Training settings as one plain dataclass, and named recipes from the papers.

Every length is counted in iterations (optimiser steps on the global batch): ``max_iters``,
``milestones``, ``warmup_iters``, ``eval_every``, ``checkpoint_every``, ``log_every``.
The run's length is ``max_iters`` or ``epochs`` (converted, rounded up, once the data size is
known), at most one of them; neither is the paper's 64,000 iterations. Milestones left unset
fall at the paper's fractions of whatever length the run has (32k and 48k of 64k).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..errors import ResnetlabError, close_matches
from ..groups import (
    BatchSettings,
    Checked,
    DataSettings,
    DeviceSettings,
    ModelSettings,
    RunFolderSettings,
    SeedSettings,
    check_device,
)
from ..models import model_info
from ..settings import check_settings, setting

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("multistep", "cosine", "onecycle", "constant")
WARMUPS = ("linear", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
NORMALISATIONS = ("per-pixel-mean", "mean-std", "imagenet", "none")
AUTO_BOOL = (True, False, "auto")
# He et al. 2015 §4.2: 64k iterations, lr divided by 10 at 32k and 48k (0.5 and 0.75 of them).
DEFAULT_ITERS = 64000
MILESTONE_FRACTIONS = (0.5, 0.75)
LENGTH_KEYS = ("max_iters", "epochs")
TRACKERS = ("tensorboard", "mlflow")


@dataclass
class TrainConfig(  # fields in the reverse order: data first, the run folder last of them
    RunFolderSettings, BatchSettings, DeviceSettings, SeedSettings, ModelSettings, DataSettings
):
    """Everything a training run needs; plain values only, so it round-trips through JSON.
    The groups it inherits hold the settings other commands share (``groups.py``).

    ``batch_size`` is the GLOBAL batch: under DDP with W processes each one gets
    ``batch_size / W`` images per step, and ``lr`` applies to the global batch (the gradients
    are averaged over all processes, so a run on 1 or W processes takes the same steps).
    """

    # data (data, data_root, on_bad), model (model, model_options, pretrained), seed, device,
    # batch_size and the run folder (out_dir, resume, progress): the groups in ../groups.py
    val_size: int | float | None = setting(
        None, "images (or a fraction) held out of train for validation", ">= 0"
    )
    normalisation: str | dict[str, list[float]] = setting(
        "per-pixel-mean", "a named normalisation, or mean and std per channel, e.g. "
        "0.5,0.5,0.5/0.25,0.25,0.25", choices=NORMALISATIONS,
    )  # fmt: skip
    augment: bool = setting(True, "random crop + flip on training batches")
    pad: int = setting(4, "zero padding before the random crop, in pixels", ">= 0")
    flip: bool = setting(True, "random horizontal flip")
    num_workers: int = setting(4, "decoding processes for large-image folders", ">= 0")
    # optimisation
    eval_batch_size: int | None = setting(
        None, "batch size for evaluation (default: the training batch)", ">= 1"
    )
    optimizer: str = setting("sgd", "optimiser", choices=OPTIMIZERS)
    lr: float = setting(0.1, "learning rate for the global batch", "> 0")
    momentum: float = setting(0.9, "SGD momentum", "[0, 1)")
    nesterov: bool = setting(False, "Nesterov momentum")
    betas: tuple[float, float] = setting((0.9, 0.999), "AdamW betas, e.g. 0.9,0.999", "[0, 1)")
    weight_decay: float = setting(1e-4, "weight decay", ">= 0")
    no_decay_bn_bias: bool = setting(False, "no weight decay on BatchNorm and bias parameters")
    schedule: str = setting("multistep", "learning-rate schedule", choices=SCHEDULES)
    milestones: tuple[int, ...] | None = setting(
        None,
        "iterations where the lr is multiplied by --gamma, e.g. 32000,48000 (default: at half "
        "and three quarters of the run, as the paper's 32k and 48k of 64k)",
        ">= 0",
    )
    gamma: float = setting(0.1, "lr factor at each milestone", "> 0")
    min_lr: float = setting(0.0, "final lr of the cosine schedule", ">= 0")
    onecycle_pct: float = setting(
        0.3, "fraction of the run spent rising in the one-cycle schedule", "(0, 1)"
    )
    warmup_iters: int = setting(0, "iterations of warm-up before the schedule", ">= 0")
    warmup_lr: float = setting(
        0.0, "lr at the start of warm-up (constant warm-up: throughout)", ">= 0"
    )
    warmup: str = setting("linear", "warm-up shape: linear ramp or constant lr", choices=WARMUPS)
    max_iters: int | None = setting(
        None, "iterations (optimiser steps) to train (default 64000, or --epochs)", ">= 1"
    )
    epochs: float | None = setting(
        None, "epochs to train instead of --max-iters, e.g. 2 or 0.05 (rounded up)", "> 0"
    )
    label_smoothing: float = setting(
        0.0, "label smoothing of the cross-entropy, e.g. 0.1", "[0, 1)"
    )
    class_weights: tuple[float, ...] | None = setting(
        None, "per-class loss weights (imbalance), one per class, e.g. 1,3", "> 0"
    )
    grad_clip: float | None = setting(None, "clip the gradient norm to this value", "> 0")
    ema: float | None = setting(
        None,
        "keep an exponential moving average of the weights with this decay, e.g. 0.999",
        "(0, 1)",
    )
    # machine
    precision: str = setting("auto", "number format: auto is bf16 on CUDA", choices=PRECISIONS)
    channels_last: bool | str = setting(
        "auto", "channels-last memory layout (default auto: on CUDA, and on CPU for nets "
        "whose last maps are >= 4 px)", choices=AUTO_BOOL,
    )  # fmt: skip
    compile: bool = setting(False, "torch.compile the model")
    cuda_graphs: bool | str = setting(
        "auto", "CUDA graphs (default auto: small nets on CUDA)", choices=AUTO_BOOL
    )
    activation_checkpointing: bool = setting(
        False, "recompute block activations in backward to save memory"
    )
    sync_bn: bool | str = setting(
        "auto", "SyncBatchNorm (default auto: under multi-GPU DDP)", choices=AUTO_BOOL
    )
    deterministic: bool = setting(False, "deterministic algorithms only")
    # bookkeeping
    eval_every: int = setting(2000, "iterations between evaluations", ">= 1")
    eval_splits: tuple[str, ...] = setting(
        ("val", "test"), "splits to evaluate, e.g. val,test", choices=("val", "test")
    )
    checkpoint_every: int = setting(2000, "iterations between checkpoints", ">= 1")
    log_every: int = setting(100, "iterations between metric records", ">= 1")
    log: tuple[str, ...] = setting(
        (), "experiment trackers to log to: tensorboard, mlflow, e.g. tensorboard,mlflow"
    )

    def __post_init__(self) -> None:
        if self.milestones is not None:
            self.milestones = tuple(int(m) for m in self.milestones)
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        self.eval_splits = tuple(self.eval_splits)
        self.log = tracker_names(self.log) if isinstance(self.log, str) else tuple(self.log)
        if self.class_weights is not None:
            self.class_weights = tuple(float(w) for w in self.class_weights)
        self.validate()

    def validate(self) -> None:
        """Refuse impossible values with one line naming the field and the fix."""
        check_settings(self)  # the bounds and choices each field declares
        if isinstance(self.normalisation, dict):
            check_normalisation(self.normalisation)
        check_device(self.device)
        if self.max_iters is not None and self.epochs is not None:
            raise ResnetlabError(
                f"max_iters ({self.max_iters}) and epochs ({self.epochs:g}) both given; the run "
                "length is one of them: drop --max-iters or --epochs."
            )
        if self.milestones is not None and list(self.milestones) != sorted(self.milestones):
            raise ResnetlabError(f"milestones must increase, got {list(self.milestones)}.")
        check_trackers(self.log)

    def total_iters(self, batches_per_epoch: int) -> int:
        """``max_iters``, ``epochs`` converted to iterations (rounded up), or 64,000."""
        if self.epochs is not None:  # round() first: 0.1 x 30 is 3.0000000000000004
            return max(1, math.ceil(round(float(self.epochs) * batches_per_epoch, 9)))
        return int(self.max_iters) if self.max_iters is not None else DEFAULT_ITERS

    def milestones_at(self, total: int) -> tuple[int, ...]:
        """The milestones as given, or at the paper's fractions of a run of ``total`` steps."""
        if self.milestones is not None:
            return self.milestones
        return tuple(max(1, round(f * total)) for f in MILESTONE_FRACTIONS)

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
        """A copy with ``changes``; a length given in them replaces this run's length."""
        return TrainConfig.from_dict(with_overrides(self.to_dict(), changes))


def with_overrides(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``values`` updated with ``overrides``, where ``max_iters`` or ``epochs`` in the overrides
    replaces both length settings of ``values`` (a recipe's 64,000 iterations give way to
    ``--epochs 2``)."""
    if any(key in overrides for key in LENGTH_KEYS):
        values = {k: v for k, v in values.items() if k not in LENGTH_KEYS}
    return {**values, **overrides}


def tracker_names(text: str) -> tuple[str, ...]:
    """``"tensorboard,mlflow"`` as a tuple of names (checked by :func:`check_trackers`)."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def check_trackers(names: tuple[str, ...] | list[str]) -> None:
    """Refuse a tracker name that is not one of ``TRACKERS``, listing the valid ones."""
    for name in names:
        if name not in TRACKERS:
            raise ResnetlabError(
                f"unknown tracker {name!r} in log (--log); valid: {', '.join(TRACKERS)}."
            )


def check_normalisation(values: dict[str, list[float]]) -> None:
    """Mean and std as values: the two keys, finite numbers, every std positive."""
    if set(values) != {"mean", "std"}:
        raise ResnetlabError("normalisation as values needs exactly the keys mean and std.")
    mean, std = list(values["mean"]), list(values["std"])
    if len(mean) != len(std) or not mean:
        raise ResnetlabError(
            f"normalisation: {len(mean)} mean(s) but {len(std)} std(s); give one of each per "
            "channel, e.g. 0.5,0.5,0.5/0.25,0.25,0.25."
        )
    if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise ResnetlabError(
            f"normalisation: every std must be a positive number and every mean finite, got "
            f"mean {mean} std {std}; a std of 0 would divide by zero."
        )


# He et al. 2015 §4.2 (CIFAR-10): quoted from the paper, see ../shared/REFERENCES.md. Milestones
# are left unset: 32k and 48k for the recipe's 64k iterations, scaled for any other length.
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
        "milestones": None,
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

@dataclass
class RecipeSettings(Checked):
    """The named recipe a run starts from (``train --recipe``, ``degradation --recipe``)."""

    recipe: str | None = setting(
        None, "training recipe, its values overridden by the flags given (none: the settings "
        "as declared)", choices=tuple(RECIPES),
    )  # fmt: skip


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
    values = with_overrides(values, overrides)
    if name == "he2015-cifar" and _cifar_depth(values.get("model", "resnet20")) >= DEEP_CIFAR_DEPTH:
        for key, value in DEEP_CIFAR_WARMUP.items():
            if key not in overrides:
                values[key] = value
    return TrainConfig.from_dict(values)


def _cifar_depth(model: str) -> int:
    info = model_info(model)
    return info.depth if info.cifar_stem else 0
