"""Minibatch linear CKA of two ResNet-56: resnetlab against pytorch-cka, time and peak memory.

    python benchmarks/bench_cka.py [--images 2000 10000] [--reference-images 2000 10000]
                                   [--exact 2000] [--batch-size 256] [--shared ../shared]

Net A is the peer ResNet-56 (``../shared/peer/cifar-resnets/resnet56-*.th``), net B a ResNet-56
initialised at random from ``torch.manual_seed(0)``; the images are the CIFAR-10 test split of
``../shared/data/cifar10-jpeg.tar.gz`` in a fixed shuffled order (seed 0), ImageNet mean/std
(the peer's). Every case runs in a fresh process that reads the images from one uint8 file, so
its peak resident set above what it held before the first batch (the kernel's high-water mark,
VmHWM, reset through ``/proc/self/clear_refs`` just before) is the computation's own.
resnetlab runs as the ``cka`` study does (BN-folded, channels-last copies, Grams in the forward
hooks); pytorch-cka (``compute_cka``) gets the same batches of normalised
images from a DataLoader. Both use the 30 layers the study picks (stem, 27 blocks, pool, head).
``--exact N`` also runs pytorch-cka with both nets and the images in float64 on the first N
images, the truth both float32 results are compared with (largest difference, entry by entry).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, sys, time
import numpy as np
import torch
from resnetlab import create_model
from resnetlab.preprocessing import IMAGENET_MEAN, IMAGENET_STD

tool, images_file, weights, count, batch, out = sys.argv[1:7]
count, batch = int(count), int(batch)
images = torch.from_numpy(np.load(images_file)[:count])
mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def batches():
    for start in range(0, count, batch):
        yield (images[start : start + batch].float() / 255 - mean) / std


a = create_model("resnet56", pretrained=weights).eval()
torch.manual_seed(0)
b = create_model("resnet56").eval()
if tool == "resnetlab":
    from resnetlab.analysis.cka import default_layers, minibatch_cka
    from resnetlab.models.inference import optimize_for_inference

    layers = default_layers(a, next(batches())[:1])
    a, b = optimize_for_inference(a), optimize_for_inference(b)
else:
    from torch.utils.data import DataLoader, Dataset
    from cka import compute_cka
    from resnetlab.analysis.cka import default_layers

    layers = default_layers(a, next(batches())[:1])

    class Batches(Dataset):
        def __len__(self):
            return -(-count // batch)

        def __getitem__(self, i):
            x = images[i * batch : (i + 1) * batch]
            return (x.to(mean.dtype) / 255 - mean) / std

    loader = DataLoader(Batches(), batch_size=None)
if tool == "pytorch-cka-float64":
    a, b, mean, std = a.double(), b.double(), mean.double(), std.double()


def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) / 1024


with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak resident set (VmHWM) starts again from here
before = status("VmRSS:")
started = time.perf_counter()
if tool == "resnetlab":
    matrix = minibatch_cka(a, b, batches(), layers, layers).cka
else:
    (matrix,) = compute_cka(a, b, loader, layers=layers, device="cpu", progress=False)
seconds = time.perf_counter() - started
peak = status("VmHWM:") - before
np.save(out, matrix.double().numpy())
print(json.dumps({"seconds": seconds, "peak_mib": peak, "base_mib": before,
                  "layers": len(layers)}))
"""


def prepare_images(shared: Path, path: Path) -> int:
    """The test split as one uint8 (N, 3, 32, 32) file, shuffled with seed 0; its size."""
    from resnetlab.data import open_data

    bundle = open_data(str(shared / "data" / "cifar10-jpeg.tar.gz"), seed=0)
    images = bundle.test.images
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    np.save(path, images[order].numpy())
    return len(images)


def run_case(tool: str, images: Path, weights: Path, count: int, batch: int, out: Path) -> dict:
    """One case in a fresh process (its own peak RSS)."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "worker.py"
        script.write_text(WORKER)
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        done = subprocess.run(
            [sys.executable, str(script), tool, str(images), str(weights), str(count), str(batch),
             str(out)], capture_output=True, text=True, env=env,
        )  # fmt: skip
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--reference-images", type=int, nargs="*", default=[2000, 10000])
    parser.add_argument("--exact", type=int, default=2000, help="float64 reference; 0: none")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    args = parser.parse_args()
    weights = next((args.shared / "peer" / "cifar-resnets").glob("resnet56-*.th"))
    cpu = platform.processor() or platform.machine()
    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {cpu}, {os.cpu_count()} "
          f"CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), load average "
          f"{os.getloadavg()[0]:.1f}; batch {args.batch_size}; A = {weights.name}, B = resnet56 "
          f"at torch.manual_seed(0)", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images.npy"
        total = prepare_images(args.shared, images)
        cases = [("resnetlab", n) for n in args.images]
        cases += [("pytorch-cka", n) for n in args.reference_images]
        cases += [("pytorch-cka-float64", args.exact)] if args.exact else []
        results, matrices = {}, {}
        for tool, n in cases:
            out = Path(tmp) / f"{tool}-{n}.npy"
            r = results[tool, n] = run_case(tool, images, weights, min(n, total), args.batch_size,
                                            out)  # fmt: skip
            if "error" in r:
                print(f"{tool:<19} {n:>6,} images: {r['error']}", flush=True)
                continue
            matrices[tool, n] = np.load(out)
            print(f"{tool:<19} {n:>6,} images: {r['seconds']:8.1f} s "
                  f"({n / r['seconds']:6.1f} img/s), peak RSS +{r['peak_mib']:7.1f} MiB above "
                  f"{r['base_mib']:.0f} MiB, {r['layers']} layers per net", flush=True)  # fmt: skip
    for n in sorted({n for _, n in results}):
        ours, ref = results.get(("resnetlab", n), {}), results.get(("pytorch-cka", n), {})
        if "seconds" in ours and "seconds" in ref:
            diff = np.abs(np.clip(matrices["resnetlab", n], 0, 1) - matrices["pytorch-cka", n])
            print(f"{n:,} images: pytorch-cka / resnetlab: time "
                  f"{ref['seconds'] / ours['seconds']:.2f}x, peak memory "
                  f"{ref['peak_mib'] / max(ours['peak_mib'], 1):.2f}x; largest |CKA difference| "
                  f"{diff.max():.2e} (mean {diff.mean():.2e})")  # fmt: skip
        if ("pytorch-cka-float64", n) in matrices:
            exact = matrices["pytorch-cka-float64", n]
            for tool in ("resnetlab", "pytorch-cka"):
                if (tool, n) in matrices:
                    off = np.abs(np.clip(matrices[tool, n], 0, 1) - exact)
                    print(f"{n:,} images: {tool} (float32) against float64: largest |difference| "
                          f"{off.max():.2e}, mean {off.mean():.2e}")  # fmt: skip
    for tool in ("resnetlab", "pytorch-cka"):
        sizes = sorted(n for t, n in results if t == tool and "peak_mib" in results[t, n])
        if len(sizes) > 1:
            low, high = results[tool, sizes[0]], results[tool, sizes[-1]]
            print(f"{tool}: peak memory at {sizes[-1]:,} images / at {sizes[0]:,}: "
                  f"{high['peak_mib'] / max(low['peak_mib'], 1):.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
