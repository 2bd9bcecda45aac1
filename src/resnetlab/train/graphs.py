"""CUDA-graph capture of one whole training step (forward, backward, optimiser step).

Small CIFAR nets spend most of a step launching kernels; replaying a recorded graph removes
that cost. Requirements, all met by the engine when it asks for capture: static input
buffers (the loader's batches are copied into them), a fused optimiser whose lr is a device
tensor updated in place, no host synchronisation inside the step (the loss is accumulated on
the device), and the same shapes every step (the training loader drops the last partial batch).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

StepBody = Callable[[torch.Tensor, torch.Tensor], None]


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[tuple[dict, str, torch.Tensor]]:
    return [
        (state, key, value)
        for state in optimizer.state.values()
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
    ]


def capture_step(
    body: StepBody,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    extra_state: Callable[[], list[torch.Tensor]],
    example: tuple[torch.Tensor, torch.Tensor],
    warmup_steps: int = 3,
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """Record ``body`` (which must not zero or read gradients on the host) and return a replay.

    The warm-up steps needed before capture run on a side stream and are then undone: the
    weights, BatchNorm statistics, optimiser state and ``extra_state()`` (EMA weights, device
    meters) are restored, so the first replayed step is the run's next real step. Tensors that
    ``extra_state()`` lists only after the warm-up (sums created on first use) start at zero.
    """
    static_x, static_y = example[0].clone(), example[1].clone()
    saved_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
    saved_optim = {(id(s), k): v.clone() for s, k, v in _optimizer_tensors(optimizer)}
    saved_extra = [t.clone() for t in extra_state()]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup_steps):
            optimizer.zero_grad(set_to_none=True)
            body(static_x, static_y)
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
    # and every replay overwrites them, which is the zeroing an eager step does.
    optimizer.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body(static_x, static_y)

    def replay(x: torch.Tensor, y: torch.Tensor) -> None:
        static_x.copy_(x, non_blocking=True)
        static_y.copy_(y, non_blocking=True)
        graph.replay()

    return replay
