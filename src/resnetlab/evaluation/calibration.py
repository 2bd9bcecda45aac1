"""Calibration: expected and maximum calibration error (equal-width and equal-mass bins),
the Brier score, reliability curves, and temperature scaling (Guo et al., 2017).

The temperature T divides the logits; it is fitted on validation by minimising the negative
log-likelihood with L-BFGS over log T (so T stays positive). It changes no ranking (the
ROC-AUC is the same) but makes the probabilities mean what they say.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ResnetlabError

BINS = 15  # Guo et al.'s choice
T_RANGE = (0.05, 20.0)  # separable validation drives the NLL optimum towards T = 0


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The temperature minimising the NLL of ``softmax(logits / T)`` on labelled logits,
    kept within ``T_RANGE``."""
    logits, labels = logits.detach().double().cpu(), labels.detach().long().cpu()
    if len(labels) == 0:
        raise ResnetlabError("temperature scaling needs validation images; give a val split.")
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [log_t],
        lr=0.5,
        max_iter=max_iter,
        tolerance_grad=1e-12,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimiser.step(closure)
    return min(max(float(log_t.detach().exp()), T_RANGE[0]), T_RANGE[1])


def bin_edges(confidence: np.ndarray, bins: int, scheme: str) -> np.ndarray:
    """Equal-width edges on [0, 1], or equal-mass edges (quantiles of the confidences)."""
    if scheme == "width":
        return np.linspace(0.0, 1.0, bins + 1)
    if scheme == "mass":
        edges = np.quantile(confidence, np.linspace(0, 1, bins + 1))
        edges[0], edges[-1] = 0.0, 1.0
        return edges
    raise ResnetlabError(f"bin scheme {scheme!r} is unknown; use width or mass.")


def reliability(
    probs: np.ndarray, labels: np.ndarray, bins: int = BINS, scheme: str = "width"
) -> dict[str, np.ndarray]:
    """Per bin of top-label confidence: count, mean confidence and accuracy."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    confidence, correct = probs.max(1), probs.argmax(1) == labels
    edges = bin_edges(confidence, bins, scheme)
    # Bins are (lo, hi]; the first also takes confidence 0.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    conf_sum = np.bincount(index, confidence, minlength=bins)
    acc_sum = np.bincount(index, correct.astype(np.float64), minlength=bins)
    safe = np.maximum(count, 1)
    return {
        "edges": edges, "count": count, "confidence": conf_sum / safe, "accuracy": acc_sum / safe
    }  # fmt: skip


def calibration_errors(
    probs: np.ndarray, labels: np.ndarray, bins: int = BINS, scheme: str = "width"
) -> tuple[float, float]:
    """(ECE, MCE): the count-weighted mean and the largest |accuracy - confidence| over bins."""
    table = reliability(probs, labels, bins, scheme)
    used = table["count"] > 0
    gap = np.abs(table["accuracy"] - table["confidence"])[used]
    weights = table["count"][used] / table["count"].sum()
    return float((weights * gap).sum()), float(gap.max()) if len(gap) else float("nan")


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared error of the probabilities: two classes, of the positive one (as
    scikit-learn's ``brier_score_loss``); more, summed over classes."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    if probs.shape[1] == 2:
        return float(np.mean((probs[:, 1] - (labels == 1)) ** 2))
    onehot = np.eye(probs.shape[1])[labels]
    return float(np.mean(((probs - onehot) ** 2).sum(1)))


def calibration_summary(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> dict:
    """ECE/MCE (both bin schemes), Brier and NLL before and after temperature scaling."""
    out: dict[str, Any] = {}
    y = labels.long().cpu()
    for name, t in (("before", 1.0), ("after", temperature)):
        scaled = logits.double().cpu() / t
        probs = torch.softmax(scaled, 1).numpy()
        ece_w, mce_w = calibration_errors(probs, y.numpy(), scheme="width")
        ece_m, mce_m = calibration_errors(probs, y.numpy(), scheme="mass")
        out[name] = {
            "temperature": t,
            "ece": ece_w,
            "mce": mce_w,
            "ece_equal_mass": ece_m,
            "mce_equal_mass": mce_m,
            "brier": brier_score(probs, y.numpy()),
            "nll": float(torch.nn.functional.cross_entropy(scaled, y)),
        }
    out["bins"] = BINS
    return out
