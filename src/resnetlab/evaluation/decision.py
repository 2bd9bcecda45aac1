"""What a two-class decision is worth: decision curves (Vickers & Elkin 2006) and the predictive
values at a deployment prevalence.

Net benefit at a threshold probability ``t`` counts true positives and charges each false
positive the odds ``t / (1 - t)`` a clinician implies by choosing ``t``:
``NB(t) = TP/n - FP/n * t/(1 - t)``, against treating everyone (``prevalence - (1 -
prevalence) * t/(1 - t)``) and treating no one (0). A model is worth using at ``t`` only where
its curve lies above both.

Sensitivity and specificity do not depend on how common the condition is; PPV and NPV do.
A balanced test set (prevalence 0.5) overstates the PPV of a screening test used where the
condition is rare, so both are restated at the prevalence the user names (Bayes' rule).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ResnetlabError

THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)  # dcurves' default grid


def decision_curve(
    probability: np.ndarray, positive: np.ndarray, thresholds: np.ndarray = THRESHOLDS
) -> dict[str, list[float]]:
    """Net benefit of the model, of treating all and of treating none at each threshold
    (a case is treated when its probability reaches the threshold)."""
    p = np.asarray(probability, np.float64)
    y = np.asarray(positive, bool)
    t = np.asarray(thresholds, np.float64)
    if np.any((t <= 0) | (t >= 1)):
        raise ResnetlabError("decision-curve thresholds must lie strictly between 0 and 1.")
    n, prevalence = len(y), float(y.mean()) if len(y) else 0.0
    odds = t / (1 - t)
    order = np.sort(p[y]), np.sort(p[~y])
    tp = len(order[0]) - np.searchsorted(order[0], t, "left")  # probabilities >= t
    fp = len(order[1]) - np.searchsorted(order[1], t, "left")
    return {
        "threshold": t.tolist(),
        "model": (tp / n - fp / n * odds).tolist(),
        "treat_all": (prevalence - (1 - prevalence) * odds).tolist(),
        "treat_none": [0.0] * len(t),
    }


def useful_range(curve: dict[str, list[float]]) -> tuple[float, float] | None:
    """The lowest and highest threshold at which the model beats both treat-all and
    treat-none (None when it beats them nowhere)."""
    model, everyone = np.asarray(curve["model"]), np.asarray(curve["treat_all"])
    better = (model > everyone) & (model > 0)
    if not better.any():
        return None
    t = np.asarray(curve["threshold"])[better]
    return float(t.min()), float(t.max())


def predictive_values(sensitivity: float, specificity: float, prevalence: float) -> dict[str, Any]:
    """PPV and NPV of a test with the given sensitivity and specificity where the condition
    has ``prevalence`` (Bayes' rule)."""
    if not 0 < prevalence < 1:
        raise ResnetlabError(
            f"prevalence must lie strictly between 0 and 1, got {prevalence}; give the share of "
            "positives where the model will be used, e.g. --prevalence 0.05."
        )
    tp, fn = sensitivity * prevalence, (1 - sensitivity) * prevalence
    tn, fp = specificity * (1 - prevalence), (1 - specificity) * (1 - prevalence)
    return {
        "prevalence": prevalence,
        "ppv": tp / (tp + fp) if tp + fp > 0 else float("nan"),
        "npv": tn / (tn + fn) if tn + fn > 0 else float("nan"),
    }
