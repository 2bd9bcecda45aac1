"""Activation memory measured without a GPU: the bytes autograd keeps from forward to backward."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    return str(t.device), t.untyped_storage().data_ptr()


def saved_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for backward in one step on ``x``; exact on any device.

    Runs forward, cross-entropy against class 0 and backward in the model's current mode under
    ``torch.autograd.graph.saved_tensors_hooks``, counting each storage once and leaving out
    the model's parameters and buffers (resident anyway). Inside a non-reentrant checkpoint
    the checkpoint's own hooks take over, so only what it really keeps (the segment inputs) is
    counted. A count of what the graph holds, not the allocator's peak. The model's ``.grad``
    and buffers (BN statistics) are left as they were.
    """
    params = list(model.parameters())
    resident = {_storage_key(t) for t in (*params, *model.buffers())}
    kept: dict[tuple[str, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in resident:
            kept[key] = t.untyped_storage().nbytes()
        return t

    grads = [p.grad for p in params]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.enable_grad():
            for p in params:
                p.grad = None
            logits = model(x)
            target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
            F.cross_entropy(logits, target).backward()
    finally:
        with torch.no_grad():
            for buffer, value in buffers:
                buffer.copy_(value)
        for p, grad in zip(params, grads, strict=True):
            p.grad = grad
    return sum(kept.values())
