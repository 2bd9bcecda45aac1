"""Which memory layout and optimiser kernel train faster on this machine: the facts behind the
engine's CPU plan (channels-last where the last feature maps are >= 4 px; fused SGD).

    python benchmarks/bench_layout.py [--steps 4] [--repeats 2]

A plain loop (SGD, momentum 0.9, weight decay 1e-4, fp32) per case, interleaved repeats: the
median step in NCHW and in channels-last (fused SGD), and the optimiser step alone with
PyTorch's foreach and fused kernels in each layout.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import torch
import torchvision
from torch import nn

from resnetlab.models import create_model
from resnetlab.train.prepare import cpu_channels_last

CASES = [  # (label, builder, input px, batch)
    ("CIFAR ResNet-56", lambda: create_model("resnet56"), 32, 128),
    ("CIFAR plain-20", lambda: create_model("plain20"), 32, 128),
    ("ResNet-18", lambda: torchvision.models.resnet18(num_classes=10), 224, 16),
    ("ResNet-50", lambda: torchvision.models.resnet50(num_classes=10), 224, 8),
    ("ResNet-18", lambda: torchvision.models.resnet18(num_classes=10), 128, 16),
    ("ResNet-50", lambda: torchvision.models.resnet50(num_classes=10), 64, 16),
    ("ResNet-18", lambda: torchvision.models.resnet18(num_classes=10), 64, 32),
]


def loop(build, size: int, batch: int, steps: int, channels_last: bool, fused: bool) -> tuple:
    """Median (step, optimiser step) seconds of a plain training loop after 2 warm-up steps."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build().to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4,
                          fused=fused, foreach=None if fused else True)  # fmt: skip
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    step, opt_step = [], []
    for i in range(2 + steps):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        before_opt = time.perf_counter()
        opt.step()
        end = time.perf_counter()
        if i >= 2:
            step.append(end - start)
            opt_step.append(end - before_opt)
    return statistics.median(step), statistics.median(opt_step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, CPU ({os.cpu_count()} "
          f"cores), torch {torch.__version__}, {platform.machine()}; ms per step (optimiser "
          "step in brackets: foreach / fused)")  # fmt: skip
    for label, build, size, batch in CASES:
        runs: dict[tuple[bool, bool], list[tuple[float, float]]] = {}
        for _ in range(args.repeats):
            for cl in (False, True):
                for fused in (False, True):
                    r = loop(build, size, batch, args.steps, cl, fused)
                    runs.setdefault((cl, fused), []).append(r)
        med = {k: (statistics.median(a for a, _ in v), statistics.median(b for _, b in v))
               for k, v in runs.items()}  # fmt: skip
        nchw, cl = med[(False, True)][0], med[(True, True)][0]
        picks = cpu_channels_last(build(), (size, size))
        print(f"{label:<16} {size:3d} px b{batch:<4d} NCHW {1e3 * nchw:7.1f}  channels-last "
              f"{1e3 * cl:7.1f} (x{nchw / cl:.2f})  [NCHW {1e3 * med[(False, False)][1]:.1f} / "
              f"{1e3 * med[(False, True)][1]:.1f}, CL {1e3 * med[(True, False)][1]:.1f} / "
              f"{1e3 * med[(True, True)][1]:.1f}]  engine picks "
              f"{'channels-last' if picks else 'NCHW'}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
