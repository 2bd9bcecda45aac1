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
from .uncertainty import stratified_weights, weighted_metrics

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
    check_prevalence(prevalence)
    ppv, npv = bayes(np.float64(sensitivity), np.float64(specificity), prevalence)
    return {"prevalence": prevalence, "ppv": float(ppv), "npv": float(npv)}


def check_two_classes(classes: list[str], prevalence: float | None) -> None:
    """Refuse a deployment prevalence for a model that is not a two-class one."""
    if prevalence is not None and len(classes) != 2:
        shown = ", ".join(map(str, classes[:5])) + (", ..." if len(classes) > 5 else "")
        raise ResnetlabError(
            f"--prevalence applies to two-class models; this one has {len(classes)} classes "
            f"({shown}); drop --prevalence."
        )


def check_prevalence(prevalence: float) -> None:
    """Refuse a prevalence outside (0, 1), naming the fix."""
    if not 0 < prevalence < 1:
        raise ResnetlabError(
            f"prevalence must lie strictly between 0 and 1, got {prevalence}; give the share of "
            "positives where the model will be used, e.g. --prevalence 0.05."
        )


def bayes(sensitivity: Any, specificity: Any, prevalence: float) -> tuple[Any, Any]:
    """PPV and NPV (elementwise over arrays); NaN where no case is called positive (PPV) or
    negative (NPV)."""
    tp, fn = sensitivity * prevalence, (1 - sensitivity) * prevalence
    tn, fp = specificity * (1 - prevalence), (1 - specificity) * (1 - prevalence)
    with np.errstate(invalid="ignore", divide="ignore"):
        ppv = np.where(tp + fp > 0, tp / np.where(tp + fp > 0, tp + fp, 1), np.nan)
        npv = np.where(tn + fn > 0, tn / np.where(tn + fn > 0, tn + fn, 1), np.nan)
    return ppv, npv


def predictive_value_intervals(
    probability: np.ndarray,
    positive: np.ndarray,
    threshold: float,
    prevalence: float,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """PPV and NPV at ``prevalence`` of the decision ``probability >= threshold``, with
    percentile intervals: Bayes' rule applied to each stratified bootstrap resample's
    sensitivity and specificity (the resamples ``bootstrap_intervals`` draws with ``seed``)."""
    check_prevalence(prevalence)
    p, y = np.asarray(probability, np.float64), np.asarray(positive, bool)
    point = weighted_metrics(p, y, threshold)
    sens, spec = float(point["sensitivity"][0]), float(point["specificity"][0])
    out = predictive_values(sens, spec, prevalence)
    out |= {"sensitivity": sens, "specificity": spec, "threshold": threshold,
            "test_prevalence": float(y.mean())}  # fmt: skip
    if y.all() or not y.any():
        return out
    draws = weighted_metrics(p, y, threshold, stratified_weights(y, n_resamples, seed))
    ppv, npv = bayes(draws["sensitivity"], draws["specificity"], prevalence)
    tail = (1 - level) / 2 * 100
    out["ci95"] = {}
    for name, values in (("ppv", ppv), ("npv", npv)):
        low, high = np.nanpercentile(values, [tail, 100 - tail]) if np.isfinite(values).any() \
            else (np.nan, np.nan)  # fmt: skip
        out["ci95"][name] = {"value": out[name], "low": float(low), "high": float(high)}
    out["bootstrap"] = {"resamples": n_resamples, "seed": seed, "level": level,
                        "method": "stratified percentile, Bayes' rule per resample"}  # fmt: skip
    return out
