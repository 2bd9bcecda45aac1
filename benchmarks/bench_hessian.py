"""The top Hessian eigenvalue and the trace of the trained peer ResNet-20 on CIFAR-10 JPEG test
images: resnetlab (Lanczos; Hutchinson deflated by the Lanczos basis) against PyHessian 0.1
(power iteration; Hutchinson) in the same run, on the same model, images and tolerance.

PyHessian gets the images as one batch (``data=(x, y)``, its fastest path: the gradient graph
is built once) and its defaults: power iteration stops when the eigenvalue changes by less than
``--tol`` (relative) or after ``--max-iter`` products; its trace when the running mean changes
by less than ``--tol`` or after ``--max-iter`` probes. resnetlab stops its eigenvalue when the
Lanczos error bound is below ``--tol`` times the value, its trace when the standard error is
below ``--tol`` times the estimate, each after at most ``--max-iter`` products. Each side's
setup (the forward pass and the gradient graph) is timed apart.

    python benchmarks/bench_hessian.py [--images 1000] [--tol 1e-3] [--max-iter 100]
        [--threads 1] [--batch 250] [--out runs/bench-hessian.json]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import importlib
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pyhessian import hessian as PyHessian

from resnetlab import create_model
from resnetlab.analysis.hessian import LossHessian, hutchinson_trace, top_eigenvalues
from resnetlab.experiments.trained import IMAGENET_NORM, load_split

PYHESSIAN = importlib.import_module(
    "pyhessian.hessian"
)  # the module; the package's name is the class
SHARED = Path(__file__).resolve().parents[2] / "shared"
WEIGHTS = SHARED / "peer" / "cifar-resnets" / "resnet20-12fca82f.th"
DATA = SHARED / "data" / "cifar10-jpeg.tar.gz"


def timed(fn):
    """(wall seconds, process CPU seconds, result)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def show(side: str, found: dict) -> dict:
    """Print a side's figures as soon as they are measured (one JSON line), and return them."""
    print(json.dumps({"side": side, **found}), flush=True)
    return found


def ours(model, x, y, args) -> dict:
    hessian = LossHessian(model, x, y, batch=args.batch, channels_last=True)
    wall, cpu, _ = timed(hessian.build)
    out = show("resnetlab", {"setup_s": wall, "setup_cpu_s": cpu})
    wall, cpu, eig = timed(
        lambda: top_eigenvalues(
            hessian, hessian.dim, 1, tol=args.tol, max_steps=args.max_iter, seed=args.seed
        )
    )
    out |= show("resnetlab", {
        "eigenvalue": eig.values[0], "eigenvalue_bound": eig.bounds[0],
        "eigenvalue_products": hessian.products, "eigenvalue_s": wall, "eigenvalue_cpu_s": cpu,
    })  # fmt: skip
    wall, cpu, t = timed(
        lambda: hutchinson_trace(hessian, hessian.dim, probes=args.max_iter, tol=args.tol,
                                 seed=args.seed + 1, deflate=eig.run)
    )  # fmt: skip
    hessian.release()
    return out | show("resnetlab", {
        "trace": t.mean, "trace_se": t.se, "trace_probes": t.probes,
        "trace_sample_std": float(np.std(t.samples, ddof=1)), "trace_s": wall,
        "trace_cpu_s": cpu,
    })  # fmt: skip


