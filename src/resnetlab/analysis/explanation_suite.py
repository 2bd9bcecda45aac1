"""The explanation checks ``resnetlab explain`` reports, with verdicts computed from the
numbers: the cascading randomisation curve of Grad-CAM and Grad-CAM++ (block by block from the
head down) and their deletion / insertion areas against a random map, each difference with a
bootstrap interval over the images. The metrics themselves live in ``explanation_checks``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn

from .explanation_checks import (
    area,
    cascading_randomisation,
    perturbation_curves,
    resettable_layers,
)
from .gradcam import cam_maps

SIMILAR = 0.5  # a mean rank correlation at or above this: the map has not moved away
LEVEL = 0.95
RESAMPLES = 2000
STEPS = 32  # deletion / insertion steps over the pixels


def block_stops(model: nn.Module) -> dict[str, str]:
    """{layer name: block name}: the last layer reset within each block (a stage's child such
    as ``layer4.2`` or ``features.28``, else a top-level module such as ``fc``), so the curve
    has one point per block from the head down."""
    last: dict[str, str] = {}
    for name, _ in resettable_layers(model):
        top = name.split(".")[0]
        staged = isinstance(model.get_submodule(top), nn.Sequential) and "." in name
        last[".".join(name.split(".")[:2]) if staged else top] = name
    return {name: block for block, name in last.items()}


def randomisation_verdict(curve: list[dict[str, Any]], label: str) -> tuple[bool, str]:
    """Passes when the mean rank correlation falls below ``SIMILAR`` at some block."""
    means = [s["mean"] for s in curve]
    below = [i for i, m in enumerate(means) if np.isfinite(m) and m < SIMILAR]
    if below:
        i = below[0]
        return True, (
            f"{label} passes the randomisation test: the mean rank correlation with the "
            f"trained model's maps falls to {means[i]:.2f} (< {SIMILAR}) once the head down to "
            f"{curve[i]['block']} is re-initialised ({i + 1} of {len(curve)} blocks)."
        )
    finite = [m for m in means if np.isfinite(m)]
    low = f"{min(finite):.2f}" if finite else "n/a"
    return False, (
        f"{label} fails the randomisation test: its maps stay similar to the trained model's "
        f"(mean rank correlation never below {SIMILAR}; lowest {low}), so they show the image "
        "more than what the model learned."
    )


def paired_interval(values: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Mean of per-image values with a percentile bootstrap interval over the images
    (``scipy.stats.bootstrap``); no interval for fewer than two images."""
    values = np.asarray(values, float)
    out: dict[str, Any] = {"n": len(values), "mean": float(values.mean()), "lo": None,
                           "hi": None}  # fmt: skip
    if len(values) >= 2 and np.ptp(values) > 0:
        boot = stats.bootstrap(  # random_state: scipy >= 1.10 (rng= only from 1.15)
            (values,), np.mean, confidence_level=LEVEL, n_resamples=RESAMPLES,
            method="percentile", random_state=np.random.default_rng(seed),
        )  # fmt: skip
        ci = boot.confidence_interval
        out |= {"lo": float(ci.low), "hi": float(ci.high)}
    elif len(values) >= 2:
        out |= {"lo": out["mean"], "hi": out["mean"]}
    return out


def faithfulness_verdict(label: str, kind: str, gain: dict[str, Any]) -> tuple[str, str]:
    """("better" | "worse" | "not shown", a sentence): the map against the random floor by
    the interval of its per-image gain (random minus map for deletion, map minus random for
    insertion: positive is better)."""
    mean, lo, hi = gain["mean"], gain["lo"], gain["hi"]
    if lo is None:
        return "not shown", (f"{label} {kind}: {mean:+.3f} against the random map; one image "
                             "gives no interval.")  # fmt: skip
    ci = f"{mean:+.3f} (95 % CI {lo:+.3f} to {hi:+.3f}, {gain['n']} images)"
    if lo > 0:
        return "better", f"{label} beats the random map on {kind}: area better by {ci}."
    if hi < 0:
        return "worse", f"{label} is worse than the random map on {kind}: {ci}."
    return "not shown", f"{label} is not shown better than the random map on {kind}: {ci}."


def run_checks(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    methods: tuple[str, ...],
    *,
    layer: str | None = None,
    seed: int = 42,
    steps: int = STEPS,
) -> dict[str, Any]:
    """The randomisation curve and deletion / insertion areas of each method's maps of the
    inputs ``x`` for ``targets``, the random-map floor, and the verdicts."""
    stops = block_stops(model)
    n, _, h, w = x.shape
    per_step = max(1, -(-h * w // steps))
    noise = torch.rand((n, h, w), generator=torch.Generator().manual_seed(0)).to(x.device)
    floor = perturbation_curves(model, x, targets, noise, pixels_per_step=per_step)
    result: dict[str, Any] = {
        "images": n, "seed": seed, "similar_below": SIMILAR, "pixels_per_step": per_step,
        "random": {k: {"curve": v.mean(0).tolist(), "auc": area(v).tolist()}
                   for k, v in floor.items()},
        "methods": {}, "verdicts": [],
    }  # fmt: skip
    for method in methods:

        def explain(net: nn.Module, inputs: torch.Tensor, wanted: torch.Tensor, m=method):
            return cam_maps(net, inputs, method=m, layer=layer, target=wanted)["maps"]

        cascade = cascading_randomisation(model, x, targets, explain, seed=seed, stops=list(stops))
        curve = [{"block": stops[s["layer"]], **s} for s in cascade["steps"]]
        label = "Grad-CAM" if method == "gradcam" else "Grad-CAM++"
        passed, sentence = randomisation_verdict(curve, label)
        maps = explain(model, x, targets).to(x.device)
        curves = perturbation_curves(model, x, targets, maps, pixels_per_step=per_step)
        entry: dict[str, Any] = {"label": label, "randomisation": curve,
                                 "randomisation_passes": passed}  # fmt: skip
        verdicts = [sentence]
        for kind in ("deletion", "insertion"):
            auc, chance = area(curves[kind]), np.asarray(result["random"][kind]["auc"])
            gain = paired_interval(chance - auc if kind == "deletion" else auc - chance)
            word, sentence = faithfulness_verdict(label, kind, gain)
            entry[kind] = {"curve": curves[kind].mean(0).tolist(), "auc": auc.tolist(),
                           "gain_over_random": gain, "verdict": word}  # fmt: skip
            verdicts.append(sentence)
        result["methods"][method] = entry
        result["verdicts"] += verdicts
    return result


__all__ = ["block_stops", "faithfulness_verdict", "paired_interval", "randomisation_verdict",
           "run_checks"]  # fmt: skip
