"""Optimisers, learning-rate schedules as pure functions of the step, and a weight EMA.

The schedule is a multiplier of each parameter group's base lr, computed from the iteration
number and the run's length alone (unset multistep milestones scale with the length), so
resuming needs no scheduler state and a CUDA graph can read the lr from a device tensor that is
updated in place.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import ResnetlabError
from .config import TrainConfig

ParamGroups = list[dict[str, Any]] | Callable[[nn.Module], list[dict[str, Any]]]


def default_param_groups(model: nn.Module, no_decay_bn_bias: bool) -> list[dict[str, Any]]:
    """All parameters (frozen ones too, so a later unfreeze needs no new optimiser).

    With ``no_decay_bn_bias`` the 1-D parameters (BatchNorm weights/biases, layer biases) get
    ``weight_decay=0``; everything else uses the configured decay.
    """
    params = list(model.parameters())
    if not no_decay_bn_bias:
        return [{"params": params}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def _fusable(groups: list[dict[str, Any]]) -> bool:
    """Whether PyTorch's fused SGD/AdamW kernels take these parameters (CPU or CUDA floats)."""
    params = [p for g in groups for p in g["params"]]
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)


def build_optimizer(
    config: TrainConfig,
    model: nn.Module,
    param_groups: ParamGroups | None = None,
    *,
    lr_tensor_device: torch.device | None = None,
) -> torch.optim.Optimizer:
    """The configured optimiser over ``param_groups`` (a list, a callable of the model, or None).

    A group may set its own ``lr``: the schedule scales every group's base lr by the same
    factor. The fused (single-kernel) implementation is used wherever PyTorch has one for the
    parameters' device: it is the fastest on CUDA and on the CPU, and graph-capturable. With
    ``lr_tensor_device`` the lr of every group is a 0-d tensor on that device, as CUDA-graph
    capture requires.
    """
    groups = param_groups(model) if callable(param_groups) else param_groups
    groups = groups if groups is not None else default_param_groups(model, config.no_decay_bn_bias)
    groups = [dict(g, params=list(g["params"])) for g in groups]
    if not any(g["params"] for g in groups):
        raise ResnetlabError("the optimiser got no parameters; pass param groups that hold some.")
    fused = lr_tensor_device is not None or _fusable(groups)
    if config.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            groups,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
            fused=fused,
        )
    else:
        optimizer = torch.optim.AdamW(
            groups,
            lr=config.lr,
            betas=config.betas,
            weight_decay=config.weight_decay,
            fused=fused,
            capturable=lr_tensor_device is not None,  # Adam refuses capture without it
        )
    for group in optimizer.param_groups:
        group["base_lr"] = float(group["lr"])
        if lr_tensor_device is not None:
            group["lr"] = torch.tensor(group["base_lr"], device=lr_tensor_device)
    fill_momentum_buffers(optimizer)
    return optimizer


@torch.no_grad()
def fill_momentum_buffers(optimizer: torch.optim.Optimizer) -> None:
    """Give every SGD parameter a zero momentum buffer where it has none.

    Fused SGD fails when some parameters have a buffer and others (frozen until now) do not;
    with no dampening, a zero buffer gives exactly the first step PyTorch would take.
    """
    if not isinstance(optimizer, torch.optim.SGD):
        return
    for group in optimizer.param_groups:
        if group["momentum"] == 0 or group["dampening"] != 0:
            continue
        for p in group["params"]:
            state = optimizer.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def lr_at(config: TrainConfig, step: int, max_iters: int) -> float:
    """The learning rate used by update number ``step`` (0-based) for base lr ``config.lr``."""
    warm = config.warmup_iters
    if step < warm:
        if config.warmup == "constant":
            return config.warmup_lr
        target = _main_lr(config, warm, max_iters)
        return config.warmup_lr + (target - config.warmup_lr) * step / warm
    return _main_lr(config, step, max_iters)


def _main_lr(config: TrainConfig, step: int, max_iters: int) -> float:
    lr = config.lr
    if config.schedule == "constant":
        return lr
    if config.schedule == "multistep":
        return lr * config.gamma ** sum(step >= m for m in config.milestones_at(max_iters))
    if config.schedule == "cosine":
        span = max(1, max_iters - config.warmup_iters)
        t = min(1.0, (step - config.warmup_iters) / span)
        return config.min_lr + (lr - config.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
    # onecycle, as torch.optim.lr_scheduler.OneCycleLR (cosine, div 25, final div 1e4)
    start, low = lr / 25.0, lr / 25.0 / 1e4
    peak_at = float(config.onecycle_pct * max_iters) - 1
    if step <= peak_at:
        return _cos(start, lr, step / peak_at if peak_at > 0 else 1.0)
    return _cos(lr, low, min(1.0, (step - peak_at) / max(1e-12, max_iters - 1 - peak_at)))


def _cos(start: float, end: float, t: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * t) + 1.0)


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Set every group's lr to ``base_lr * factor`` (in place when the lr is a device tensor)."""
    for group in optimizer.param_groups:
        value = group["base_lr"] * factor
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(value)
        else:
            group["lr"] = value


class EMA:
    """An exponential moving average of the weights (buffers are copied), for evaluation."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_params: list[torch.Tensor] = list(self.module.parameters())
        params: list[torch.Tensor] = list(model.parameters())
        torch._foreach_lerp_(ema_params, params, 1.0 - self.decay)
        for ema_buffer, buffer in zip(self.module.buffers(), model.buffers(), strict=True):
            ema_buffer.copy_(buffer)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
