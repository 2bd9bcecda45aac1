"""Training-step speed of the engine against plain PyTorch code on the same model and settings.

    python benchmarks/bench_train.py [--device auto] [--steps 12] [--repeats 3] [--batch 32]

Pairs, run in the same process with interleaved repeats (median step time over all
repeats): the engine training resnetlab's ResNet-20 vs a hand-written loop
training the same model (torchvision has no CIFAR ResNet), and the engine training resnetlab's
ResNet-18 vs a hand-written loop training torchvision's resnet18 (the same architecture). The
ratio is engine images/s over reference images/s (1.0 = no overhead; the engine's figure
includes making each batch, which the reference gets for free).
On CUDA it also checks the CUDA-graph step against the eager step (same losses within
rounding) and times ResNet-56 at batch 128 with graphs vs eager, projecting 64k iterations.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch import nn

from resnetlab.data import DataBundle, ImageSet
from resnetlab.models import create_model
from resnetlab.train import Callback, TrainConfig, train


def synthetic(n: int, size: int, classes: int = 10) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % classes
    data = ImageSet(images, labels, [str(k) for k in range(classes)], "random")
    return DataBundle(data, None, None, data.classes, 3, (size, size), "random", "random pixels")


class Clock(Callback):
    """Step times after ``warmup``: each step on the CPU; on CUDA the mean over the window,
    synchronising only at its two ends (a per-step sync would hide the asynchronous step)."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.marks: list[float] = []
        self.cuda = False

    def on_step(self, state) -> None:
        self.cuda = state.dist.device.type == "cuda"
        ends = (self.warmup, self.warmup + self.steps)
        if state.step < self.warmup or (self.cuda and state.step not in ends):
            return
        if self.cuda:
            torch.cuda.synchronize()
        self.marks.append(time.perf_counter())

    def times(self) -> list[float]:
        if self.cuda:
            return [(self.marks[-1] - self.marks[0]) / self.steps]
        return [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]


def engine_step(
    model_name: str, size: int, batch: int, steps: int, device: str, **cfg
) -> list[float]:
    """Seconds per engine step after 3 warm-up steps (see ``Clock``)."""
    warmup = 3
    clock = Clock(warmup, steps)
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(model=model_name, batch_size=batch, lr=0.01, max_iters=warmup + steps,
                             milestones=(), augment=False, eval_every=10**9,
                             checkpoint_every=10**9, log_every=100, out_dir=out, progress=False,
                             device=device, **cfg)  # fmt: skip
        train(config, data=synthetic(batch * (warmup + steps), size), callbacks=[clock])
    return clock.times()


def reference_step(model: nn.Module, size: int, batch: int, steps: int, device: str) -> list[float]:
    """Seconds per step of a plain PyTorch loop (SGD, momentum, weight decay), as ``Clock``."""
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)  # fmt: skip
    cuda = dev.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    model = model.to(dev, memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, size, size, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=dev)
    times = []
    for i in range(3 + steps):
        if i == 3 and cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - start)
    if cuda:  # asynchronous steps: the window's mean, synchronised at its end
        torch.cuda.synchronize()
        return [sum(times) / steps]
    return times


def compare(label, engine_fn, reference_fn, batch: int, repeats: int) -> dict:
    engine_fn(), reference_fn()  # discarded: first runs pay for allocations and kernel caches
    engine, reference = [], []
    for _ in range(repeats):  # interleaved, so load changes hit both sides alike
        engine += engine_fn()
        reference += reference_fn()
    e, r = statistics.median(engine), statistics.median(reference)
    row = {"pair": label, "engine_ms": 1e3 * e, "reference_ms": 1e3 * r,
           "engine_img_s": batch / e, "reference_img_s": batch / r, "ratio": r / e}  # fmt: skip
    print(f"{label:<46} engine {batch / e:8.1f} img/s  reference {batch / r:8.1f} img/s  "
          f"ratio {r / e:5.3f}", flush=True)  # fmt: skip
    return row


def check_cuda_graphs(steps: int = 30) -> None:
    """GPU only: the captured step trains like the eager one (fp32, same seed and batches)."""
    losses = {}
    for graphs in (False, True):
        with tempfile.TemporaryDirectory() as out:
            config = TrainConfig(model="resnet20", batch_size=128, lr=0.05, max_iters=steps,
                                 milestones=(), precision="fp32", cuda_graphs=graphs,
                                 eval_every=10**9, checkpoint_every=10**9, log_every=1,
                                 out_dir=out, progress=False, seed=0)  # fmt: skip
            train(config, data=synthetic(128 * 4, 32))
            lines = Path(out, "metrics.jsonl").read_text().splitlines()
            losses[graphs] = [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]
    worst = max(abs(a - b) / max(abs(a), 1e-8) for a, b in zip(*losses.values(), strict=True))
    ok = len(losses[True]) == steps and worst < 1e-2 and losses[True][-1] < losses[True][0]
    print(f"CUDA-graph check: {steps} steps, max relative loss difference vs eager "
          f"{worst:.2e}, loss {losses[True][0]:.3f} -> {losses[True][-1]:.3f}: "
          f"{'OK' if ok else 'FAILED'}")  # fmt: skip
    if not ok:
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
    name = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)"
    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {name}, torch "
          f"{torch.__version__}, {platform.processor() or platform.machine()}")  # fmt: skip
    b, s, d, n = args.batch, args.steps, args.device, args.repeats
    big = 64 if not cuda else 224
    compare(f"ResNet-20 32px b{b}: engine vs plain loop",
            lambda: engine_step("resnet20", 32, b, s, d),
            lambda: reference_step(create_model("resnet20"), 32, b, s, d), b, n)  # fmt: skip
    compare(f"ResNet-18 {big}px b{b}: engine vs torchvision resnet18",
            lambda: engine_step("resnet18", big, b, s, d),
            lambda: reference_step(torchvision.models.resnet18(num_classes=10), big, b, s, d),
            b, n)  # fmt: skip
    if cuda:
        check_cuda_graphs()
        graphs = statistics.median(t for _ in range(n)
                                   for t in engine_step("resnet56", 32, 128, 50, d,
                                                        cuda_graphs=True))  # fmt: skip
        eager = statistics.median(t for _ in range(n)
                                  for t in engine_step("resnet56", 32, 128, 50, d,
                                                       cuda_graphs=False))  # fmt: skip
        print(f"ResNet-56 b128 bf16: CUDA graphs {1e3 * graphs:.2f} ms/step, eager "
              f"{1e3 * eager:.2f} ms/step (x{eager / graphs:.2f}); 64k iterations: "
              f"{64000 * graphs / 60:.1f} min with graphs, {64000 * eager / 60:.1f} min eager "
              "(training steps only, evaluation excluded)")  # fmt: skip


if __name__ == "__main__":
    main()
