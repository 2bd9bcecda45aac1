"""The explanation checks ``resnetlab explain --checks`` runs, timed, and each metric against
``quantus`` on the same maps in the same run: the cascading randomisation of Grad-CAM at every
layer against quantus's MPRT (top down, seed 42: the same numbers; both on maps with the same 1e-6
noise added, as quantus refuses all-zero maps), and the deletion curve
against quantus's PixelFlipping (the same curve; quantus steps through the channels, so it takes
three steps for each of ours). The model is torchvision's ResNet-50 with random weights (no
download; the timings do not depend on what the weights learned), on random 224 px inputs.

    python benchmarks/bench_explain.py [--images 100] [--size 224] [--model resnet50]
                                       [--device cpu] [--steps 32] [--only checks|mprt|deletion]

A smoke test (seconds): ``--images 2 --size 64 --model resnet18``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

import numpy as np
import torch
import torchvision

from resnetlab.analysis.explanation_checks import cascading_randomisation, perturbation_curves
from resnetlab.analysis.explanation_suite import run_checks
from resnetlab.analysis.gradcam import cam_maps


def timed(fn) -> tuple[float, object]:
    """Wall time of one call (synchronised on CUDA) and its result."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


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
    """Grad-CAM plus the same 1e-6 noise every call: no ties and never all zero (quantus
    refuses a batch of all-zero maps, which a randomised ResNet's Grad-CAM can be)."""
    maps = gradcam(model, x, targets)
    return maps + torch.rand(maps.shape, generator=torch.Generator().manual_seed(3)) * 1e-6


def bench_checks(model, x, targets) -> dict:
    """The whole of explain's checks: Grad-CAM and Grad-CAM++, one curve point per block,
    deletion and insertion for both maps and the random floor."""
    seconds, result = timed(lambda: run_checks(model, x, targets, ("gradcam", "gradcam++")))
    blocks = len(result["methods"]["gradcam"]["randomisation"])
    return {"ours_s": round(seconds, 2), "blocks": blocks, "verdicts": result["verdicts"]}


def bench_mprt(model, x, targets, device: str) -> dict:
    import quantus  # a dev dependency, imported here so --only checks runs without it

    def explain(model, inputs, targets, **kwargs):
        inputs = torch.as_tensor(inputs, device=device)
        wanted = torch.as_tensor(targets, device=device)
        return gradcam_untied(model.eval(), inputs, wanted)[:, None]

    ours_s, ours = timed(lambda: cascading_randomisation(model, x, targets, gradcam_untied,
                                                         seed=42))  # fmt: skip
    metric = quantus.MPRT(layer_order="top_down", seed=42, disable_warnings=True)
    theirs_s, theirs = timed(lambda: metric(
        model=model, x_batch=x.cpu().numpy(), y_batch=targets.cpu().numpy(), a_batch=None,
        explain_func=lambda **kw: explain(**kw).numpy(), device=device))  # fmt: skip
    diff = max(float(np.nanmax(np.abs(np.asarray(s["spearman"]) - np.asarray(theirs[s["layer"]]))))
               for s in ours["steps"])  # fmt: skip
    return {"layers": len(ours["steps"]), "ours_s": round(ours_s, 2),
            "quantus_s": round(theirs_s, 2), "ratio_quantus_over_ours": round(theirs_s / ours_s, 2),
            "max_abs_diff": diff}  # fmt: skip


def bench_deletion(model, x, targets, steps: int, device: str) -> dict:
    import quantus

    _, _, h, w = x.shape
    saliency = gradcam_untied(model, x, targets)
    per_step = max(1, h * w // steps)
    ours_s, ours = timed(lambda: perturbation_curves(
        model, x, targets, saliency, pixels_per_step=per_step)["deletion"])  # fmt: skip
    metric = quantus.PixelFlipping(features_in_step=per_step, perturb_baseline="black",
                                   disable_warnings=True)  # fmt: skip
    theirs_s, theirs = timed(lambda: np.asarray(metric(
        model=model, x_batch=x.cpu().numpy(), y_batch=targets.cpu().numpy(),
        a_batch=saliency[:, None].numpy(), device=device)))  # fmt: skip
    return {"steps": steps, "ours_s": round(ours_s, 2), "quantus_s": round(theirs_s, 2),
            "ratio_quantus_over_ours": round(theirs_s / ours_s, 2),
            "max_abs_diff": float(np.abs(ours[:, 1:] - theirs[:, 2::3]).max())}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="smoke test: --images 2 --size 64 "
        "--model resnet18",
    )  # fmt: skip
    parser.add_argument("--images", type=int, default=100, help="images (default 100)")
    parser.add_argument("--size", type=int, default=224, help="input size in px (default 224)")
    parser.add_argument("--model", default="resnet50", help="a torchvision model name")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--steps", type=int, default=32, help="deletion steps (default 32)")
    parser.add_argument("--only", choices=("checks", "mprt", "deletion"), help="run one part")
    args = parser.parse_args()
    facts = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
             "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
             "torch": torch.__version__, "threads": torch.get_num_threads(),
             "device": args.device, "model": f"{args.model} (torchvision, random init)",
             "images": args.images, "size": args.size}  # fmt: skip
    if args.device.startswith("cuda"):
        facts["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    print(json.dumps(facts))
    model, x, targets = setup(args.model, args.images, args.size, args.device)
    if args.only in (None, "checks"):
        print(json.dumps({"checks": bench_checks(model, x, targets)}))
    if args.only in (None, "mprt"):
        print(json.dumps({"mprt": bench_mprt(model, x, targets, args.device)}))
    if args.only in (None, "deletion"):
        deletion = bench_deletion(model, x, targets, args.steps, args.device)
        print(json.dumps({"deletion": deletion}))


if __name__ == "__main__":
    main()
