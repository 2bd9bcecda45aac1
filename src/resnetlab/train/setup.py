"""A training run prepared once, as one typed object (``Run``) that the loop and the step read.

``prepare`` resumes (or refuses to clobber) a run folder, seeds, opens the data, builds the
model, plans the device use, builds the loaders, optimiser, loss, EMA and device meters, and
restores a checkpoint. ``open_run_folder`` (rank 0) then writes ``config.json`` with the
resolved run length, starts ``run.json`` and the metrics files, and states the length on stderr.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import runfolder
from ..console import say
from ..data import open_data
from ..errors import ResnetlabError
from ..files import write_json
from ..models import create_model, model_info
from ..models.base import Backbone
from . import distributed
from .checkpoint import restore, resume_checkpoint, set_rng_state
from .config import TrainConfig
from .distributed import Dist
from .graphs import CapturedStep
from .metrics import Meters, MetricsWriter
from .optim import EMA, ParamGroups, build_optimizer
from .prepare import (
    Plan,
    check_classes,
    make_loaders,
    make_plan,
    preprocess_for,
    run_facts,
    seed_all,
)
from .state import Callback, TrainState
from .trackers import tracker_callbacks

StepMetrics = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]
# Settings that may change when a run is resumed; any other difference is refused. The length
# may change, and the lr milestones with it.
RESUMABLE = {"max_iters", "epochs", "milestones", "eval_every", "checkpoint_every", "log_every",
             "progress", "resume", "device", "num_workers", "out_dir", "data_root",
             "eval_batch_size", "eval_splits", "activation_checkpointing", "log"}  # fmt: skip


@dataclass
class Run:
    """Everything one run trains with; ``forward`` is the model as called (DDP, compiled)."""

    config: TrainConfig
    dist: Dist
    data: Any
    model: nn.Module
    forward: Callable[..., torch.Tensor]  # the model, wrapped for DDP and/or compiled
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    autocast: torch.autocast
    loaders: dict[str, Any]
    plan: Plan
    preprocess: dict[str, Any]
    meters: Meters
    state: TrainState
    ema: EMA | None
    callbacks: list[Callback]
    step_metrics: StepMetrics | None
    checkpoint: dict[str, Any] | None = field(default=None, repr=False)  # resumed from
    best: float = math.inf  # best validation error so far
    writer: MetricsWriter | None = None  # rank 0 only
    graph: CapturedStep | None = None  # the step recorded as a CUDA graph, when planned
    status: str = "running"
    artifact: bool = True  # end with model.safetensors + model_card.json (rank 0)

    @property
    def out(self) -> Path:
        return Path(self.config.out_dir)

    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out / "best.pt"


def prepare(
    config: TrainConfig,
    dist: Dist,
    model: nn.Module | None = None,
    data: Any = None,
    callbacks: list[Callback] | None = None,
    param_groups: ParamGroups | None = None,
    step_metrics: StepMetrics | None = None,
) -> Run:
    """Build (or resume) the run ``train`` describes; writes nothing to the run folder."""
    ckpt = resume_checkpoint(config, Path(config.out_dir) / "last.pt", RESUMABLE)
    trackers = tracker_callbacks(config.log, Path(config.out_dir), config)  # missing: fail now
    seed_all(config.seed)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    if model is None:  # a misspelt name fails before the data is read
        model_info(config.model)
    if data is None:
        data = open_data(config.data, val_size=config.val_size, seed=config.seed,
                         root=Path(config.data_root) if config.data_root else None,
                         on_bad=config.on_bad)  # fmt: skip
    check_classes(data, config.class_weights)
    if model is None:
        model = create_model(config.model, num_classes=len(data.classes),
                             in_channels=data.in_channels, pretrained=config.pretrained or False,
                             **config.model_options)  # fmt: skip
    if config.activation_checkpointing:  # the same math, less memory: see Backbone
        if not isinstance(model, Backbone):
            raise ResnetlabError(
                "activation_checkpointing needs a model with set_grad_checkpointing() (every "
                f"resnetlab network); {type(model).__name__} has none: set it to false."
            )
        model.set_grad_checkpointing(True)
    callbacks = list(callbacks or [])
    plan = make_plan(config, dist, model, hooked=bool(callbacks), image_size=data.image_size)
    callbacks += trackers  # after the plan: trackers only observe, so CUDA graphs stay allowed
    preprocess = preprocess_for(config, data.train)
    loaders = make_loaders(config, data, dist, plan, preprocess)
    bpe = len(loaders["train"])
    if plan.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    fmt = torch.channels_last if plan.channels_last else torch.preserve_format
    model.to(dist.device, memory_format=fmt).train()  # type: ignore[call-overload]  # stub lacks it
    if dist.device.type == "cuda":
        torch.backends.cudnn.benchmark = not config.deterministic
    tensor_lr = dist.device if plan.cuda_graphs else None
    optimizer = build_optimizer(config, model, param_groups, lr_tensor_device=tensor_lr)
    ema = EMA(model, config.ema) if config.ema else None
    meters = Meters(dist.device, 0)
    state = TrainState(config, model, optimizer, dist, Path(config.out_dir),
                       config.total_iters(bpe), bpe, ema=ema)  # fmt: skip
    best = math.inf
    if ckpt is not None:
        best = restore(ckpt, model, optimizer, ema, meters, tensor_lr)
        state.step, state.elapsed_s = ckpt["step"], float(ckpt.get("elapsed_s", 0.0))
        set_rng_state(ckpt["rng"])
    forward: Callable[..., torch.Tensor] = distributed.wrap(model, dist)
    forward = torch.compile(forward) if plan.compile else forward
    weight = torch.tensor(config.class_weights, device=dist.device) if config.class_weights \
        else None  # fmt: skip
    criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)
    autocast = torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=plan.bf16,
                              cache_enabled=not plan.cuda_graphs)  # fmt: skip
    return Run(config, dist, data, model, forward, optimizer, criterion, autocast, loaders, plan,
               preprocess, meters, state, ema, callbacks, step_metrics, ckpt, best)  # fmt: skip


def resolved_length(run: Run) -> dict[str, Any]:
    """The run's length as resolved from the data: iterations, epochs, lr milestones."""
    config, state = run.config, run.state
    total, bpe = state.max_iters, state.batches_per_epoch
    multistep = config.schedule == "multistep"
    return {
        "max_iters": total,
        "batches_per_epoch": bpe,
        "epochs": config.epochs if config.epochs is not None else round(total / bpe, 4),
        "milestones": list(config.milestones_at(total)) if multistep else None,
    }