def theirs(model, x, y, args) -> dict:
    torch.manual_seed(args.seed)
    wall, cpu, reference = timed(
        lambda: PyHessian(copy.deepcopy(model), F.cross_entropy, data=(x, y), cuda=False)
    )
    out = show("pyhessian", {"setup_s": wall, "setup_cpu_s": cpu})
    counted = {"n": 0}
    real = PYHESSIAN.hessian_vector_product

    def counting(*a):
        counted["n"] += 1
        return real(*a)

    PYHESSIAN.hessian_vector_product = counting
    try:
        wall, cpu, eig = timed(
            lambda: reference.eigenvalues(maxIter=args.max_iter, tol=args.tol, top_n=1)
        )
        out |= show("pyhessian", {
            "eigenvalue": float(eig[0][0]), "eigenvalue_products": counted["n"],
            "eigenvalue_s": wall, "eigenvalue_cpu_s": cpu,
        })  # fmt: skip
        wall, cpu, samples = timed(lambda: reference.trace(maxIter=args.max_iter, tol=args.tol))
    finally:
        PYHESSIAN.hessian_vector_product = real
    return out | show("pyhessian", {
        "trace": float(np.mean(samples)),
        "trace_se": float(np.std(samples, ddof=1) / math.sqrt(len(samples))),
        "trace_probes": len(samples), "trace_sample_std": float(np.std(samples, ddof=1)),
        "trace_s": wall, "trace_cpu_s": cpu,
    })  # fmt: skip


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def table(a: dict, b: dict) -> str:
    """The Markdown table of the two sides, wall and process CPU seconds, and PyHessian's time
    over resnetlab's (above 1: resnetlab is faster)."""

    def times(key: str) -> str:
        wall, cpu = f"{key}_s", f"{key}_cpu_s"
        return (f"{a[wall]:.1f} s ({a[cpu]:.1f} s CPU) | {b[wall]:.1f} s ({b[cpu]:.1f} s CPU) | "
                f"**{b[wall] / a[wall]:.2f}×** ({b[cpu] / a[cpu]:.2f}× CPU) |")  # fmt: skip

    def per_probe(side: dict, key: str) -> float:
        return side[key] / side["trace_probes"]

    rows = [
        "| | resnetlab | PyHessian 0.1 | PyHessian / resnetlab |",
        "|---|---|---|---|",
        f"| setup: forward + gradient graph | {times('setup')}",
        f"| top eigenvalue | {a['eigenvalue']:.4f} (error bound {a['eigenvalue_bound']:.2g}) | "
        f"{b['eigenvalue']:.4f} | {b['eigenvalue'] / a['eigenvalue']:.5f} |",
        f"| its products (HVPs) | {a['eigenvalue_products']} | {b['eigenvalue_products']} | "
        f"{b['eigenvalue_products'] / a['eigenvalue_products']:.2f}× |",
        f"| its time | {times('eigenvalue')}",
        f"| trace ± standard error | {a['trace']:.1f} ± {a['trace_se']:.1f} | "
        f"{b['trace']:.1f} ± {b['trace_se']:.1f} | |",
        f"| its probes | {a['trace_probes']} | {b['trace_probes']} | |",
        f"| its time | {times('trace')}",
        f"| time per probe | {per_probe(a, 'trace_s'):.2f} s ({per_probe(a, 'trace_cpu_s'):.2f} s "
        f"CPU) | {per_probe(b, 'trace_s'):.2f} s ({per_probe(b, 'trace_cpu_s'):.2f} s CPU) | "
        f"{per_probe(b, 'trace_s') / per_probe(a, 'trace_s'):.2f}× "
        f"({per_probe(b, 'trace_cpu_s') / per_probe(a, 'trace_cpu_s'):.2f}× CPU) |",
        f"| std of one probe | {a['trace_sample_std']:.0f} | {b['trace_sample_std']:.0f} | "
        f"{(b['trace_sample_std'] / a['trace_sample_std']) ** 2:.1f}× the probes for one "
        "standard error |",
    ]
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=str(WEIGHTS))
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=250, help="resnetlab's images per chunk")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the results as JSON")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = create_model("resnet20", pretrained=args.weights).eval()
    x, y, source = load_split(args.data, "test", args.images, args.seed, IMAGENET_NORM)
    load = os.getloadavg()
    started = time.perf_counter()
    a = ours(model, x, y, args)
    gc.collect()
    b = theirs(model, x, y, args)
    facts = {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "threads": args.threads,
        "torch": torch.__version__,
        "data": source,
        "images": len(y),
        "tol": args.tol,
        "max_iter": args.max_iter,
        "batch": args.batch,
        "load_average_before": load,
        "load_average_after": os.getloadavg(),
        "wall_s": time.perf_counter() - started,
    }
    print(json.dumps(facts, indent=1))
    print(table(a, b))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            json.dumps({"facts": facts, "resnetlab": a, "pyhessian": b}, indent=1)
        )


if __name__ == "__main__":
    main()
