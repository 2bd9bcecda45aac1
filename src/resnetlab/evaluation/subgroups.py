"""Metrics per subgroup: for each value of a manifest column (site, sex, scanner), the images
that have it, measured as the whole split is, with stratified bootstrap 95 % intervals, and the
spread between subgroups (a model can be good on average and poor for one site). A subgroup too
small to measure, or lacking a class so ROC-AUC is undefined, is listed and said so.

Two classes: n, positives, ROC-AUC, sensitivity, specificity and accuracy at the model's
threshold (``evaluation/uncertainty.py``). More classes: n, accuracy (bootstrap interval) and
the macro one-vs-rest ROC-AUC (point value).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .metrics import roc_auc
from .uncertainty import bootstrap_intervals, resample_counts

MIN_IMAGES = 10  # fewer images than this: listed, not measured
RESAMPLES = 2000
BLANK = "(blank)"  # the subgroup of images whose column is empty
BINARY = ("roc_auc", "sensitivity", "specificity", "accuracy")
MULTI = ("accuracy", "roc_auc")


def subgroup_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    columns: dict[str, list[str]],
    threshold: float | None,
    *,
    seed: int = 0,
    resamples: int = RESAMPLES,
    min_images: int = MIN_IMAGES,
) -> dict[str, Any]:
    """{column: {"subgroups": {value: figures}, "spread": ...}} for the images' calibrated
    probabilities (n, classes), labels and the chosen columns' values per image. Two classes
    are decided at ``threshold`` (None: 0.5, the argmax)."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels, np.int64)
    binary = probs.shape[1] == 2
    cut = 0.5 if threshold is None else float(threshold)
    out: dict[str, Any] = {
        "threshold": cut if binary else None,
        "min_images": min_images,
        "bootstrap": {"resamples": resamples, "seed": seed, "level": 0.95,
                      "method": "stratified percentile" if binary else "percentile"},
        "columns": {},
    }  # fmt: skip
    for name, values in columns.items():
        shown = np.array([v or BLANK for v in values])
        groups = {}
        for value in sorted(set(shown.tolist())):
            index = np.flatnonzero(shown == value)
            p, y = probs[index], labels[index]
            groups[value] = (
                _binary(p[:, 1], y == 1, cut, seed, resamples, min_images)
                if binary
                else _multi(p, y, seed, resamples, min_images)
            )  # fmt: skip
        out["columns"][name] = {"subgroups": groups, "spread": spread(groups)}
    return out


def _binary(p1, positive, cut, seed, resamples, min_images) -> dict[str, Any]:
    n, pos = len(p1), int(positive.sum())
    row: dict[str, Any] = {"n": n, "positives": pos}
    if n < min_images:
        return row | {"measured": False, "why": f"too few images ({n} < {min_images})"}
    if pos in (0, n):
        which = "positives" if pos == 0 else "negatives"
        return row | {"measured": False, "why": f"no {which}: ROC-AUC undefined"}
    ci = bootstrap_intervals(p1, positive, cut, n_resamples=resamples, seed=seed)
    return row | {"measured": True, **{k: ci[k] for k in BINARY}}


def _multi(probs, labels, seed, resamples, min_images) -> dict[str, Any]:
    n = len(labels)
    row: dict[str, Any] = {"n": n, "per_class": np.bincount(labels, minlength=probs.shape[1])
                           .tolist()}  # fmt: skip
    if n < min_images:
        return row | {"measured": False, "why": f"too few images ({n} < {min_images})"}
    correct = (probs.argmax(1) == labels).astype(np.float64)
    draws = resample_counts(n, resamples, np.random.default_rng(seed)) @ correct / n
    low, high = np.percentile(draws, [2.5, 97.5])
    row["accuracy"] = {"value": float(correct.mean()), "low": float(low), "high": float(high)}
    scores, truth = torch.from_numpy(probs), torch.from_numpy(labels)
    aucs = [roc_auc(scores[:, c], truth == c) for c in range(probs.shape[1])
            if 0 < int((truth == c).sum()) < n]  # fmt: skip
    if not aucs:
        return row | {"measured": False, "why": "one class only: ROC-AUC undefined"}
    row["roc_auc"] = {"value": float(np.mean(aucs)), "low": None, "high": None}
    return row | {"measured": True}


def spread(groups: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per metric, over the measured subgroups: max - min, and the lowest and highest."""
    measured = {k: g for k, g in groups.items() if g.get("measured")}
    out: dict[str, Any] = {}
    if len(measured) < 2:
        return out
    for metric in BINARY if "sensitivity" in next(iter(measured.values())) else MULTI:
        values = {k: g[metric]["value"] for k, g in measured.items()}
        low, high = min(values, key=values.__getitem__), max(values, key=values.__getitem__)
        out[metric] = {"range": values[high] - values[low], "lowest": low, "highest": high,
                       "min": values[low], "max": values[high]}  # fmt: skip
    return out


def subgroup_lines(section: dict[str, Any], split: str) -> list[str]:
    """One line per subgroup, one per column's spread, and the subgroups not measured."""
    lines = []

    def show(m: dict[str, Any]) -> str:
        if m.get("low") is None:
            return f"{m['value']:.3f}"
        return f"{m['value']:.3f} [{m['low']:.3f}, {m['high']:.3f}]"

    for column, part in section["columns"].items():
        for value, g in part["subgroups"].items():
            head = f"{split} {column}={value} (n {g['n']}"
            head += f", {g['positives']} positive)" if "positives" in g else ")"
            if not g["measured"]:
                lines.append(f"{head}: not measured, {g['why']}")
                continue
            metrics = BINARY if "sensitivity" in g else MULTI
            lines.append(head + ": " + ", ".join(
                f"{k.replace('roc_auc', 'ROC-AUC')} {show(g[k])}" for k in metrics))  # fmt: skip
        if part["spread"]:
            lines.append(f"{split} spread over {column}: " + "; ".join(
                f"{k.replace('roc_auc', 'ROC-AUC')} {s['range']:.3f} (lowest {column}="
                f"{s['lowest']})" for k, s in part["spread"].items()))  # fmt: skip
    if section.get("threshold") is not None:
        lines.append(f"subgroup rates at threshold {section['threshold']:.4f}; 95 % bootstrap "
                     f"intervals ({section['bootstrap']['resamples']} resamples)")  # fmt: skip
    return lines
