"""Training-step speed of the engine against plain PyTorch code on the same model and settings.

    python benchmarks/bench_train.py [--device auto] [--steps 12] [--repeats 3] [--batch 32]
        [--big-batch 16] [--compile]

Pairs, run in the same process with interleaved repeats (median step time over all
repeats): the engine training resnetlab's ResNet-20 against a hand-written loop training the
same model (torchvision has no CIFAR ResNet), and the engine training resnetlab's ResNet-18
against a hand-written loop training torchvision's resnet18 (the same architecture), on the
CPU at 64 px (batch --batch) and 224 px (batch --big-batch). Each loop reuses one ready batch
and runs SGD as usually written (foreach); on the CPU it runs in the default NCHW layout
("loop") and channels-last ("loop-cl"). The ratio is engine images/s over the FASTEST
reference (1.0 = as fast; the engine's figure includes making each batch). With --compile it
also times ResNet-20 at batch 128 under the engine's torch.compile option.
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
    model_name: str,
    size: int,
    batch: int,
    steps: int,
    device: str,
    *,
    warmup: int = 3,
    images: int | None = None,
    classes: int = 10,
    callbacks=(),
    **cfg,
) -> list[float]:
    """Seconds per engine step after ``warmup`` steps (see ``Clock``), on ``images`` random
    images (default: one batch per step); ``cfg`` overrides the ``TrainConfig`` values."""
    clock = Clock(warmup, steps)
    data = synthetic(images or batch * (warmup + steps), size, classes)
    with tempfile.TemporaryDirectory() as out:
        values = {"model": model_name, "batch_size": batch, "lr": 0.01,
                  "max_iters": warmup + steps, "milestones": (), "augment": False,
                  "eval_every": 10**9, "checkpoint_every": 10**9, "log_every": 100,
                  "out_dir": out, "progress": False, "device": device, **cfg}  # fmt: skip
        train(TrainConfig(**values), data=data, callbacks=[clock, *callbacks])
    return clock.times()


def reference_step(
    model: nn.Module, size: int, batch: int, steps: int, device: str, channels_last: bool = False
) -> list[float]:
    """Seconds per step of a plain PyTorch loop (SGD, momentum, weight decay), as ``Clock``.
    On CUDA it runs bf16 autocast and channels-last, as torchvision's reference recipes do."""
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)  # fmt: skip
    cuda = dev.type == "cuda"
    fmt = torch.channels_last if cuda or channels_last else torch.contiguous_format
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


def compare(label, engine_fn, reference_fns: dict, batch: int, repeats: int) -> dict:
    """Interleaved repeats of the engine and each reference; the ratio is against the fastest
    reference (engine images/s over reference images/s)."""
    engine_fn()  # discarded: first runs pay for allocations and kernel caches
    for fn in reference_fns.values():
        fn()
    engine, refs = [], {name: [] for name in reference_fns}
    for _ in range(repeats):  # interleaved, so load changes hit all sides alike
        engine += engine_fn()
        for name, fn in reference_fns.items():
            refs[name] += fn()
    e = statistics.median(engine)
    ref_s = {name: statistics.median(t) for name, t in refs.items()}
    best = min(ref_s, key=ref_s.get)
    r = ref_s[best]
    row = {"pair": label, "engine_ms": 1e3 * e, "engine_img_s": batch / e,
           **{f"{name}_img_s": batch / t for name, t in ref_s.items()},
           "ratio": r / e, "against": best}  # fmt: skip
    refs_text = "  ".join(f"{name} {batch / t:7.1f}" for name, t in ref_s.items())
    print(f"{label:<44} engine {batch / e:7.1f}  {refs_text} img/s  ratio {r / e:5.3f} "
          f"(vs {best})", flush=True)  # fmt: skip
    return row


def graph_loss_gap(steps: int = 30, batch: int = 128) -> tuple[float, list[float]]:
    """GPU only: train ResNet-20 eagerly and with the captured step (fp32, same seed and
    batches); the largest relative loss difference and the graph run's losses."""
    losses = {}
    for graphs in (False, True):
        with tempfile.TemporaryDirectory() as out:
            config = TrainConfig(model="resnet20", batch_size=batch, lr=0.05, max_iters=steps,
                                 milestones=(), precision="fp32", cuda_graphs=graphs,
                                 eval_every=10**9, checkpoint_every=10**9, log_every=1,
                                 out_dir=out, progress=False, seed=0)  # fmt: skip
            train(config, data=synthetic(batch * 4, 32))
            lines = Path(out, "metrics.jsonl").read_text().splitlines()
            losses[graphs] = [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]
    worst = max(abs(a - b) / max(abs(a), 1e-8) for a, b in zip(*losses.values(), strict=True))
    return worst, losses[True]


def check_cuda_graphs(steps: int = 30) -> None:
    """The captured step trains like the eager one, or the benchmark stops."""
    worst, losses = graph_loss_gap(steps)
    ok = len(losses) == steps and worst < 1e-2 and losses[-1] < losses[0]
    print(f"CUDA-graph check: {steps} steps, max relative loss difference vs eager "
          f"{worst:.2e}, loss {losses[0]:.3f} -> {losses[-1]:.3f}: "
          f"{'OK' if ok else 'FAILED'}")  # fmt: skip
    if not ok:
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--big-batch", type=int, default=16, help="batch at 224 px on the CPU")
    parser.add_argument("--compile", action="store_true", help="add the engine's compile option")
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
    name = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)"
    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {name}, torch "
          f"{torch.__version__}, {platform.processor() or platform.machine()}")  # fmt: skip
    b, s, d, n = args.batch, args.steps, args.device, args.repeats
    ref_layouts = {"loop": False} if cuda else {"loop": False, "loop-cl": True}

    def references(make_model, size: int, batch: int) -> dict:
        return {name: (lambda cl=cl: reference_step(make_model(), size, batch, s, d, cl))
                for name, cl in ref_layouts.items()}  # fmt: skip

    compare(f"ResNet-20 32px b{b}: engine vs plain loop",
            lambda: engine_step("resnet20", 32, b, s, d),
            references(lambda: create_model("resnet20"), 32, b), b, n)  # fmt: skip
    if args.compile:  # the first engine run compiles; later ones reuse inductor's cache
        compare("ResNet-20 32px b128: engine --compile vs plain loop",
                lambda: engine_step("resnet20", 32, 128, s, d, compile=True),
                references(lambda: create_model("resnet20"), 32, 128), 128, n)  # fmt: skip
    tv18 = lambda: torchvision.models.resnet18(num_classes=10)  # noqa: E731
    for size, batch in ((64, b), (224, args.big_batch)) if not cuda else ((224, b),):
        compare(f"ResNet-18 {size}px b{batch}: engine vs torchvision",
                lambda size=size, batch=batch: engine_step("resnet18", size, batch, s, d),
                references(tv18, size, batch), batch, n)  # fmt: skip
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
