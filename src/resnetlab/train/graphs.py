"""CUDA-graph capture of one whole training step (forward, backward, optimiser step).

Small CIFAR nets spend most of a step launching kernels; replaying a recorded graph removes
that cost. The engine's own ``train_step(run, x, y)`` is what gets recorded, and the replay is
called the same way, so the loop reads the same with or without a graph. Requirements, all met
by the engine when it asks for capture: static input buffers (the loader's batches are copied
into them), a fused optimiser whose lr is a device tensor updated in place, no host
synchronisation inside the step (the loss is accumulated on the device), and the same shapes
every step (the training loader drops the last partial batch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn


class StepParts(Protocol):
    """What capture needs of the run a step trains: its model and optimiser."""

    model: nn.Module
    optimizer: torch.optim.Optimizer


Step = Callable[[Any, torch.Tensor, torch.Tensor], None]


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[tuple[dict, str, torch.Tensor]]:
    return [
        (state, key, value)
        for state in optimizer.state.values()
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
    ]


class CapturedStep:
    """A recorded step; ``captured(run, x, y)`` copies the batch in and replays the graph."""

    def __init__(self, graph: torch.cuda.CUDAGraph, run: StepParts, static_x: torch.Tensor,
                 static_y: torch.Tensor) -> None:  # fmt: skip
        self.graph, self.run, self.static_x, self.static_y = graph, run, static_x, static_y

    def __call__(self, run: StepParts, x: torch.Tensor, y: torch.Tensor) -> None:
        if run is not self.run:
            raise ValueError("a captured step replays only the run it was recorded on")
        self.static_x.copy_(x, non_blocking=True)
        self.static_y.copy_(y, non_blocking=True)
        self.graph.replay()


def capture_step(
    step: Step,
    run: StepParts,
    example: tuple[torch.Tensor, torch.Tensor],
    extra_state: Callable[[], list[torch.Tensor]],
    warmup_steps: int = 3,
) -> CapturedStep:
    """Record ``step(run, x, y)`` (which may zero gradients only by setting them to None) and
    return its replay, called the same way.

    The warm-up steps needed before capture run on a side stream and are then undone: the
    weights, BatchNorm statistics, optimiser state and ``extra_state()`` (EMA weights, device
    meters) are restored, so the first replayed step is the run's next real step. Tensors that
    ``extra_state()`` lists only after the warm-up (sums created on first use) start at zero.
    """
    model, optimizer = run.model, run.optimizer
    static_x, static_y = example[0].clone(), example[1].clone()
    saved_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
    saved_optim = {(id(s), k): v.clone() for s, k, v in _optimizer_tensors(optimizer)}
    saved_extra = [t.clone() for t in extra_state()]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup_steps):
            step(run, static_x, static_y)
    torch.cuda.current_stream().wait_stream(side)

    with torch.no_grad():
        model.load_state_dict(saved_model)
        for state, key, value in _optimizer_tensors(optimizer):
            saved = saved_optim.get((id(state), key))
            if saved is None:  # state created by the warm-up: a fresh optimiser has zeros
                value.zero_()
            else:
                value.copy_(saved)
        for i, tensor in enumerate(extra_state()):
            if i < len(saved_extra):
                tensor.copy_(saved_extra[i])
            else:
                tensor.zero_()

    # Gradients must be None at capture: backward then allocates them inside the graph's pool
    # and every replay overwrites them, which is the zeroing an eager step does (the step's own
    # zero_grad(set_to_none=True) is host-side only and records nothing).
    optimizer.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(run, static_x, static_y)
    return CapturedStep(graph, run, static_x, static_y)
