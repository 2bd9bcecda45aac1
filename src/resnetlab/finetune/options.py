"""The settings of a fine-tuning run and the rules for resuming one. A leaf of ``finetune/``
(it imports only ``TrainConfig``, the setting groups, ``console.say`` and the small helper
``parse_threshold``), so every module of the package may import it without a cycle."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..console import say
from ..errors import ResnetlabError
from ..evaluation.operating_point import parse_threshold
from ..files import LOCK_NAME
from ..groups import ImageSizeSettings, InferenceSettings, PrevalenceSettings, check_device
from ..settings import REQUIRED, Default, check_settings, compose, setting
from ..train.config import TrainConfig, check_trackers

MONITORS = ("auto", "balanced_accuracy", "roc_auc", "pr_auc", "loss", "accuracy", "macro_f1")
GREY = ("auto", "repeat", "sum")
OPTIONS_FILE = "config.json"  # the settings, as every run folder has them
PHASES = ("phase1-head", "phase2-full")
# Settings that may change when a run is resumed; any other difference is refused.
RESUMABLE = {"resume", "progress", "device", "activation_checkpointing", "out_dir",
             "keep_checkpoints", "log"}  # fmt: skip
# Engine settings the recipe sets per phase (below: fine-tuning's own, or in engine_config).
DERIVED = ("data_root", "normalisation", "num_workers", "max_iters", "eval_every", "eval_splits",
           "checkpoint_every", "log_every", "lr", "epochs", "class_weights")  # fmt: skip
# Fine-tuning's defaults where they differ from the training engine's.
ENGINE_DEFAULTS = {
    "model": "resnet18", "optimizer": "adamw", "schedule": "onecycle", "batch_size": 64,
    "data": REQUIRED, "out_dir": Default(REQUIRED, "runs/<command>-<model>-<time>"),
    "pretrained": "auto",
    "pad": Default(None, "an eighth of the crop"),
    "weight_decay": Default(None, "0.01 with AdamW, 5e-4 with SGD"),
    "val_size": Default(0.1, "0.1, a fraction, where the data has no val split"),
}  # fmt: skip
# Fine-tuning's settings that once had another name: the old name on the command line is
# refused naming the new one, and an older run's config.json is read with the new names.
RENAMED = {"lr": "head_lr", "epochs": "full_epochs", "class_weights": "balanced_loss"}


@dataclass(kw_only=True)
@compose(TrainConfig, InferenceSettings, PrevalenceSettings, ImageSizeSettings,
         exclude=(*DERIVED, "source", "top_k", "engine"),
         defaults={**ENGINE_DEFAULTS, "image_size": Default(
             None, "the weights' crop size; native from scratch")})  # fmt: skip
class FinetuneOptions:
    """Everything ``resnetlab finetune`` takes; ``None`` means "the sensible default".

    The fields below are fine-tuning's own: the recipe's choices, and the settings it turns into
    per-phase engine values. Every other ``TrainConfig`` field (``ema``, ``grad_clip``,
    ``precision``, ``label_smoothing``, ...) is added by ``compose`` with its help and bounds
    and passed to each phase's engine run unchanged (``engine_settings``).
    """

    head_dropout: float = setting(0.0, "dropout before the new head", "[0, 1)")
    freeze: tuple[str, ...] = setting((), "stages kept frozen throughout, e.g. layer1,layer2")
    bn: str = setting(
        "frozen", "BatchNorm in frozen stages: fixed statistics or updated",
        choices=("frozen", "train"),
    )  # fmt: skip
    unfreeze_to: str | None = setting(None, "phase 2 trains this stage onwards, e.g. layer3")
    head_epochs: float | None = setting(
        None, "phase 1 epochs (default 2 with pretrained weights, 0 from scratch)", ">= 0"
    )
    full_epochs: float = setting(
        5.0, "epochs of phase 2, the unfrozen model (the run: --head-epochs + --full-epochs)",
        "> 0",
    )  # fmt: skip
    head_lr: float | None = setting(
        None, "learning rate of the new head in phase 1; phase 2 starts from it (half of it "
        "with pretrained weights) at the head, falling by --lr-mult per stage (default 1e-3 "
        "AdamW, 0.01 SGD)", "> 0",
    )  # fmt: skip
    lr_mult: float | None = setting(
        None, "phase-2 lr factor per stage towards the stem (default 0.4 with pretrained "
        "weights, 1 from scratch)", "> 0",
    )  # fmt: skip
    grey: str = setting(
        "auto", "greyscale images: repeat to 3 channels, or sum the stem weights to 1 channel "
        "(default auto: repeat with weights, 1 channel from scratch)", choices=GREY,
    )  # fmt: skip
    balanced_loss: bool = setting(
        False, "weight the loss of each class by its inverse frequency in train"
    )
    balanced_sampling: bool = setting(
        False, "oversample smaller classes to the largest class's count"
    )
    monitor: str = setting(
        "auto", "validation metric for the best model and early stopping (default auto: "
        "balanced accuracy; PR-AUC on imbalanced two-class data)", choices=MONITORS,
    )  # fmt: skip
    threshold: str = setting(
        "youden", "two classes: operating point on the calibrated probability of the second "
        "class, chosen on validation: youden (default; max sensitivity + specificity), "
        "sensitivity=0.95, specificity=0.95 or a number",
    )  # fmt: skip
    patience: int | None = setting(
        5, "epochs without improvement before stopping (0 or none: never stop early)", ">= 0"
    )
    test_size: float = setting(
        0.0, "fraction held out as test (grouped, stratified) when the data has no test split",
        "[0, 1)",
    )  # fmt: skip
    folds: int = setting(
        1, "K > 1: stratified, grouped K-fold cross-validation over train (+ val), one report",
        ">= 1",
    )  # fmt: skip
    fold: int | None = setting(None, "set by cross-validation: this run's validation fold", ">= 0")
    keep_checkpoints: bool = setting(
        False, "keep each phase's last.pt (weights and optimiser state) when the run is done "
        "(default: deleted once no resume needs them)",
    )  # fmt: skip

    if TYPE_CHECKING:
        # Added by ``compose`` at run time (this block never runs); declared here, with the
        # types TrainConfig gives them, for the TrainConfig settings fine-tuning itself reads.
        __composed__: ClassVar[tuple[str, ...]]
        data: str = setting()
        out_dir: str = setting()
        pretrained: str | None = setting()
        pad: int | None = setting()
        weight_decay: float | None = setting()
        val_size: float = setting()
        tta: bool = setting()
        model: str = setting()
        model_options: dict[str, Any] = setting()
        on_bad: str = setting()
        batch_size: int = setting()
        optimizer: str = setting()
        device: str = setting()
        seed: int = setting()
        resume: bool = setting()
        log: tuple[str, ...] = setting()
        prevalence: float | None = setting()
        image_size: int | None = setting()

    def __post_init__(self) -> None:
        self.freeze = tuple(self.freeze)
        if self.patience == 0:  # "--patience 0": never stop early
            self.patience = None
        if self.balanced_loss and self.balanced_sampling:
            raise ResnetlabError("use --balanced-loss or --balanced-sampling, not both.")
        check_settings(self)
        if not isinstance(self.val_size, float) or not 0 < self.val_size < 1:
            raise ResnetlabError(
                f"val_size (--val-size) must be a fraction in (0, 1) for fine-tuning, got "
                f"{self.val_size!r}; e.g. --val-size 0.1."
            )
        check_trackers(self.log)
        check_device(self.device)
        parse_threshold(self.threshold)  # a bad --threshold fails before any work
        if self.pretrained in ("", "none", "None", "scratch"):
            self.pretrained = None

    @property
    def lr_of_head(self) -> float:
        """The head's learning rate: ``head_lr``, or the optimiser's default."""
        return self.head_lr or (1e-3 if self.optimizer == "adamw" else 0.01)

    @property
    def decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return 0.01 if self.optimizer == "adamw" else 5e-4


def engine_settings(options: FinetuneOptions) -> dict[str, Any]:
    """The ``TrainConfig`` settings fine-tuning passes to each phase's engine run as given."""
    engine = {f.name for f in dataclasses.fields(TrainConfig)}
    return {name: getattr(options, name) for name in FinetuneOptions.__composed__
            if name in engine}  # fmt: skip


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
    values = json.loads(saved.read_text())
    return {RENAMED.get(key, key): value for key, value in values.items()}


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
