"""The settings of a fine-tuning run and the rules for resuming one. A leaf of ``finetune/``
(it imports only the small helpers ``build.say`` and ``parse_threshold``), so every module of
the package may import it without a cycle."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ResnetlabError
from ..files import LOCK_NAME
from ..settings import check_settings, setting
from ..train.config import check_trackers
from ..train.distributed import check_device
from .build import say
from .operating_point import parse_threshold

MONITORS = ("auto", "balanced_accuracy", "roc_auc", "pr_auc", "loss", "accuracy", "macro_f1")
GREY = ("auto", "repeat", "sum")
OPTIONS_FILE = "config.json"  # the settings, as every run folder has them
PHASES = ("phase1-head", "phase2-full")
# Settings that may change when a run is resumed; any other difference is refused.
RESUMABLE = {"resume", "progress", "device", "activation_checkpointing", "out_dir", "log"}


@dataclass
class FinetuneOptions:
    """Everything ``resnetlab finetune`` takes; ``None`` means "the sensible default"."""

    data: str
    out_dir: str
    model: str = "resnet18"
    pretrained: str | None = "auto"  # tag, URL, file or run folder; "auto": ImageNet if published
    model_options: dict[str, Any] = field(default_factory=dict)
    head_dropout: float = setting(0.0, "dropout before the new head", "[0, 1)")
    freeze: tuple[str, ...] = ()  # stages kept frozen in both phases
    bn: str = "frozen"  # BatchNorm of frozen stages: "frozen" (eval statistics) or "train"
    unfreeze_to: str | None = None  # phase 2 trains this stage and everything after it
    head_epochs: float | None = setting(
        None, "None: 2 with pretrained weights, 0 from scratch", ">= 0"
    )
    epochs: float = setting(5.0, "phase 2", "> 0")
    optimizer: str = "adamw"
    lr: float | None = setting(None, "the head's lr; None: 1e-3 (AdamW) or 0.01 (SGD)", "> 0")
    lr_mult: float | None = setting(
        None, "per-stage lr factor in phase 2; None: 0.4 pretrained, 1 scratch", "> 0"
    )
    weight_decay: float | None = setting(None, "None: 0.01 (AdamW) or 5e-4 (SGD)", ">= 0")
    schedule: str = "onecycle"
    batch_size: int = setting(64, "training batch size", ">= 1")
    image_size: int | None = setting(
        None, "input size; None: the weights' crop size, native from scratch", ">= 8"
    )
    grey: str = "auto"  # grey images: "repeat" to 3 channels or "sum" (1-channel stem)
    class_weights: bool = False
    balanced_sampling: bool = False
    monitor: str = "auto"  # balanced accuracy; PR-AUC on imbalanced two-class data
    threshold: str = "youden"  # two classes: the operating point, chosen on validation
    patience: int | None = setting(
        5, "epochs without improvement before stopping; None: never", ">= 1"
    )
    val_size: float = setting(0.1, "fraction held out for validation", "(0, 1)")
    test_size: float = setting(
        0.0, "held out (grouped) as test when the data has no test split", "[0, 1)"
    )
    folds: int = setting(1, "> 1: stratified, grouped k-fold cross-validation", ">= 1")
    fold: int | None = setting(None, "set by cross-validation: this run's validation fold", ">= 0")
    label_smoothing: float = setting(0.0, "label smoothing of the cross-entropy", "[0, 1)")
    augment: bool = True
    flip: bool = True
    pad: int | None = setting(None, "random-crop padding; None: crop / 8", ">= 0")
    tta: bool = False  # mirror averaging for the final test metrics
    seed: int = setting(0, "seed of the split, initialisation and order", ">= 0")
    device: str = "auto"
    progress: bool = True
    activation_checkpointing: bool = False
    resume: bool = False
    on_bad: str = "error"  # unreadable image files: "error", or "skip" them with a warning
    log: tuple[str, ...] = ()  # experiment trackers for each phase's run: tensorboard, mlflow

    def __post_init__(self) -> None:
        self.freeze = tuple(self.freeze)
        self.log = tuple(self.log)
        check_trackers(self.log)
        for name, value, choices in (
            ("monitor", self.monitor, MONITORS),
            ("grey", self.grey, GREY),
            ("bn", self.bn, ("frozen", "train")),
            ("on-bad", self.on_bad, ("error", "skip")),
        ):
            if value not in choices:
                raise ResnetlabError(
                    f"--{name} {value!r} is unknown; use one of {', '.join(choices)}."
                )
        if self.class_weights and self.balanced_sampling:
            raise ResnetlabError("use --class-weights or --balanced-sampling, not both.")
        check_settings(self)
        check_device(self.device)
        parse_threshold(self.threshold)  # a bad --threshold fails before any work
        if self.pretrained in ("", "none", "None", "scratch"):
            self.pretrained = None

    @property
    def head_lr(self) -> float:
        return self.lr or (1e-3 if self.optimizer == "adamw" else 0.01)

    @property
    def decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return 0.01 if self.optimizer == "adamw" else 5e-4


@dataclass
class FinetuneResult:
    """The run folder, its card and the headline metrics (val at the best epoch, test)."""

    run_dir: Path
    card: dict[str, Any]
    metrics: dict[str, dict[str, Any]]


def saved_options(run_dir: Path) -> dict[str, Any]:
    """The settings a fine-tuning run was started with, to resume it."""
    saved = Path(run_dir) / OPTIONS_FILE
    if not saved.is_file():
        raise ResnetlabError(f"{run_dir} holds no fine-tuning run to resume; drop --resume.")
    return json.loads(saved.read_text())


def resume_settings(options: FinetuneOptions, run_dir: Path) -> FinetuneOptions:
    """A fresh run needs an empty folder. ``resume`` continues with the run's own settings: a
    field left at its default takes the saved value, any other change is refused unless it is
    in ``RESUMABLE`` (the command line passes the saved settings with the given flags on top)."""
    if options.resume:
        saved, now = saved_options(run_dir), dataclasses.asdict(options)
        defaults = {f.name: f.default for f in dataclasses.fields(FinetuneOptions)}
        for key in sorted(saved.keys() - RESUMABLE):
            if _same(now.get(key), saved[key]):
                continue
            if _same(now.get(key), defaults.get(key)):
                now[key] = saved[key]
                continue
            raise ResnetlabError(
                f"resume: {key} is {now.get(key)!r} but the run at {run_dir} used "
                f"{saved[key]!r}; drop that setting or start a new --out."
            )
        say(f"resuming {run_dir} with its saved settings ({OPTIONS_FILE})")
        return FinetuneOptions(**now)
    if run_dir.is_dir() and any(p.name != LOCK_NAME for p in run_dir.iterdir()):
        raise ResnetlabError(f"run folder {run_dir} is not empty; pass --resume or another --out.")
    return options


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, default=str) == json.dumps(b, default=str)
