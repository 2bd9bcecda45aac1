"""The explanation checks ``resnetlab explain --checks`` runs, timed, and each metric against
``quantus`` on the same maps in the same run: the cascading randomisation of Grad-CAM at every
layer against quantus's MPRT (top down, seed 42: the same numbers; both on maps with the same 1e-6
noise added, as quantus refuses all-zero maps), and the deletion curve against quantus's
PixelFlipping on Grad-CAM's pixel ranks (the same curve; quantus steps through the channels, so
it takes three steps for each of ours). The model is torchvision's ResNet-50 with random weights (no
download; the timings do not depend on what the weights learned), on random 224 px inputs.

The images go in chunks (``--chunk``, default 10); each chunk is timed on both sides one after
the other, the side that goes first alternating from chunk to chunk, so that a change in the
machine's load falls on both sides alike. Wall and CPU time are summed over the chunks; the
ratio is quantus's time over ours, with the spread of the per-chunk ratios beside it.

    python benchmarks/bench_explain.py [--images 100] [--size 224] [--model resnet50]
                                       [--device cpu] [--steps 32] [--chunk 10]
                                       [--only checks|mprt|deletion]
                                       [--deletion-maps ranked|noisy]

A smoke test (seconds): ``--images 4 --size 64 --model resnet18 --chunk 2``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import numpy as np
import torch
import torchvision

from resnetlab.analysis.explanation_checks import cascading_randomisation, perturbation_curves
from resnetlab.analysis.explanation_suite import run_checks
from resnetlab.analysis.gradcam import cam_maps


def timed(fn) -> tuple[float, float, object]:
    """Wall time and CPU time of one call (synchronised on CUDA) and its result."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu, result


def interleaved(chunks: list, ours, theirs) -> tuple[dict, list, list]:
    """Time ``ours(chunk)`` and ``theirs(chunk)`` on every chunk, alternating which goes first;
    the summed wall and CPU seconds, the ratios, and each side's results in chunk order."""
    seconds = {"ours": [0.0, 0.0], "quantus": [0.0, 0.0]}
    ratios, results = [], {"ours": [], "quantus": []}
    for i, chunk in enumerate(chunks):
        sides = [("ours", ours), ("quantus", theirs)]
        per_chunk = {}
        for side, fn in sides if i % 2 == 0 else sides[::-1]:
            wall, cpu, result = timed(lambda fn=fn, chunk=chunk: fn(chunk))
            seconds[side][0] += wall
            seconds[side][1] += cpu
            per_chunk[side] = wall
            results[side].append(result)
        ratios.append(per_chunk["quantus"] / per_chunk["ours"])
    summary = {
        "chunks": len(chunks),
        "ours_s": round(seconds["ours"][0], 1), "quantus_s": round(seconds["quantus"][0], 1),
        "ours_cpu_s": round(seconds["ours"][1], 1),
        "quantus_cpu_s": round(seconds["quantus"][1], 1),
        "ratio_quantus_over_ours": round(seconds["quantus"][0] / seconds["ours"][0], 2),
        "cpu_ratio_quantus_over_ours": round(seconds["quantus"][1] / seconds["ours"][1], 2),
        "chunk_ratio_median": round(float(np.median(ratios)), 2),
        "chunk_ratio_range": [round(min(ratios), 2), round(max(ratios), 2)],
    }  # fmt: skip
    return summary, results["ours"], results["quantus"]


def chunked(x: torch.Tensor, targets: torch.Tensor, size: int) -> list:
    return [(x[i : i + size], targets[i : i + size]) for i in range(0, len(x), size)]


def setup(name: str, images: int, size: int, device: str):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval().to(device)
    x = torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        targets = model(x).argmax(1)
    return model, x, targets


def gradcam(model, x, targets) -> torch.Tensor:
    return cam_maps(model, x, target=targets)["maps"]


def gradcam_untied(model, x, targets) -> torch.Tensor:
    """Grad-CAM plus the same 1e-6 noise every call: never all zero (quantus refuses a batch
    of all-zero maps, which a randomised ResNet's Grad-CAM can be)."""
    maps = gradcam(model, x, targets)
    return maps + torch.rand(maps.shape, generator=torch.Generator().manual_seed(3)) * 1e-6


def ranked(maps: torch.Tensor) -> torch.Tensor:
    """Each map replaced by its pixels' ranks over the pixel count: the same order, no two pixels
    equal (1e-6 noise leaves thousands of ties in a 224 px map in float32, and quantus breaks
    ties channel by channel, so a tied pixel can be half deleted on its side and not on ours)."""
    flat = maps.reshape(len(maps), -1)
    return (flat.argsort(1).argsort(1).float() / flat.shape[1]).reshape(maps.shape)


def bench_checks(model, x, targets) -> dict:
    """The whole of explain's checks: Grad-CAM and Grad-CAM++, one curve point per block,
    deletion and insertion for both maps and the random floor."""
    seconds, cpu, result = timed(lambda: run_checks(model, x, targets, ("gradcam", "gradcam++")))
    blocks = len(result["methods"]["gradcam"]["randomisation"])
    return {"ours_s": round(seconds, 1), "ours_cpu_s": round(cpu, 1), "blocks": blocks,
            "verdicts": result["verdicts"]}  # fmt: skip


