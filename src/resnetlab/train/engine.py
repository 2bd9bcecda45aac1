"""The one training loop behind ``resnetlab train``, the experiments and the fine-tuner.

``train`` prepares a :class:`~resnetlab.train.setup.Run` once, then loops. A step is
:func:`train_step`: zero the gradients, forward (bf16 autocast on CUDA), cross-entropy,
backward, optional gradient clip, optimiser step, device-side sums, EMA update; on CUDA small
nets replay that same function recorded as one CUDA graph. Every ``log_every`` steps the sums
are read (the only host sync), every ``eval_every`` the model is evaluated, every
``checkpoint_every`` the state is saved atomically. Anything else (freezing phases, extra
measurements, early stops) comes from :class:`Callback` hooks, ``param_groups`` and
``step_metrics``, never a second loop.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import runfolder
from ..card import WEIGHTS, save_artifact, train_card
from ..files import RunLock, remove_stale_temps
from ..weights.io import load_checkpoint
from . import distributed
from .checkpoint import non_finite_entries, save_checkpoint, training_payload
from .config import TrainConfig
from .evaluation import eval_record
from .graphs import capture_step
from .optim import ParamGroups, lr_at, set_lr
from .prepare import batches_from, chain
from .progress import Progress
from .setup import RESUMABLE, Run, StepMetrics, open_run_folder, prepare
from .state import Callback, TrainingDiverged, TrainResult, TrainState

__all__ = ["RESUMABLE", "Callback", "TrainResult", "TrainState", "TrainingDiverged", "train",
           "train_step"]  # fmt: skip


def train(
    config: TrainConfig,
    *,
    model: nn.Module | None = None,
    data: Any = None,
    callbacks: Sequence[Callback] = (),
    param_groups: ParamGroups | None = None,
    step_metrics: StepMetrics | None = None,
    artifact: bool = True,
) -> TrainResult:
    """Train ``config.model`` (or ``model``) on ``config.data`` (or the ``data`` bundle); a
    finished run ends with its artefact, ``model.safetensors`` + ``model_card.json`` of
    ``best.pt`` (else ``last.pt``), unless ``artifact`` is False (a recipe that writes its own).

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
            run = prepare(config, dist, model, data, list(callbacks), param_groups, step_metrics)
            run.artifact = artifact
            with _CtrlC() as signals, _status_on_failure(run):
                open_run_folder(run)
                return _loop(run, signals)
    finally:
        if owns_group:
            distributed.cleanup(dist)


def train_step(run: Run, x: torch.Tensor, y: torch.Tensor) -> None:
    """One update on the batch ``(x, y)``, with no host sync (so it can be a CUDA graph)."""
    run.optimizer.zero_grad(set_to_none=True)
    with run.autocast:
        logits = run.forward(x).float()
    loss = run.criterion(logits, y)
    loss.backward()
    if run.config.grad_clip:
        nn.utils.clip_grad_norm_(run.model.parameters(), run.config.grad_clip, foreach=True)
    run.optimizer.step()
    run.meters.add(loss, logits, y, run.step_metrics(logits, y) if run.step_metrics else None)
    if run.ema is not None:
        run.ema.update(run.model)


def _loop(run: Run, signals: _CtrlC) -> TrainResult:
    """Step until the run's length, a hook's stop or a signal; log, evaluate, checkpoint."""
    config, state, callbacks = run.config, run.state, run.callbacks
    batches = _batches(run)  # records the CUDA graph first when the plan has one
    for cb in callbacks:  # may freeze parts, put modules in eval mode, change param groups
        cb.on_start(state)
    mode = ("bar" if config.progress else "lines") if run.dist.main else "off"
    progress = Progress(state.max_iters, state.step, mode)
    interval = (time.perf_counter(), state.step)
    clock = time.perf_counter() - state.elapsed_s
    while state.step < state.max_iters and not state.stop:
        x, y = next(batches)
        lr = lr_at(config, state.step, state.max_iters)
        set_lr(run.optimizer, lr / config.lr)
        if run.graph is not None:
            run.graph(run, x, y)  # train_step, replayed from its recording
        else:
            train_step(run, x, y)
        state.step += 1
        state.elapsed_s = time.perf_counter() - clock
        progress.step(run.meters, lr, state.last_eval)
        for cb in callbacks:
            cb.on_step(state)
        end = state.step == state.max_iters or state.stop
        if state.step % config.log_every == 0 or end:
            record = _log_record(run, interval, progress)
            interval = (time.perf_counter(), state.step)
            with progress.writing():
                for cb in callbacks:
                    cb.on_log(state, record)
        if state.step % config.eval_every == 0 or end:
            _evaluate(run, progress)
            interval = (time.perf_counter(), state.step)
        if state.step % config.checkpoint_every == 0 or end:
            _save(run, run.last_path, progress)
        if signals.stop_now(run):
            _interrupted(run, progress)
    progress.close()
    return _end(run, progress)


def _batches(run: Run) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The training batches from the run's step on; with CUDA graphs, records the step first."""
    batches = batches_from(run.loaders["train"], run.state.step)
    run.meters.step.fill_(run.state.step)
    if not run.plan.cuda_graphs:
        return batches
    first = next(batches)

    def extra() -> list[torch.Tensor]:  # EMA first: meters may add sums at the end
        return (list(run.ema.state_dict().values()) if run.ema else []) + run.meters.tensors()

    run.graph = capture_step(train_step, run, first, extra)
    return chain(first, batches)


def _log_record(run: Run, interval: tuple[float, int], progress: Progress) -> dict[str, Any]:
    """Read the device sums (the one sync per interval), stop on NaN/Inf, write a record."""
    state = run.state
    bad = run.meters.bad_step(state.dist)
    if bad is not None:
        _diverged(run, bad, progress)
    values = run.meters.read(state.dist)
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
    if run.writer:
        run.writer.write(record)
    progress.logged(record, state.last_eval)
    return record


