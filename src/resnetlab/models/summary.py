"""Parameter and multiply-accumulate counts, per stage and in total.

MACs are counted with forward hooks on convolutions and linear layers (output elements ×
input channels per group × kernel area), the convention behind torchvision's "GFLOPS".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def _layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() // output.shape[0] * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    return 0


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, ...]) -> dict[nn.Module, int]:
    """MACs of one image's forward pass, per Conv2d/Linear module."""
    macs: dict[nn.Module, int] = {}
    hooks = [
        m.register_forward_hook(lambda mod, _inp, out: macs.__setitem__(mod, _layer_macs(mod, out)))
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros(1, *input_size, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return macs


@dataclass
class StageRow:
    """One line of a model summary."""

    name: str
    output_shape: tuple[int, ...]
    params: int
    trainable: int
    macs: int


@torch.no_grad()
def summarize(model: nn.Module, input_size: tuple[int, ...]) -> list[StageRow]:
    """Per-stage output shape, parameters and MACs for a resnetlab model, then a total row."""
    stage_modules: Any = model.stage_modules  # every resnetlab model has one
    stages = stage_modules()
    macs = count_macs(model, input_size)
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, modules in stages.items():
        last = modules[-1]
        hooks.append(
            last.register_forward_hook(
                lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:]))
            )
        )
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros(1, *input_size, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    rows = []
    for name, modules in stages.items():
        params = [p for m in modules for p in m.parameters()]
        stage_macs = sum(macs.get(sub, 0) for m in modules for sub in m.modules())
        rows.append(
            StageRow(
                name,
                shapes.get(name, ()),
                sum(p.numel() for p in params),
                sum(p.numel() for p in params if p.requires_grad),
                stage_macs,
            )
        )
    total, trainable = count_parameters(model)
    rows.append(StageRow("total", rows[-1].output_shape, total, trainable, sum(macs.values())))
    return rows


def format_count(n: float) -> str:
    """1234567 -> '1.23M'; keeps tables short."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))