def bench_mprt(model, x, targets, device: str, chunk: int) -> dict:
    import quantus  # a dev dependency, imported here so --only checks runs without it

    def explain(model, inputs, targets, **kwargs):
        inputs = torch.as_tensor(inputs, device=device)
        wanted = torch.as_tensor(targets, device=device)
        return gradcam_untied(model.eval(), inputs, wanted)[:, None]

    def ours(part):
        return cascading_randomisation(model, part[0], part[1], gradcam_untied, seed=42)

    def theirs(part):
        metric = quantus.MPRT(layer_order="top_down", seed=42, disable_warnings=True)
        return metric(model=model, x_batch=part[0].cpu().numpy(),
                      y_batch=part[1].cpu().numpy(), a_batch=None,
                      explain_func=lambda **kw: explain(**kw).numpy(), device=device)  # fmt: skip

    summary, ours_all, theirs_all = interleaved(chunked(x, targets, chunk), ours, theirs)
    diff = max(float(np.nanmax(np.abs(np.asarray(s["spearman"]) - np.asarray(t[s["layer"]]))))
               for o, t in zip(ours_all, theirs_all, strict=True) for s in o["steps"])  # fmt: skip
    return {"layers": len(ours_all[0]["steps"]), **summary, "max_abs_diff": diff}


def bench_deletion(model, x, targets, steps: int, device: str, chunk: int, maps: str) -> dict:
    import quantus

    _, _, h, w = x.shape
    per_step = max(1, h * w // steps)
    make = {"ranked": lambda px, pt: ranked(gradcam(model, px, pt)), "noisy": lambda px, pt:
            gradcam_untied(model, px, pt)}[maps]  # fmt: skip
    parts = [(px, pt, make(px, pt)) for px, pt in chunked(x, targets, chunk)]
    distinct = [len(torch.unique(m)) for _, _, part in parts for m in part]

    def ours(part):
        return perturbation_curves(model, part[0], part[1], part[2],
                                   pixels_per_step=per_step)["deletion"]  # fmt: skip

    def theirs(part):
        metric = quantus.PixelFlipping(features_in_step=per_step, perturb_baseline="black",
                                       disable_warnings=True)  # fmt: skip
        x_np, y_np, maps = part[0].cpu().numpy(), part[1].cpu().numpy(), part[2][:, None].numpy()
        return np.asarray(metric(model=model, x_batch=x_np, y_batch=y_np, a_batch=maps,
                                 device=device))  # fmt: skip

    summary, ours_all, theirs_all = interleaved(parts, ours, theirs)
    diff = max(float(np.abs(o[:, 1:] - t[:, 2::3]).max())
               for o, t in zip(ours_all, theirs_all, strict=True))  # fmt: skip
    return {"steps": steps, "maps": maps, "distinct_values_min": min(distinct),
            "pixels": h * w, **summary, "max_abs_diff": diff}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="smoke test: --images 4 --size 64 "
        "--model resnet18 --chunk 2",
    )  # fmt: skip
    parser.add_argument("--images", type=int, default=100, help="images (default 100)")
    parser.add_argument("--size", type=int, default=224, help="input size in px (default 224)")
    parser.add_argument("--model", default="resnet50", help="a torchvision model name")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--steps", type=int, default=32, help="deletion steps (default 32)")
    parser.add_argument("--chunk", type=int, default=10, help="images per timed chunk (default 10)")
    parser.add_argument("--only", choices=("checks", "mprt", "deletion"), help="run one part")
    parser.add_argument("--deletion-maps", choices=("ranked", "noisy"), default="ranked",
                        help="deletion on Grad-CAM's pixel ranks (no ties) or on Grad-CAM plus "
                        "1e-6 noise, which leaves float32 ties (default ranked)")  # fmt: skip
    args = parser.parse_args()
    facts = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
             "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
             "torch": torch.__version__, "threads": torch.get_num_threads(),
             "device": args.device, "model": f"{args.model} (torchvision, random init)",
             "images": args.images, "size": args.size, "chunk": args.chunk,
             "command": "python benchmarks/bench_explain.py " + " ".join(sys.argv[1:])}  # fmt: skip
    if args.device.startswith("cuda"):
        facts["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    print(json.dumps(facts))
    model, x, targets = setup(args.model, args.images, args.size, args.device)
    if args.only in (None, "checks"):
        print(json.dumps({"checks": bench_checks(model, x, targets)}))
    if args.only in (None, "mprt"):
        print(json.dumps({"mprt": bench_mprt(model, x, targets, args.device, args.chunk)}))
    if args.only in (None, "deletion"):
        deletion = bench_deletion(model, x, targets, args.steps, args.device, args.chunk,
                                  args.deletion_maps)  # fmt: skip
        print(json.dumps({"deletion": deletion}))


if __name__ == "__main__":
    main()
