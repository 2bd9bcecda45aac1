"""Theoretical and measured receptive fields, and the arithmetic of stacked 3×3 convolutions.

The theoretical field walks the conv/pool layers in forward order along the main (residual
branch) path, which has the largest field: r_out = r_in + (k-1)·j_in and j_out = j_in·s, where
r is the field and j the jump (input pixels between adjacent outputs).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ResnetlabError
from ..models.base import Backbone
from ..models.blocks import PadShortcut

GEOMETRY_LAYERS = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


@dataclass(frozen=True)
class RFLayer:
    """One conv or pool layer on the main path, with the field after it."""

    name: str
    kind: str
    kernel: int
    stride: int
    padding: int
    dilation: int
    jump: int
    rf: int
    out_size: int
    stage: str
    start: float  # input-pixel coordinate of the first output's field centre

    def as_dict(self) -> dict:
        return asdict(self)


def _pair_first(value: int | tuple[int, ...]) -> int:
    return value[0] if isinstance(value, tuple) else int(value)


def _stage_of(model: nn.Module) -> dict[int, str]:
    """id(module) -> stage name, from ``stage_modules()`` when the model has it."""
    stages: dict[int, str] = {}
    if not isinstance(model, Backbone):
        return stages
    for stage, modules in model.stage_modules().items():
        for module in modules:
            for sub in module.modules():
                stages.setdefault(id(sub), stage)
    return stages


def _in_channels(model: nn.Module) -> int:
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise ResnetlabError("the model has no Conv2d layer, so it has no receptive field.")
    return first.in_channels


def _main_path(model: nn.Module, input_size: int) -> list[tuple[str, nn.Module, int]]:
    """(name, module, output size) of the conv/pool layers off the shortcuts, in run order."""
    order: list[tuple[str, nn.Module, int]] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, GEOMETRY_LAYERS) and "downsample" not in name:

            def hook(mod, args, output, name=name):
                order.append((name, mod, int(output.shape[-1])))

            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, _in_channels(model), input_size, input_size))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return order


def receptive_field_table(model: nn.Module, input_size: int = 224) -> list[RFLayer]:
    """The theoretical receptive field after every conv/pool layer on the main path."""
    stages = _stage_of(model)
    rf, jump, start = 1, 1, 0.0
    rows: list[RFLayer] = []
    module: Any  # a conv or pool layer: its geometry is read by name
    for name, module, out_size in _main_path(model, input_size):
        kernel = _pair_first(module.kernel_size)
        stride = _pair_first(module.stride)
        dilation = _pair_first(getattr(module, "dilation", 1))
        padding = _pair_first(module.padding)
        rf += dilation * (kernel - 1) * jump
        start += (dilation * (kernel - 1) / 2 - padding) * jump
        jump *= stride
        kind = "conv" if isinstance(module, nn.Conv2d) else type(module).__name__.lower()
        # a layer outside every stage (the ResNet max-pool) belongs to the stage before it
        stage = stages.get(id(module)) or (rows[-1].stage if rows else "")
        rows.append(
            RFLayer(name, kind, kernel, stride, padding, dilation, jump, rf, out_size, stage, start)
        )
    return rows


def stage_summary(table: list[RFLayer]) -> list[dict]:
    """The field, jump and output size at the end of each stage."""
    last: dict[str, RFLayer] = {}
    for row in table:
        last[row.stage or "(none)"] = row
    return [
        {"stage": s, "last_layer": r.name, "rf": r.rf, "jump": r.jump, "out_size": r.out_size}
        for s, r in last.items()
    ]


def stacked_3x3(k: int, channels: int | None = None) -> dict:
    """k stacked 3×3 convs vs one (2k+1)×(2k+1) conv: same field, 9k vs (2k+1)² weights per C².

    With ``channels`` C the weight counts are multiplied by C² (no biases). The stack also has
    k ReLUs instead of one (Simonyan & Zisserman 2014, §2.3).
    """
    if k < 1:
        raise ResnetlabError(f"the number of stacked convs must be at least 1, got {k}.")
    c2 = channels * channels if channels else 1
    single = (2 * k + 1) ** 2
    return {
        "convs": k,
        "rf": 2 * k + 1,
        "stacked_weights": 9 * k * c2,
        "single_weights": single * c2,
        "weights_ratio": 9 * k / single,
        "relus_stacked": k,
        "relus_single": 1,
        "per": "C^2" if channels is None else f"C={channels}",
    }


class _Subsample(nn.Module):
    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride]


def geometry_copy(model: nn.Module) -> nn.Module:
    """A float64 copy with one channel everywhere and positive averaging weights.

    Every conv keeps its kernel, stride, padding and dilation; max-pools become average pools
    of the same shape (so gradients reach every input of the window); norms and linear layers
    become identities.
    The input gradient of one output pixel then covers exactly that pixel's receptive field.
    """
    # share nothing and copy no weights: every parameterised layer is replaced below
    memo = {id(p): nn.Parameter(torch.empty(0), requires_grad=False) for p in model.parameters()}
    clone = copy.deepcopy(model, memo).double().eval()
    for parent in list(clone.modules()):
        for child_name, child in list(parent.named_children()):
            new: nn.Module | None = None
            if isinstance(child, nn.Conv2d):
                geometry: dict[str, Any] = {
                    "kernel_size": child.kernel_size,
                    "stride": child.stride,
                    "padding": child.padding,
                    "dilation": child.dilation,
                }
                new = nn.Conv2d(1, 1, **geometry, bias=False).double()
                nn.init.constant_(new.weight, 1.0 / new.weight.numel())
            elif isinstance(child, nn.MaxPool2d):
                new = nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode)
            elif isinstance(child, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.Linear):
                new = nn.Identity()  # norms are affine per channel: no effect on the field
            elif isinstance(child, PadShortcut):
                new = _Subsample(child.stride)
            if new is not None:
                setattr(parent, child_name, new)
    return clone


class _Stop(Exception):
    pass


def _output_of(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """Run the model until ``layer`` and return its output (the rest of the net is skipped)."""
    captured: list[torch.Tensor] = []

    def hook(module, args, output):
        captured.append(output)
        raise _Stop

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not captured:
        raise ResnetlabError(f"layer {layer!r} was not run by the model's forward pass.")
    return captured[0]


def measured_receptive_field(model: nn.Module, input_size: int, layer: str | None = None) -> int:
    """The field of the centre output pixel after ``layer``, measured from input gradients.

    Independent of ``receptive_field_table``: it runs the model's own forward code on a
    ``geometry_copy`` and counts the input rows the gradient reaches.
    """
    layer = layer or receptive_field_table(model, input_size)[-1].name
    geo = geometry_copy(model)
    x = torch.ones(1, 1, input_size, input_size, dtype=torch.float64, requires_grad=True)
    out = _output_of(geo, layer, x)
    centre = out.shape[-1] // 2
    (grad,) = torch.autograd.grad(out[0, :, centre, centre].sum(), x)
    rows = (grad[0, 0].abs() > 0).any(dim=1).nonzero().flatten()
    first, last = int(rows.min()), int(rows.max())
    if first == 0 or last == input_size - 1:
        raise ResnetlabError(
            f"the field of {layer} reaches the border of a {input_size}-px input, so it cannot "
            "be measured. Use a larger input size."
        )
    return last - first + 1


def effective_receptive_field(
    model: nn.Module, input_size: int, layer: str | None = None, samples: int = 4, seed: int = 0
) -> torch.Tensor:
    """|∂y_centre/∂x| summed over channels, averaged over random inputs, scaled to max 1.

    The effective receptive field of Luo et al. 2016, for the model as it is (e.g. at init).
    """
    layer = layer or receptive_field_table(model, input_size)[-1].name
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    total = torch.zeros(input_size, input_size)
    try:
        for _ in range(samples):
            x = torch.randn(1, _in_channels(model), input_size, input_size, generator=generator)
            x.requires_grad_(True)
            out = _output_of(model, layer, x)
            centre = out.shape[-1] // 2
            (grad,) = torch.autograd.grad(out[0, :, centre, centre].sum(), x)
            total += grad[0].abs().sum(dim=0)
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return total / total.max().clamp_min(1e-30)
