"""Evaluation: loss and error of a model over a loader, and the engine's eval records.

The engine evaluates an inference copy of the model (BatchNorm folded into the convolutions,
in the run's memory layout): the same outputs to rounding, faster, and the training model is
left untouched.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ResnetlabError
from ..models.inference import optimize_for_inference


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, *, bf16: bool = False) -> dict[str, float]:
    """Mean cross-entropy, error and accuracy (fractions) of ``model`` over ``loader``.

    A loader sharded over ranks (``world_size > 1``) is summed over all of them.
    """
    device = next(model.parameters()).device
    modes = [m.training for m in model.modules()]  # a fine-tuner may keep some parts in eval
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for x, y in loader.epoch(0):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x).float()
        sums[0] += F.cross_entropy(logits, y, reduction="sum")
        sums[1] += (logits.argmax(1) != y).sum()
        sums[2] += y.shape[0]
    if getattr(loader, "world_size", 1) > 1 and torch.distributed.is_initialized():
        torch.distributed.all_reduce(sums)
    for module, mode in zip(model.modules(), modes, strict=True):
        module.training = mode
    loss, errors, n = sums.tolist()
    return {"loss": loss / n, "error": errors / n, "accuracy": 1.0 - errors / n, "n": int(n)}


def inference_copy(model: nn.Module, channels_last: bool) -> nn.Module:
    """The model with BatchNorm folded (torch: its weights change at every evaluation, so an
    export per evaluation would cost more than it saves), or the model itself when it cannot be
    traced."""
    try:
        return optimize_for_inference(model, channels_last, engine="torch")
    except ResnetlabError:
        return model


def eval_record(state: Any, loaders: dict, plan: Any) -> dict[str, Any]:
    """Loss and error of the model (and its EMA) on every evaluated split, as a metrics record."""
    record: dict[str, Any] = {"kind": "eval", "step": state.step, "epoch": round(state.epoch, 4)}
    splits = [split for split in state.config.eval_splits if split in loaders]
    if not splits:
        return record
    models = [("", state.model)] + ([("ema_", state.ema.module)] if state.ema else [])
    models = [(prefix, inference_copy(m, plan.channels_last)) for prefix, m in models]
    for split in splits:
        for prefix, model in models:
            result = evaluate(model, loaders[split], bf16=plan.bf16)
            record[f"{prefix}{split}_loss"] = result["loss"]
            record[f"{prefix}{split}_error"] = result["error"]
    return record
