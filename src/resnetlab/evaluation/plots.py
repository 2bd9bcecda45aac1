"""PNG plots for fine-tuning runs: confusion matrix, ROC curves, the lr range test, history.

matplotlib on the Agg backend (no display); files are written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..figures import pyplot, save_figure
from .calibration import calibration_errors, reliability
from .metrics import roc_auc, roc_curve
from .uncertainty import weighted_metrics


def plot_confusion(matrix: list[list[int]], classes: list[str], path: Path, title: str) -> Path:
    """Counts with row-normalised shading (recall per true class on the diagonal)."""
    plt = pyplot()
    counts = torch.tensor(matrix, dtype=torch.float64)
    shares = counts / counts.sum(1, keepdim=True).clamp_min(1)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * k, 1.0 + 0.55 * k) if k > 4 else (4, 3.4))
    ax.imshow(shares.numpy(), cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            colour = "white" if shares[i, j] > 0.5 else "black"
            ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", color=colour)
    ax.set_xticks(range(k), classes, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix, {title}")
    return save_figure(fig, path)


def plot_roc(
    probs: torch.Tensor, labels: torch.Tensor, classes: list[str], path: Path, title: str
) -> Path:
    """The ROC curve (binary: the second class is positive; more: one curve per class)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 4))
    targets = [1] if len(classes) == 2 else range(len(classes))
    for c in targets:
        positive = labels == c
        if positive.all() or not positive.any():
            continue
        fpr, tpr = roc_curve(probs[:, c], positive)
        auc = roc_auc(probs[:, c], positive)
        ax.plot(fpr.numpy(), tpr.numpy(), label=f"{classes[c]} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC, {title}")
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def plot_lr_find(
    lrs: list[float], losses: list[float], suggestions: dict[str, float], path: Path
) -> Path:
    """Smoothed loss against the learning rate (log axis), suggestions marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(lrs, losses)
    ax.set_xscale("log")
    for (name, lr), colour in zip(suggestions.items(), ("red", "green"), strict=False):
        ax.axvline(lr, color=colour, linestyle="--", linewidth=1, label=f"{name} {lr:.2g}")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title("learning-rate range test")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_history(records: list[dict[str, Any]], monitor: str, path: Path) -> Path:
    """Validation loss and the monitored metric per epoch, both phases."""
    plt = pyplot()
    evals = [r for r in records if r.get("kind") == "eval" and f"val_{monitor}" in r]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    epochs = [r["epoch"] for r in evals]
    ax.plot(epochs, [r["val_loss"] for r in evals], marker="o", label="val loss")
    if monitor != "loss":
        ax.plot(epochs, [r[f"val_{monitor}"] for r in evals], marker="s", label=f"val {monitor}")
    ax.set_xlabel("epoch")
    ax.set_title("validation per epoch")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_pr(scores, positive, name: str, path: Path, title: str) -> Path:
    """Precision against recall (the positive class), with the prevalence as the chance line."""
    plt = pyplot()
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], positive[order]
    last = np.r_[s[1:] != s[:-1], True]
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    recall = np.r_[0.0, tp / max(y.sum(), 1)]
    precision = np.r_[1.0, tp / np.maximum(tp + fp, 1)]
    ap = float(weighted_metrics(scores, positive, 0.5)["pr_auc"][0])
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.step(recall, precision, where="post", label=f"{name} (PR-AUC {ap:.3f})")
    ax.axhline(y.mean(), color="grey", linestyle=":", linewidth=1, label="prevalence")
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision (PPV)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"precision-recall, {title}")
    ax.legend(loc="lower left", fontsize=8)
    return save_figure(fig, path)


def plot_reliability(logits, labels, temperature: float, path: Path, title: str) -> Path:
    """Reliability diagrams before and after temperature scaling (15 equal-width bins)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.8), sharey=True)
    y = labels.long().numpy()
    cases = (("before", 1.0), (f"after (T = {temperature:.2f})", temperature))
    for ax, (name, t) in zip(axes, cases, strict=True):
        probs = torch.softmax(logits.double() / t, 1).numpy()
        table = reliability(probs, y)
        ece, mce = calibration_errors(probs, y)
        used = table["count"] > 0
        centres = (table["edges"][:-1] + table["edges"][1:]) / 2
        width = table["edges"][1] - table["edges"][0]
        ax.bar(centres[used], table["accuracy"][used], width=width * 0.95, color="#4c72b0",
               edgecolor="white", label="accuracy")  # fmt: skip
        ax.bar(centres[used], table["confidence"][used], width=width * 0.95, fill=False,
               edgecolor="#c44e52", linewidth=1.2, label="mean confidence")  # fmt: skip
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("confidence (top class)")
        ax.set_title(f"{name}: ECE {ece:.3f}, MCE {mce:.3f}", fontsize=9)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"reliability, {title}", fontsize=10)
    return save_figure(fig, path)


def plot_decision_curve(curve: dict[str, list[float]], threshold: float | None, path: Path,
                        title: str) -> Path:  # fmt: skip
    """Net benefit of the model, treat-all and treat-none against the threshold probability,
    with the operating threshold marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 3.8))
    t = np.asarray(curve["threshold"])
    ax.plot(t, curve["model"], color="#4c72b0", label="model")
    ax.plot(t, curve["treat_all"], color="#c44e52", linestyle="--", linewidth=1, label="treat all")
    ax.plot(t, curve["treat_none"], color="grey", linestyle=":", linewidth=1, label="treat none")
    if threshold is not None:
        ax.axvline(threshold, color="black", linewidth=0.8, label=f"threshold {threshold:.2f}")
    top = max(max(curve["model"]), max(curve["treat_all"]), 0.01)
    ax.set_ylim(-0.1 * top, 1.1 * top)
    ax.set_xlabel("threshold probability")
    ax.set_ylabel("net benefit")
    ax.set_title(f"decision curve, {title}")
    ax.legend(fontsize=8)
    return save_figure(fig, path)

