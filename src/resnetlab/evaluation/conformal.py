"""Abstention with a guarantee: split-conformal prediction sets (Vovk et al. 2005; Sadinle, Lei &
Wasserman 2019, the "LAC" score).

On the validation split the score of each image is ``1 - p(true class)``; the threshold is the
``ceil((n + 1)(1 - alpha)) / n`` empirical quantile of those scores. A new image's set holds every
class whose ``1 - p`` is at most the threshold. For exchangeable data the set holds the true
class with probability at least ``1 - alpha``; a set with both classes of a two-class model is
the model saying "refer to a human", an empty one that the image is unlike the calibration data.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..artifact import conformal_sets
from ..card import check_fit_split
from ..errors import ResnetlabError


def fit_conformal(
    probabilities: np.ndarray, labels: np.ndarray, coverage: float, *, split: str
) -> dict[str, Any]:
    """The threshold on ``1 - p`` that gives sets covering the true class with probability at
    least ``coverage``, fitted on labelled validation probabilities (n, classes); ``split``
    names where they come from, and test is refused (its coverage would not be held out)."""
    check_fit_split(split, "conformal threshold")
    if not 0 < coverage < 1:
        raise ResnetlabError(
            f"coverage must lie strictly between 0 and 1, got {coverage}; give e.g. 0.95."
        )
    probs, labels = np.asarray(probabilities, np.float64), np.asarray(labels, np.int64)
    n = len(labels)
    rank = math.ceil((n + 1) * coverage)
    if rank > n:
        raise ResnetlabError(
            f"{n} validation images are too few for {coverage:.0%} coverage (it needs at least "
            f"{math.ceil(coverage / (1 - coverage))}); lower the coverage or give more images."
        )
    scores = np.sort(1 - probs[np.arange(n), labels])
    return {"method": "split conformal (LAC)", "coverage": coverage,
            "threshold": float(scores[rank - 1]), "calibration_images": n,
            "fitted_on": split}  # fmt: skip


def prediction_sets(probabilities: np.ndarray, fit: dict[str, Any]) -> np.ndarray:
    """Boolean (n, classes): which classes each image's set holds (the model's own rule,
    :func:`resnetlab.artifact.conformal_sets`)."""
    probs = torch.as_tensor(np.asarray(probabilities, np.float64))
    return conformal_sets(probs, float(fit["threshold"])).numpy()


def set_summary(sets: np.ndarray, labels: np.ndarray | None = None) -> dict[str, Any]:
    """How often sets hold one class (a decision), several (refer) or none; with labels, the
    coverage achieved."""
    size = sets.sum(1)
    out: dict[str, Any] = {
        "images": int(len(sets)),
        "single": float(np.mean(size == 1)),
        "refer": float(np.mean(size > 1)),
        "empty": float(np.mean(size == 0)),
        "mean_size": float(size.mean()) if len(size) else float("nan"),
    }
    if labels is not None:
        labels = np.asarray(labels, np.int64)
        out["coverage_achieved"] = float(np.mean(sets[np.arange(len(labels)), labels]))
    return out