def _evaluate(run: Run, progress: Progress) -> None:
    """Evaluate every split (and the EMA), keep the best checkpoint, record, call the hooks."""
    distributed.broadcast_buffers(run.model, run.dist)
    record = eval_record(run.state, run.loaders, run.plan)
    if "val_error" in record and record["val_error"] < run.best:
        run.best = record["val_error"]
        _save(run, run.best_path, progress)
    if math.isfinite(run.best):
        record["best_val_error"] = run.best
    if run.writer:
        run.writer.write(record)
    run.state.last_eval = record
    with progress.writing():
        for cb in run.callbacks:
            cb.on_eval(run.state, record)


def _save(run: Run, path: Path, progress: Progress) -> None:
    """Checkpoint to ``path`` unless the loss or a weight or buffer went non-finite."""
    state, dist = run.state, run.dist
    bad = run.meters.bad_step(dist)
    if bad is not None:
        _diverged(run, bad, progress)
    broken = non_finite_entries(run.model.state_dict(), run.ema.state_dict() if run.ema else None)
    if distributed.any_rank(bool(broken), dist):
        _diverged(run, state.step - 1, progress, broken)
    if dist.main:
        payload = training_payload(state, run.meters, run.best, run.preprocess, run.data.classes)
        save_checkpoint(payload, path)


def _interrupted(run: Run, progress: Progress) -> None:
    """A Ctrl-C or SIGTERM: save, record the stop, and raise KeyboardInterrupt."""
    distributed.broadcast_buffers(run.model, run.dist)
    _save(run, run.last_path, progress)
    progress.close()
    _finish(run, f"interrupted at step {run.state.step}")
    print(f"interrupted: checkpoint {run.last_path} (step {run.state.step}); continue with "
          "--resume", file=sys.stderr)  # fmt: skip
    raise KeyboardInterrupt


def _end(run: Run, progress: Progress) -> TrainResult:
    """After the last step: sync buffers, keep an early stop's state, record, call on_end."""
    state, writer = run.state, run.writer
    distributed.broadcast_buffers(run.model, run.dist)
    if state.step < state.max_iters:  # stopped early by a hook: keep its state
        _save(run, run.last_path, progress)
    train_metrics = next((r for r in reversed(writer.records) if r["kind"] == "train"), {}) \
        if writer else {}  # fmt: skip
    metrics = {**{f"train_{k}": v for k, v in train_metrics.items() if k in ("loss", "error")},
               **{k: v for k, v in state.last_eval.items() if k not in ("kind",)}}  # fmt: skip
    best = run.best_path if run.best_path.exists() else None
    result = TrainResult(run.out, run.last_path, best, metrics, state.step, run.model)
    if run.dist.main and run.artifact:
        _write_artifact(run)
    _finish(run, "completed" if state.step >= state.max_iters else "stopped by a hook")
    for cb in run.callbacks:
        cb.on_end(state, result)
    return result


def _write_artifact(run: Run) -> None:
    """The run's model as every command opens it: the weights of ``best.pt`` (else
    ``last.pt``) as ``model.safetensors`` and their ``model_card.json``."""
    path = run.best_path if run.best_path.is_file() else run.last_path
    ckpt = load_checkpoint(path)
    card = train_card(run.config.to_dict(), list(run.data.classes), run.preprocess, run.model,
                      max(run.data.image_size))  # fmt: skip
    card["weights"] = {"file": WEIGHTS, "from": path.name, "step": int(ckpt["step"])}
    card["training"] |= {"command": runfolder.command_line(), "steps": run.state.step}
    if math.isfinite(ckpt["best_val_error"]):
        card["metrics"] = {"val": {"accuracy": 1.0 - float(ckpt["best_val_error"]),
                                   "measured_on": f"val, {path.name} at step {ckpt['step']}"}}
    save_artifact(run.out, ckpt["model"], card)


def _diverged(run: Run, bad: int, progress: Progress, broken: Sequence[str] = ()) -> None:
    """Stop on NaN/Inf (in the loss, or in a weight or buffer about to be saved)."""
    progress.close()
    state, last_path = run.state, run.last_path
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
    _finish(run, message)
    raise TrainingDiverged(message)


@contextlib.contextmanager
def _status_on_failure(run: Run) -> Iterator[None]:
    """Record an unexpected end (an error, a second Ctrl-C) as the run's status, so run.json
    never claims "running" for a run that stopped; then tell the hooks (``on_abort``)."""
    try:
        yield
    except BaseException as exc:
        if run.status == "running":
            stopped = f"interrupted at step {run.state.step} before its checkpoint was saved"
            failed = f"failed: {type(exc).__name__}: {exc}"
            _finish(run, stopped if isinstance(exc, KeyboardInterrupt) else failed)
        for cb in run.callbacks:
            with contextlib.suppress(Exception):  # the run's own error is the one to report
                cb.on_abort(run.state, run.status)
        raise


def _finish(run: Run, status: str) -> None:
    """Record how the run ended in ``run.json`` (rank 0 only)."""
    run.status = status
    out = run.out
    if run.writer is None or not (out / runfolder.RUN_FILE).is_file():
        return
    runfolder.finish(out, status)


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

    def stop_now(self, run: Run) -> bool:
        """Whether to stop after this step; under DDP all ranks agree at each log interval."""
        if not run.dist.enabled:
            return self.hit
        at_log = run.state.step % run.config.log_every == 0
        return at_log and distributed.any_rank(self.hit, run.dist)

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        if self.previous_term is not None:
            signal.signal(signal.SIGTERM, self.previous_term)
