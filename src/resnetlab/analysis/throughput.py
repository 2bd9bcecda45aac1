"""Measured forward and training throughput (images per second) on this machine."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Throughput:
    """One measurement, with the settings it was made under."""

    mode: str  # "forward" (eval, no grad) or "train" (forward + backward + SGD step)
    images_per_s: float
    batch: int
    input_size: int
    iters: int
    device: str
    precision: str

    def as_dict(self) -> dict:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_throughput(
    model: nn.Module,
    *,
    mode: str = "forward",
    batch: int = 8,
    input_size: int = 224,
    iters: int = 3,
    warmup: int = 1,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> Throughput:
    """Images/s over ``iters`` timed iterations after ``warmup`` untimed ones, in float32.

    ``mode="train"`` updates the model's weights (plain SGD, lr 1e-3): pass a model you can spare.
    """
    if mode not in ("forward", "train"):
        raise ValueError(f"mode must be 'forward' or 'train', got {mode!r}")
    device = torch.device(device)
    model = model.to(device)
    in_channels = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, in_channels, input_size, input_size, generator=generator).to(device)
    num_classes = model(x[:1]).shape[1] if mode == "train" else 1
    y = torch.randint(0, num_classes, (batch,), generator=generator).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3) if mode == "train" else None

    def step() -> None:
        if optimizer is None:
            with torch.no_grad():
                model(x)
            return
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    model.train(mode == "train")
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    elapsed = time.perf_counter() - start
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return Throughput(mode, batch * iters / elapsed, batch, input_size, iters, name, "fp32")
