"""Explanations that are tested, not just drawn.

- **Model-parameter randomisation** (Adebayo et al. 2018, "Sanity Checks for Saliency Maps"):
  the layers are re-initialised one after another from the head down (cascading), and after
  each the maps are compared with the trained model's by Spearman rank correlation. A map that
  stays the same while the weights that made the decision are destroyed explains nothing about
  the model. Layers are those with ``reset_parameters`` (convs, BatchNorms, the head), reset in
  reverse module order under the seed ``seed + 1``, as ``quantus``'s MPRT does, so the two agree.
- **Deletion and insertion** (Petsiuk, Das & Saenko 2018): the most salient pixels first are
  replaced by a baseline (deletion) or put back onto it (insertion); a faithful map makes the
  class probability fall fast (low deletion area) and rise fast (high insertion area). Deletion
  is ``quantus``'s PixelFlipping with whole pixels per step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

Explain = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]  # -> maps (N, H, W)


def resettable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers a randomisation test resets, head first."""
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "reset_parameters")][::-1]


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their mean rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Spearman's rank correlation of each pair of maps (N, H, W): Pearson's on the ranks."""
    out = []
    for x, y in zip(a.reshape(len(a), -1).double().cpu().numpy(),
                    b.reshape(len(b), -1).double().cpu().numpy(), strict=True):  # fmt: skip
        rx, ry = _ranks(x) - (len(x) + 1) / 2, _ranks(y) - (len(y) + 1) / 2
        norm = np.sqrt((rx * rx).sum() * (ry * ry).sum())
        out.append((rx * ry).sum() / norm if norm > 0 else np.nan)
    return np.asarray(out, np.float64)


def cascading_randomisation(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    explain: Explain,
    *,
    seed: int = 42,
    stops: list[str] | None = None,
) -> dict[str, Any]:
    """Rank correlation between the maps of the trained model and of copies whose layers are
    reset from the head down. ``stops`` are the layer names after whose reset the maps are
    compared (default: after every layer); the model itself is left untouched."""
    original = explain(model, x, targets)
    randomised = copy.deepcopy(model).eval()
    layers = resettable_layers(randomised)
    wanted = {n for n, _ in layers} if stops is None else set(stops)
    steps: list[dict[str, Any]] = []
    for name, layer in layers:
        torch.manual_seed(seed + 1)
        layer.reset_parameters()  # type: ignore[operator]
        if name in wanted:
            rho = rank_correlation(original, explain(randomised, x, targets))
            mean = float(np.nanmean(rho)) if np.isfinite(rho).any() else float("nan")  # flat maps
            steps.append({"layer": name, "spearman": rho.tolist(), "mean": mean})
    return {"method": "cascading model-parameter randomisation (Adebayo et al. 2018)",
            "similarity": "Spearman rank correlation", "seed": seed, "steps": steps}  # fmt: skip


@torch.no_grad()
def _probability(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    probs = torch.softmax(model(x).float(), dim=1)
    return probs.gather(1, targets[:, None])[:, 0]


def perturbation_curves(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    saliency: torch.Tensor,
    *,
    pixels_per_step: int,
    baseline: torch.Tensor | float | None = None,
) -> dict[str, np.ndarray]:
    """Target-class probability as the most salient pixels are deleted (replaced by
    ``baseline``; default each image's minimum, quantus's "black") and inserted into the
    baseline image, ``pixels_per_step`` at a time; each curve starts at 0 pixels changed."""
    n, c, h, w = x.shape
    order = torch.argsort(saliency.reshape(n, -1), dim=1, descending=True, stable=True)
    if baseline is None:
        base = x.reshape(n, -1).min(1).values.view(n, 1, 1, 1).expand_as(x)
    else:
        base = torch.as_tensor(baseline, dtype=x.dtype).expand_as(x)
    deleted, inserted = x.clone(), base.clone()
    deletion, insertion = [_probability(model, x, targets)], [_probability(model, base, targets)]
    rows = torch.arange(n)[:, None]
    for start in range(0, h * w, pixels_per_step):
        pixels = order[:, start : start + pixels_per_step]
        for image, source in ((deleted, base), (inserted, x)):
            flat, values = image.view(n, c, -1), source.reshape(n, c, -1)
            flat[rows, :, pixels] = values[rows, :, pixels]
        deletion.append(_probability(model, deleted, targets))
        insertion.append(_probability(model, inserted, targets))
    return {"deletion": torch.stack(deletion, 1).cpu().numpy(),
            "insertion": torch.stack(insertion, 1).cpu().numpy()}  # fmt: skip


def area(curve: np.ndarray) -> np.ndarray:
    """Area under each curve (rows) over a fraction axis from 0 to 1 (trapezoids)."""
    steps = curve.shape[1] - 1
    return (curve[:, 1:] + curve[:, :-1]).sum(1) / (2 * steps)


def faithfulness(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    saliency: torch.Tensor,
    *,
    steps: int = 32,
) -> dict[str, Any]:
    """Deletion and insertion areas per image, and the same for a random map of each image
    (the floor a map must beat)."""
    n, _, h, w = x.shape
    per_step = max(1, -(-h * w // steps))
    curves = perturbation_curves(model, x, targets, saliency, pixels_per_step=per_step)
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand(saliency.shape, generator=generator)
    chance = perturbation_curves(model, x, targets, noise, pixels_per_step=per_step)
    return {
        "method": "deletion / insertion (Petsiuk et al. 2018)",
        "pixels_per_step": per_step,
        "deletion_auc": area(curves["deletion"]).tolist(),
        "insertion_auc": area(curves["insertion"]).tolist(),
        "random_deletion_auc": area(chance["deletion"]).tolist(),
        "random_insertion_auc": area(chance["insertion"]).tolist(),
    }
