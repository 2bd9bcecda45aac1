"""Inference speed of resnetlab's models against torchvision's, same weights, same process.

    python benchmarks/bench_infer.py [--models resnet18 resnet50 vgg16] [--batch 8] [--size 224]

Each pair runs eval-mode forward passes under ``torch.inference_mode`` on the same input,
interleaved repeats, median time. The ratio is resnetlab images/s over torchvision images/s
(1.0 = equal). On CUDA both run in bf16 autocast with channels-last.
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

from resnetlab import create_model


def forward_times(model: torch.nn.Module, x: torch.Tensor, iters: int) -> list[float]:
    """Seconds per forward pass after one warm-up (CUDA: the window's mean, synchronised)."""
    cuda = x.device.type == "cuda"
    with torch.inference_mode(), torch.autocast(x.device.type, torch.bfloat16, enabled=cuda):
        model(x)
        if cuda:
            torch.cuda.synchronize()
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
        if cuda:
            torch.cuda.synchronize()
            return [sum(times) / iters]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "vgg16"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--iters", type=int, default=5, help="timed passes per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)"
    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {name}, torch "
          f"{torch.__version__}, {platform.machine()}, batch {args.batch}, {args.size} px, "
          f"{'bf16' if device.type == 'cuda' else 'fp32'}")  # fmt: skip
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(
        memory_format=fmt
    )
    for model_name in args.models:
        reference = getattr(torchvision.models, model_name)().eval()
        ours = create_model(model_name).eval()
        ours.load_state_dict(reference.state_dict())
        pair = [m.to(device, memory_format=fmt) for m in (ours, reference)]
        ours_t, ref_t = [], []
        for _ in range(args.repeats):  # interleaved, so load changes hit both alike
            ours_t += forward_times(pair[0], x, args.iters)
            ref_t += forward_times(pair[1], x, args.iters)
        o, r = statistics.median(ours_t), statistics.median(ref_t)
        print(f"{model_name:<10} resnetlab {args.batch / o:8.1f} img/s  torchvision "
              f"{args.batch / r:8.1f} img/s  ratio {r / o:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
