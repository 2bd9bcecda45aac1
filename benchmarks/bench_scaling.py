"""How the training step of the CIFAR ResNets grows with batch size and with depth, plotted.

    python benchmarks/bench_scaling.py [--batches 16 32 64 128 256] [--depths 20 56 110 1202]
        [--depth-batch 32] [--steps 3] [--out docs/scaling-cpu.png]

Each point is the fastest of ``--steps`` engine steps (``train()`` on synthetic data,
augmentation off) after 3 warm-up steps; on CUDA the mean step of the CUDA-graph path.
A step whose cost is all arithmetic grows linearly with both batch and depth: the plot draws
that line through the first point, so fixed per-step costs (kernel launches, Python) show as
the gap at small sizes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import engine_step  # noqa: E402


def measure(batches: list[int], depths: list[int], depth_batch: int, steps: int) -> dict:
    """Seconds per step of ResNet-56 at each batch, and of ResNet-d at ``depth_batch``."""
    cuda = torch.cuda.is_available()
    options = {"cuda_graphs": True} if cuda else {}
    by_batch, by_depth = {}, {}
    for b in batches:
        by_batch[b] = min(engine_step("resnet56", 32, b, steps, "auto", **options))
        print(f"resnet56 batch {b:5d}: {1e3 * by_batch[b]:9.1f} ms/step", flush=True)
    for d in depths:
        by_depth[d] = min(engine_step(f"resnet{d}", 32, depth_batch, steps, "auto", **options))
        print(f"resnet{d:<5d} batch {depth_batch}: {1e3 * by_depth[d]:9.1f} ms/step", flush=True)
    return {"by_batch": by_batch, "by_depth": by_depth, "depth_batch": depth_batch}


def plot(result: dict, title: str, path: Path) -> None:
    """Two log-log panels, measured points and the proportional-cost line through the first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = [(result["by_batch"], "batch size", "ResNet-56, 32 px"),
              (result["by_depth"], "depth (layers)",
               f"CIFAR ResNets, batch {result['depth_batch']}")]  # fmt: skip
    for ax, (points, xlabel, name) in zip(axes, panels, strict=True):
        xs, ys = list(points), [1e3 * t for t in points.values()]
        ax.loglog(xs, ys, "o-", label="measured")
        ax.loglog(xs, [ys[0] * x / xs[0] for x in xs], "--", color="grey",
                  label="proportional to work")  # fmt: skip
        ax.set(xlabel=xlabel, ylabel="ms per training step", title=name)
        ax.set_xticks(xs, [str(x) for x in xs], minor=False)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--depths", type=int, nargs="+", default=[20, 32, 56, 110, 1202])
    parser.add_argument("--depth-batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("docs/scaling-cpu.png"))
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)"
    title = (f"{device}, torch {torch.__version__}, {platform.machine()}, "
             f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d}")  # fmt: skip
    print(title, flush=True)
    result = measure(args.batches, args.depths, args.depth_batch, args.steps)
    plot(result, title, args.out)
    args.out.with_suffix(".json").write_text(json.dumps({"title": title, **result}, indent=1))
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
