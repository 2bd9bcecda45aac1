"""Data-parallel training with ``torchrun``: process group, device, DDP wrapping, reductions.

Launch: ``torchrun --nproc-per-node=G [--nnodes=N ...] -m resnetlab.cli train ...``. torchrun
sets RANK, WORLD_SIZE and LOCAL_RANK; the backend is NCCL on CUDA and Gloo on the CPU.
``batch_size`` stays the global batch: each rank trains on its own contiguous chunk of every
global batch (no overlap), and DDP averages the gradients, so the update equals the one of a
single process on the whole batch. BatchNorm statistics are per rank unless SyncBatchNorm is
used (``sync_bn``, CUDA only: PyTorch's SyncBatchNorm does not run on the CPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ResnetlabError
from ..groups import check_device


@dataclass
class Dist:
    """Where this process stands: its rank, the number of processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` is this rank's CUDA device when there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    check_device(name)
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ResnetlabError("device 'cuda' asked for but no GPU is visible; use --device cpu.")
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    return device


def setup(
    device_name: str, *, backend: str | None = None, timeout: timedelta | None = None
) -> tuple[Dist, bool]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); else one process.

    ``backend`` overrides the device's (gloo for a group that only exchanges Python objects,
    as the study runner's does, whatever the device); ``timeout`` is how long a collective may
    wait for the slowest rank (torch's default, 30 minutes, where None). Returns the process's
    place and whether this call created the group (and must end it).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    created = False
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    elif world_size > 1:
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout)
        created = True
    return Dist(rank, world_size, local_rank, device), created


def wrap(model: nn.Module, info: Dist) -> nn.Module:
    """The model as DDP under several processes (parameters broadcast from rank 0)."""
    if not info.enabled:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def all_reduce_sum(tensor: torch.Tensor, info: Dist) -> torch.Tensor:
    """Sum over ranks in place (a no-op on one process); returns the tensor."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor, info: Dist) -> torch.Tensor:
    """Maximum over ranks in place (a no-op on one process); returns the tensor."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def any_rank(flag: bool, info: Dist) -> bool:
    """True on every rank when ``flag`` is true on any rank (e.g. a Ctrl-C seen by one)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    return bool(all_reduce_sum(t, info).item() > 0)


def broadcast_buffers(model: nn.Module, info: Dist) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
    if info.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def barrier(info: Dist) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: Dist) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
