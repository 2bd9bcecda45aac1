"""Inference speed of resnetlab against torchvision, same weights, same process.

    python benchmarks/bench_infer.py [--models resnet18 resnet50 vgg16_bn] [--batch 8]

Per model, eval-mode forward passes under ``torch.inference_mode`` on the same input,
interleaved repeats, median time, of:
  tv        torchvision's model as usually run (CPU: NCHW fp32; CUDA: channels-last + bf16),
  tv-cl     torchvision's model channels-last (the faster layout on most machines),
  model     resnetlab's model in the same layout as ``tv`` (architecture parity),
  path      ``optimize_for_inference`` (BatchNorm folded, channels-last): what ``predict`` and
            ``evaluate`` run.
Ratios: model/tv (same settings) and path over the FASTER of tv and tv-cl.
Then the evaluation the engine runs during training (``evaluate`` over a CIFAR-size loader,
ResNet-56): on the model as trained, against the BatchNorm-folded copy it now evaluates.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import time

import torch
import torchvision

from resnetlab import create_model
from resnetlab.data import ImageSet, TensorLoader
from resnetlab.models.inference import optimize_for_inference
from resnetlab.train import evaluate
from resnetlab.train.evaluation import inference_copy
from resnetlab.train.prepare import cpu_channels_last

CL = torch.channels_last


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
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "vgg16_bn"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--iters", type=int, default=5, help="timed passes per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    usual = torch.channels_last if cuda else torch.contiguous_format
    name = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)"
    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {name}, torch "
          f"{torch.__version__}, {platform.machine()}, batch {args.batch}, {args.size} px, "
          f"{'bf16' if cuda else 'fp32'}")  # fmt: skip
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    x_usual, x_cl = x.contiguous(memory_format=usual), x.contiguous(memory_format=CL)
    for model_name in args.models:
        reference = getattr(torchvision.models, model_name)().eval()
        ours = create_model(model_name).eval()
        ours.load_state_dict(reference.state_dict())
        runs = {
            "tv": (reference.to(device, memory_format=usual), x_usual),
            "tv-cl": (copy.deepcopy(reference).to(memory_format=CL), x_cl),
            "model": (ours.to(device, memory_format=usual), x_usual),
            "path": (optimize_for_inference(ours, engine="torch"), x_cl),
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.repeats):  # interleaved, so load changes hit all alike
            for key, (model, inputs) in runs.items():
                times[key] += forward_times(model, inputs, args.iters)
        rate = {k: args.batch / statistics.median(v) for k, v in times.items()}
        best_tv = max(rate["tv"], rate["tv-cl"])
        print(f"{model_name:<9} " + "  ".join(f"{k} {v:7.1f}" for k, v in rate.items())
              + f" img/s   model/tv {rate['model'] / rate['tv']:.3f}"
              f"   path/best-tv {rate['path'] / best_tv:.3f}", flush=True)  # fmt: skip

    engine_evaluation(device, args.repeats)


def engine_evaluation(device: torch.device, repeats: int, n: int = 2560) -> None:
    """``evaluate`` on the trained model's layout against the engine's folded copy."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    data = ImageSet(images, torch.arange(n) % 10, [str(k) for k in range(10)], "random")
    cl = device.type == "cuda" or cpu_channels_last(create_model("resnet56"), (32, 32))
    loader = TensorLoader(data, 256, train=False, device=device, channels_last=cl)
    model = create_model("resnet56").to(device, memory_format=CL if cl else torch.preserve_format)
    bf16 = device.type == "cuda"
    times: dict[str, list[float]] = {"model": [], "folded": []}
    for _ in range(repeats + 1):  # the first round warms up and is dropped
        for key in times:
            start = time.perf_counter()
            evaluate(model if key == "model" else inference_copy(model, cl), loader, bf16=bf16)
            times[key].append(time.perf_counter() - start)
    rate = {k: n / statistics.median(v[1:]) for k, v in times.items()}
    print(f"engine evaluation, resnet56 32 px, {n} images: model {rate['model']:7.1f}  "
          f"folded copy (incl. folding) {rate['folded']:7.1f} img/s   "
          f"ratio {rate['folded'] / rate['model']:.3f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
