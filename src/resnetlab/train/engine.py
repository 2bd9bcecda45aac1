"""The one training loop behind ``resnetlab train``, the experiments and the fine-tuner.

A step is: forward (bf16 autocast on CUDA), cross-entropy, backward, optional gradient clip,
optimiser step, EMA update, device-side sums. Every ``log_every`` steps the sums are read (the
only host sync), every ``eval_every`` the model is evaluated, every ``checkpoint_every`` the
state is saved atomically. Anything else (freezing phases, extra measurements, early stops)
comes from :class:`Callback` hooks, ``param_groups`` and ``step_metrics``, never a second loop.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ResnetlabError
from ..files import RunLock, remove_stale_temps, write_json
from . import distributed
from .checkpoint import (
    non_finite_entries,
    restore,
    resume_checkpoint,
    save_checkpoint,
    set_rng_state,
    training_payload,
)
from .config import TrainConfig
from .distributed import Dist
from .evaluation import eval_record
from .graphs import capture_step
from .metrics import Meters, MetricsWriter, progress_bar
from .optim import EMA, ParamGroups, build_optimizer, lr_at, set_lr
from .prepare import (
    batches_from,
    chain,
    check_classes,
    make_loaders,
    make_plan,
    preprocess_for,
    run_facts,
    seed_all,
)
from .trackers import tracker_callbacks

StepMetrics = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]
# Settings that may change when a run is resumed; any other difference is refused.
RESUMABLE = {"max_iters", "epochs", "eval_every", "checkpoint_every", "log_every", "progress",
             "resume", "device", "num_workers", "out_dir", "data_root", "eval_batch_size",
             "eval_splits", "activation_checkpointing", "log"}  # fmt: skip


class TrainingDiverged(ResnetlabError):
    """The loss became NaN or Inf; the last good checkpoint is left untouched."""


@dataclass
class TrainResult:
    """Where the run lies, how it ended (final train/eval metrics), and the trained model."""

    out_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    metrics: dict[str, float]
    steps: int
    model: nn.Module | None = field(default=None, repr=False)


@dataclass
class TrainState:
    """What hooks see. ``step`` counts finished updates; set ``stop = True`` to end early."""

    config: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    dist: Dist
    out_dir: Path
    max_iters: int
    batches_per_epoch: int
    step: int = 0
    stop: bool = False
    elapsed_s: float = 0.0
    ema: EMA | None = None
    last_eval: dict[str, float] = field(default_factory=dict)

    @property
    def epoch(self) -> float:
        return self.step / self.batches_per_epoch


class Callback:
    """Hooks into the loop; override what you need. ``on_step`` runs after every update."""

    def on_start(self, state: TrainState) -> None: ...
    def on_step(self, state: TrainState) -> None: ...
    def on_log(self, state: TrainState, record: dict[str, Any]) -> None: ...
    def on_eval(self, state: TrainState, record: dict[str, Any]) -> None: ...
    def on_end(self, state: TrainState, result: TrainResult) -> None: ...


def train(
    config: TrainConfig,
    *,
    model: nn.Module | None = None,
    data: Any = None,
    callbacks: Sequence[Callback] = (),
    param_groups: ParamGroups | None = None,
    step_metrics: StepMetrics | None = None,
) -> TrainResult:
    """Train ``config.model`` (or ``model``) on ``config.data`` (or the ``data`` bundle).

    ``param_groups`` (list or callable of the model) replaces the default groups; each group's
    lr follows the schedule as a multiple of its own base lr. ``step_metrics(logits, y)`` adds
    batch-mean tensors to the logged train metrics (it must not sync with the host).
    Hooks may freeze or unfreeze parameters (all of them are in the optimiser from the start);
    with hooks, ``cuda_graphs="auto"`` stays off, as a recorded graph would not see such
    changes (pass ``cuda_graphs=True`` for hooks that only observe).
    Under torchrun, ``config.batch_size`` and ``config.lr`` are for the global batch.
    """
    dist, owns_group = distributed.setup(config.device)
    try:
        with RunLock(config.out_dir) if dist.main else contextlib.nullcontext():
            if dist.main:
                remove_stale_temps(config.out_dir)  # left by a write that a kill -9 cut short
            return _train(config, dist, model, data, list(callbacks), param_groups, step_metrics)
    finally:
        if owns_group:
            distributed.cleanup(dist)


def _train(config, dist, model, data, callbacks, param_groups, step_metrics) -> TrainResult:
    out = Path(config.out_dir)
    last_path, best_path = out / "last.pt", out / "best.pt"
    ckpt = resume_checkpoint(config, last_path, dist.device, RESUMABLE)
    trackers = tracker_callbacks(config.log, out, config)  # a missing package fails first
    seed_all(config.seed)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    if model is None:  # a misspelt name fails before the data is read
        from ..models import model_info

        model_info(config.model)
    if data is None:
        from ..data import open_data

        data = open_data(config.data, val_size=config.val_size, seed=config.seed,
                         root=config.data_root, on_bad=config.on_bad)  # fmt: skip
    check_classes(data, config.class_weights)
    if model is None:
        from ..models import create_model

        model = create_model(config.model, num_classes=len(data.classes),
                             in_channels=data.in_channels, pretrained=config.pretrained or False,
                             **config.model_options)  # fmt: skip
    if config.activation_checkpointing:  # the same math, less memory: see Backbone
        if not hasattr(model, "set_grad_checkpointing"):
            raise ResnetlabError(
                "activation_checkpointing needs a model with set_grad_checkpointing() (every "
                f"resnetlab network); {type(model).__name__} has none: set it to false."
            )
        model.set_grad_checkpointing(True)
    plan = make_plan(config, dist, model, hooked=bool(callbacks), image_size=data.image_size)
    preprocess = preprocess_for(config, data.train)
    loaders = make_loaders(config, data, dist, plan, preprocess)
    bpe, max_iters = len(loaders["train"]), config.total_iters(len(loaders["train"]))
    if plan.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    fmt = torch.channels_last if plan.channels_last else torch.preserve_format
    model.to(dist.device, memory_format=fmt).train()
    if dist.device.type == "cuda":
        torch.backends.cudnn.benchmark = not config.deterministic
    tensor_lr = dist.device if plan.cuda_graphs else None
    optimizer = build_optimizer(config, model, param_groups, lr_tensor_device=tensor_lr)
    ema = EMA(model, config.ema) if config.ema else None
    meters = Meters(dist.device, 0)
    state = TrainState(config, model, optimizer, dist, out, max_iters, bpe, ema=ema)
    best = math.inf
    if ckpt is not None:
        best = restore(ckpt, model, optimizer, ema, meters, tensor_lr)
        state.step, state.elapsed_s = ckpt["step"], float(ckpt.get("elapsed_s", 0.0))
        set_rng_state(ckpt["rng"])
    writer = None
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        writer = MetricsWriter(out, keep_until_step=state.step if ckpt else -1)
        resolved = {"max_iters": max_iters, "batches_per_epoch": bpe, "plan": asdict(plan)}
        write_json(out / "config.json", {**config.to_dict(), "resolved": resolved})
        facts = run_facts(config, data, model, dist, plan)
        if ckpt is not None and (out / "run.json").is_file():
            now = {"step": state.step, "at": facts["started"], "machine": facts["machine"]}
            facts = {**json.loads((out / "run.json").read_text()), "plan": facts["plan"]}
            facts["resumed"] = [*facts.get("resumed", []), now]
        write_json(out / "run.json", {**facts, "status": "running"})

    forward = distributed.wrap(model, dist)
    forward = torch.compile(forward) if plan.compile else forward
    weight = torch.tensor(config.class_weights, device=dist.device) if config.class_weights \
        else None  # fmt: skip
    criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)
    autocast = torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=plan.bf16,
                              cache_enabled=not plan.cuda_graphs)  # fmt: skip

    def body(x: torch.Tensor, y: torch.Tensor) -> None:  # one update, no host sync
        with autocast:
            logits = forward(x).float()
        loss = criterion(logits, y)
        loss.backward()
        if config.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip, foreach=True)
        optimizer.step()
        meters.add(loss, logits, y, step_metrics(logits, y) if step_metrics else None)
        if ema is not None:
            ema.update(model)

    def step_fn(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        body(x, y)

    batches = batches_from(loaders["train"], state.step)
    meters.step.fill_(state.step)
    if plan.cuda_graphs:
        x0, y0 = next(batches)

        def extra() -> list[torch.Tensor]:  # EMA first: meters may add sums at the end
            return (list(ema.state_dict().values()) if ema else []) + meters.tensors()

        step_fn = capture_step(body, model, optimizer, extra, (x0, y0))
        batches = chain((x0, y0), batches)

    def save(path: Path) -> None:
        bad = meters.bad_step(dist)
        if bad is not None:
            _diverged(bad, state, last_path, bar, writer)
        broken = non_finite_entries(model.state_dict(), ema.state_dict() if ema else None)
        if distributed.any_rank(bool(broken), dist):
            _diverged(state.step - 1, state, last_path, bar, writer, broken)
        if dist.main:
            save_checkpoint(training_payload(state, meters, best, preprocess, data.classes), path)

    callbacks = [*callbacks, *trackers]  # after make_plan: trackers only observe (CUDA graphs)
    for cb in callbacks:  # may freeze parts, put modules in eval mode, change param groups
        cb.on_start(state)
    bar = progress_bar(max_iters, state.step, config.progress and dist.main)
    interval = (time.perf_counter(), state.step)
    clock = time.perf_counter() - state.elapsed_s
    with _CtrlC() as ctrl_c, _status_on_failure(writer, out):
        while state.step < max_iters and not state.stop:
            x, y = next(batches)
            set_lr(optimizer, lr_at(config, state.step, max_iters) / config.lr)
            step_fn(x, y)
            state.step += 1
            state.elapsed_s = time.perf_counter() - clock
            bar.update(1)
            for cb in callbacks:
                cb.on_step(state)
            end = state.step == max_iters or state.stop
            if state.step % config.log_every == 0 or end:
                record = _log_record(state, meters, interval, bar, last_path, writer)
                interval = (time.perf_counter(), state.step)
                for cb in callbacks:
                    cb.on_log(state, record)
            if state.step % config.eval_every == 0 or end:
                distributed.broadcast_buffers(model, dist)
                record = eval_record(state, loaders, plan)
                if "val_error" in record and record["val_error"] < best:
                    best = record["val_error"]
                    save(best_path)
                if math.isfinite(best):
                    record["best_val_error"] = best
                if writer:
                    writer.write(record)
                state.last_eval = record
                for cb in callbacks:
                    cb.on_eval(state, record)
                interval = (time.perf_counter(), state.step)
            if state.step % config.checkpoint_every == 0 or end:
                save(last_path)
            stop_now = ctrl_c.hit if not dist.enabled else (
                state.step % config.log_every == 0 and distributed.any_rank(ctrl_c.hit, dist)
            )  # fmt: skip
            if stop_now:
                distributed.broadcast_buffers(model, dist)
                save(last_path)
                bar.close()
                _finish(writer, out, f"interrupted at step {state.step}")
                print(f"interrupted: checkpoint {last_path} (step {state.step}); continue "
                      "with --resume", file=sys.stderr)  # fmt: skip
                raise KeyboardInterrupt
    bar.close()
    distributed.broadcast_buffers(model, dist)
    if state.step < max_iters:  # stopped early by a hook: keep its state
        save(last_path)
    train_metrics = next((r for r in reversed(writer.records) if r["kind"] == "train"), {}) \
        if writer else {}  # fmt: skip
    metrics = {**{f"train_{k}": v for k, v in train_metrics.items() if k in ("loss", "error")},
               **{k: v for k, v in state.last_eval.items() if k not in ("kind",)}}  # fmt: skip
    result = TrainResult(out, last_path, best_path if best_path.exists() else None, metrics,
                         state.step, model)  # fmt: skip
    _finish(writer, out, "completed" if state.step >= max_iters else "stopped by a hook")
    for cb in callbacks:
        cb.on_end(state, result)
    return result


def _log_record(state, meters, interval, bar, last_path, writer) -> dict[str, Any]:
    """Read the device sums (the one sync per interval), stop on NaN/Inf, write a record."""
    bad = meters.bad_step(state.dist)
    if bad is not None:
        _diverged(bad, state, last_path, bar, writer)
    values = meters.read(state.dist)
    seconds = max(time.perf_counter() - interval[0], 1e-9)
    record = {
        "kind": "train",
        "step": state.step,
        "epoch": round(state.epoch, 4),
        "lr": lr_at(state.config, state.step - 1, state.max_iters),
        **values,
        "images_per_s": (state.step - interval[1]) * state.config.batch_size / seconds,
        "time_s": round(state.elapsed_s, 3),
    }
    bar.set_postfix(loss=f"{record['loss']:.4f}", err=f"{100 * record['error']:.1f}%",
                    lr=f"{record['lr']:.3g}", refresh=False)  # fmt: skip
    if writer:
        writer.write(record)
    return record


def _diverged(bad: int, state: TrainState, last_path: Path, bar, writer,
              broken: Sequence[str] = ()) -> None:  # fmt: skip
    """Stop on NaN/Inf (in the loss, or in a weight or buffer about to be saved)."""
    bar.close()
    kept = f"the last good checkpoint {last_path} is kept" if last_path.exists() else (
        "no checkpoint was saved before it"
    )  # fmt: skip
    lr = lr_at(state.config, bad, state.max_iters)
    what = f"the loss became NaN/Inf at step {bad + 1}" if not broken else (
        f"{len(broken)} weight(s)/buffer(s) became NaN/Inf by step {bad + 1} (first: "
        f"{broken[0]})"
    )  # fmt: skip
    message = (
        f"training diverged: {what} (lr {lr:g}); stopped, "
        f"{kept}. Lower the lr, add warm-up or set grad_clip."
    )
    _finish(writer, state.out_dir, message)
    raise TrainingDiverged(message)


@contextlib.contextmanager
def _status_on_failure(writer: MetricsWriter | None, out: Path):
    """Record an unexpected error as the run's status, so run.json never claims "running"."""
    try:
        yield
    except (KeyboardInterrupt, TrainingDiverged):
        raise
    except Exception as exc:
        _finish(writer, out, f"failed: {type(exc).__name__}: {exc}")
        raise


def _finish(writer: MetricsWriter | None, out: Path, status: str) -> None:
    """Record how the run ended in ``run.json`` (rank 0 only)."""
    if writer is None or not (out / "run.json").is_file():
        return
    facts = json.loads((out / "run.json").read_text())
    write_json(out / "run.json", {**facts, "status": status})


class _CtrlC:
    """Turns the first Ctrl-C (or SIGTERM, as a scheduler sends before it kills a job) into a
    flag checked between steps, so the run saves and stops; a second Ctrl-C stops at once."""

    def __enter__(self) -> _CtrlC:
        self.hit, self.previous, self.previous_term = False, None, None
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            self.previous = signal.signal(signal.SIGINT, self._handle)
            self.previous_term = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.hit = True
        signal.signal(signal.SIGINT, self.previous or signal.default_int_handler)

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        if self.previous_term is not None:
            signal.signal(signal.SIGTERM, self.previous_term)
