"""The interface every resnetlab network shares: features, head and named stages.

Also activation checkpointing: a :class:`CheckpointedSequential` stage can run each of its
segments (a residual block, a pooled VGG block) through ``torch.utils.checkpoint`` so that only
the segment inputs are kept for backward and the rest is recomputed there.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from ..errors import ResnetlabError


@contextlib.contextmanager
def bn_buffers_kept(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Put back the BN running statistics of ``modules`` on exit: a recomputation must not count."""
    buffers = [
        buffer
        for module in modules
        for layer in module.modules()
        if isinstance(layer, _BatchNorm)
        for buffer in layer.buffers(recurse=False)
    ]
    saved = [buffer.clone() for buffer in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved, strict=True):
                buffer.copy_(value)


def _bn_exact_contexts(
    modules: Sequence[nn.Module],
) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    """checkpoint's (forward, recompute) contexts: nothing, then BN buffers put back."""
    return contextlib.nullcontext(), bn_buffers_kept(modules)


def _run_segment(modules: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for module in modules:
        x = module(x)
    return x


def checkpoint_segment(modules: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """``modules`` applied in order to ``x``, keeping only ``x`` for backward (non-reentrant).

    Eager mode restores BN buffers after the recomputation; under ``torch.compile`` the
    compiler recomputes functionally and never repeats the buffer update, so no context is
    needed there (nor allowed: it would have to be a dispatch mode).
    """
    run = functools.partial(_run_segment, modules)
    if torch.compiler.is_compiling():
        return checkpoint(run, x, use_reentrant=False)
    contexts = functools.partial(_bn_exact_contexts, modules)
    return checkpoint(run, x, use_reentrant=False, context_fn=contexts)


class CheckpointedSequential(nn.Sequential):
    """``nn.Sequential`` whose segments can each run under activation checkpointing.

    A segment is one child, or with ``boundary`` a run of children ending at one of that type
    (VGG: the conv group up to and including its max-pool). Checkpointing applies only when
    ``grad_checkpointing`` is set, the module is training and grad is enabled; state-dict
    keys and forward hooks are those of a plain ``nn.Sequential``.
    """

    grad_checkpointing: bool = False

    def __init__(self, *modules: nn.Module, boundary: type[nn.Module] | None = None) -> None:
        super().__init__(*modules)
        self.boundary = boundary

    def segments(self) -> list[list[nn.Module]]:
        """The children grouped as they are checkpointed, in forward order."""
        if self.boundary is None:
            return [[module] for module in self]
        groups: list[list[nn.Module]] = [[]]
        for module in self:
            groups[-1].append(module)
            if isinstance(module, self.boundary):
                groups.append([])
        return [group for group in groups if group]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.grad_checkpointing and self.training and torch.is_grad_enabled()):
            return super().forward(x)
        for segment in self.segments():
            x = checkpoint_segment(segment, x)
        return x


class Backbone(nn.Module):
    """A classifier split into `forward_features` (before pooling) and `forward_head`.

    Subclasses set `head_name` (the dotted name of the final Linear layer, e.g. ``"fc"`` or
    ``"classifier.6"``), `num_features` (the width that reaches the head) and `stage_names`
    (the paper's names, in forward order, each naming one child module or a group of them).
    Their block stages are :class:`CheckpointedSequential`, which `set_grad_checkpointing`
    switches.
    """

    head_name: str = "fc"
    num_features: int = 0
    stage_names: tuple[str, ...] = ()
    pretrained_cfg: dict[str, Any] | None = None  # where the weights came from, once loaded

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def stage_modules(self) -> dict[str, list[nn.Module]]:
        """Map each stage name (``stem``, ``layer1`` ..., ``head``) to its modules."""
        raise NotImplementedError

    def get_head(self) -> nn.Module:
        return self.get_submodule(self.head_name)

    def set_head(self, module: nn.Module) -> None:
        parent_name, _, child = self.head_name.rpartition(".")
        parent = self.get_submodule(parent_name) if parent_name else self
        setattr(parent, child, module)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward rather than keep them (less memory).

        Costs about one more forward per step; applies in training with grad enabled only, and
        BatchNorm running statistics are updated once, as without it.
        """
        stages = [m for m in self.modules() if isinstance(m, CheckpointedSequential)]
        if enable and not stages:
            raise ResnetlabError(
                f"{type(self).__name__} has no checkpointable stages; build its blocks in a "
                "CheckpointedSequential."
            )
        for stage in stages:
            stage.grad_checkpointing = bool(enable)

    @property
    def grad_checkpointing(self) -> bool:
        """Whether any block stage runs under activation checkpointing."""
        return any(
            m.grad_checkpointing for m in self.modules() if isinstance(m, CheckpointedSequential)
        )