def length_line(run: Run) -> str:
    """E.g. ``training resnet20 for 782 iterations (2 epochs of 391 batches); lr milestones at
    391, 586``."""
    length, config = resolved_length(run), run.config
    name = getattr(getattr(run.model, "info", None), "name", None) or type(run.model).__name__
    verb = f"resuming {name} at step {run.state.step} of" if run.checkpoint else (
        f"training {name} for"
    )  # fmt: skip
    epochs = f"{length['epochs']:.4g}"
    iters = f"{length['max_iters']} iteration{'' if length['max_iters'] == 1 else 's'}"
    line = (f"{verb} {iters} ({epochs} epoch"
            f"{'' if epochs == '1' else 's'} of {length['batches_per_epoch']} batches)")
    if length["milestones"] is not None:
        marks = ", ".join(str(m) for m in length["milestones"]) or "none"
        return f"{line}; lr milestones at {marks}"
    return f"{line}; {config.schedule} lr schedule"


def open_run_folder(run: Run) -> None:
    """Rank 0: the metrics files, ``config.json`` (with the resolved length), ``run.json``."""
    if not run.dist.main:
        return
    out, ckpt = run.out, run.checkpoint
    out.mkdir(parents=True, exist_ok=True)
    run.writer = MetricsWriter(out, keep_until_step=run.state.step if ckpt else -1)
    resolved = {**resolved_length(run), "plan": asdict(run.plan)}
    write_json(out / "config.json", {**run.config.to_dict(), "resolved": resolved})
    start_run_json(run)
    say(length_line(run))


def start_run_json(run: Run) -> None:
    """``run.json`` with status "running" (``resnetlab.runfolder``): machine, versions, command
    and timing, plus the data, model and plan; a resumed run adds this start to its timing."""
    runfolder.start(run.out, device=run.dist.device, world_size=run.dist.world_size,
                    resume=run.checkpoint is not None, step=run.state.step,
                    extra=run_facts(run.config, run.data, run.model, run.plan))  # fmt: skip
