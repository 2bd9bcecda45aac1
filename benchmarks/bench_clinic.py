"""Clinical figures on this CPU, each against its reference in the same run: the stratified
bootstrap (1,000 resamples of 10,000 predictions: ROC-AUC, PR-AUC, accuracy, sensitivity,
specificity) against ``scipy.stats.bootstrap`` of ROC-AUC alone; DeLong's test of two models on
``--delong-n`` predictions against the midrank loop of the widely copied fast-DeLong code (Sun &
Xu 2014), which is what resnetlab ran before; Grad-CAM of 100 images at 224 px with ResNet-50
against the ``grad-cam`` package (same model, layer and images); and the deletion curve of those
maps against ``quantus``'s PixelFlipping (the same curve: quantus steps through the channels, so
it takes three steps for each of ours). The scipy reference computes each resample's ROC-AUC
with scikit-learn.

    python benchmarks/bench_clinic.py [--n 10000] [--resamples 1000] [--images 100] [--size 224]
                                      [--delong-n 100000] [--only bootstrap|delong|gradcam|deletion]
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
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from scipy import stats
from sklearn.metrics import roc_auc_score

from resnetlab import create_model
from resnetlab.analysis.explanation_checks import perturbation_curves
from resnetlab.analysis.gradcam import cam_maps
from resnetlab.evaluation.uncertainty import bootstrap_intervals, delong_test


def best_of(fn, repeats: int) -> tuple[float, object]:
    """The fastest of ``repeats`` wall times and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def bench_bootstrap(n: int, resamples: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    y = rng.random(n) < 0.3
    s = rng.random(n) + 0.5 * y
    ours_s, ours = best_of(lambda: bootstrap_intervals(s, y, 0.5, n_resamples=resamples), repeats)

    def auc(pos, neg, axis=-1):  # what one would write: scikit-learn's ROC-AUC per resample
        scores = np.concatenate([pos, neg], axis=axis)
        labels = np.r_[np.ones(pos.shape[-1], bool), np.zeros(neg.shape[-1], bool)]
        return roc_auc_score(labels, scores)

    def scipy_run():
        result = stats.bootstrap(
            (s[y], s[~y]), auc, n_resamples=resamples, vectorized=False, paired=False,
            method="percentile", random_state=np.random.default_rng(1),
        )  # fmt: skip
        return result.confidence_interval

    scipy_s, ref = best_of(scipy_run, 1)
    return {
        "predictions": n,
        "resamples": resamples,
        "ours_s": round(ours_s, 3),
        "scipy_roc_auc_only_s": round(scipy_s, 3),
        "ratio_scipy_over_ours": round(scipy_s / ours_s, 1),
        "roc_auc_ci_ours": [round(ours["roc_auc"]["low"], 4), round(ours["roc_auc"]["high"], 4)],
        "roc_auc_ci_scipy": [round(float(ref.low), 4), round(float(ref.high), 4)],
    }


def loop_midrank(x: np.ndarray) -> np.ndarray:
    """The reference: the fast-DeLong code's midranks, a Python loop over sorted ties."""
    order = np.argsort(x)
    z = x[order]
    n = len(x)
    t = np.zeros(n, dtype=float)
    i = 0
    while i < n:
        j = i
        while j < n and z[j] == z[i]:
            j += 1
        t[i:j] = 0.5 * (i + j - 1)
        i = j
    out = np.empty(n, dtype=float)
    out[order] = t + 1
    return out


def loop_delong(a: np.ndarray, b: np.ndarray, y: np.ndarray) -> float:
    """The reference DeLong p-value, with the loop midranks."""
    scores = np.stack([a, b])
    x, z = scores[:, y], scores[:, ~y]
    m, n = x.shape[1], z.shape[1]
    tx = np.stack([loop_midrank(r) for r in x])
    tz = np.stack([loop_midrank(r) for r in z])
    tall = np.stack([loop_midrank(r) for r in scores])
    auc = tall[:, y].sum(1) / (m * n) - (m + 1) / (2 * n)
    v10, v01 = (tall[:, y] - tx) / n, 1 - (tall[:, ~y] - tz) / m
    cov = np.cov(v10) / m + np.cov(v01) / n
    z_value = (auc[0] - auc[1]) / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    return float(stats.norm.sf(abs(z_value)) * 2)


def bench_delong(n: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    y = rng.random(n) < 0.3
    a = np.round(rng.random(n) + 0.5 * y, 6)  # six decimals, as predictions_*.csv holds
    b = np.round(a + rng.normal(0, 0.05, n), 6)
    ours_s, ours = best_of(lambda: delong_test(a, b, y), repeats)
    loop_s, ref = best_of(lambda: loop_delong(a, b, y), 1)
    return {"predictions": n, "ours_s": round(ours_s, 3), "loop_s": round(loop_s, 3),
            "ratio_loop_over_ours": round(loop_s / ours_s, 1),
            "p_ours": ours["p_value"], "p_loop": ref}  # fmt: skip


def bench_deletion(images: int, size: int, steps: int) -> dict:
    import quantus  # a dev dependency, imported here so the other parts run without it

    torch.manual_seed(0)
    model = create_model("resnet50", num_classes=1000).eval()
    x = torch.randn(images, 3, size, size)
    targets = torch.arange(images) % 1000
    saliency = cam_maps(model, x, target=targets)["maps"] + torch.rand(images, size, size) * 1e-6
    per_step = size * size // steps
    ours_s, ours = best_of(lambda: perturbation_curves(
        model, x, targets, saliency, pixels_per_step=per_step)["deletion"], 1)  # fmt: skip
    metric = quantus.PixelFlipping(features_in_step=per_step, perturb_baseline="black",
                                   disable_warnings=True)  # fmt: skip
    theirs_s, theirs = best_of(lambda: np.asarray(metric(
        model=model, x_batch=x.numpy(), y_batch=targets.numpy(),
        a_batch=saliency[:, None].numpy(), device="cpu")), 1)  # fmt: skip
    return {"model": "resnet50 (random init)", "images": images, "size": size, "steps": steps,
            "ours_s": round(ours_s, 2), "quantus_s": round(theirs_s, 2),
            "ratio_quantus_over_ours": round(theirs_s / ours_s, 2),
            "max_abs_diff": float(np.abs(ours[:, 1:] - theirs[:, 2::3]).max())}  # fmt: skip


def bench_gradcam(images: int, size: int, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = create_model("resnet50", num_classes=1000).eval()
    x = torch.randn(images, 3, size, size)
    layer = model.get_submodule("layer4.2")
    targets = torch.arange(images) % 1000

    def ours_run():
        return cam_maps(model, x, target=targets, batch_size=batch)["maps"]

    def theirs_run():
        out = []
        with GradCAM(model=model, target_layers=[layer]) as cam:
            for start in range(0, images, batch):
                chunk = x[start : start + batch]
                wanted = [ClassifierOutputTarget(int(c)) for c in targets[start : start + batch]]
                out.append(cam(input_tensor=chunk, targets=wanted))
        return np.concatenate(out)

    ours_s = theirs_s = float("inf")
    for _ in range(repeats):  # interleaved, so a busy moment hurts both alike
        t, ours = best_of(ours_run, 1)
        ours_s = min(ours_s, t)
        t, theirs = best_of(theirs_run, 1)
        theirs_s = min(theirs_s, t)
    return {
        "model": "resnet50 (random init)", "layer": "layer4.2", "images": images, "size": size,
        "batch": batch, "ours_s": round(ours_s, 2), "grad_cam_s": round(theirs_s, 2),
        "ratio_grad_cam_over_ours": round(theirs_s / ours_s, 2),
        "max_abs_diff": float(np.abs(ours.numpy() - theirs).max()),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--delong-n", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=32, help="deletion steps")
    parser.add_argument("--only", choices=("bootstrap", "delong", "gradcam", "deletion"),
                        help="run one part")  # fmt: skip
    args = parser.parse_args()
    facts = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
             "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
             "torch": torch.__version__, "threads": torch.get_num_threads()}  # fmt: skip
    print(json.dumps(facts))
    if args.only in (None, "bootstrap"):
        print(json.dumps({"bootstrap": bench_bootstrap(args.n, args.resamples, args.repeats)}))
    if args.only in (None, "delong"):
        print(json.dumps({"delong": bench_delong(args.delong_n, args.repeats)}))
    if args.only in (None, "gradcam"):
        grad = bench_gradcam(args.images, args.size, args.batch, args.repeats)
        print(json.dumps({"gradcam": grad}))
    if args.only in (None, "deletion"):
        print(json.dumps({"deletion": bench_deletion(args.images, args.size, args.steps)}))


if __name__ == "__main__":
    main()
