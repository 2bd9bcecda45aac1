"""The operating point of a two-class model: a threshold on the calibrated probability of the
positive (second) class, chosen on validation, and the metrics a clinician reads at it.

``youden`` (the default) maximises sensitivity + specificity - 1 (Youden's J), the usual
choice when a false negative and a false positive cost about the same; ``sensitivity=0.95``
(screening) or ``specificity=0.95`` (confirmation) fix one rate; a number is used as given.
"""

from __future__ import annotations

import numpy as np

from ..artifact import is_positive
from ..card import check_fit_split
from ..errors import ResnetlabError

DEFAULT = "youden"
RATES = ("sensitivity", "specificity", "ppv", "npv", "f1", "balanced_accuracy", "accuracy")


def parse_threshold(spec: str | float | None) -> tuple[str, float | None]:
    """(rule, target): ("youden", None), ("sensitivity", 0.95), ("fixed", 0.3) ..."""
    text = str(spec if spec is not None else DEFAULT).strip().lower()
    if text == "youden":
        return "youden", None
    rule, _, value = text.partition("=")
    try:
        number = float(value if value else rule)
    except ValueError:
        number = None
    if rule in ("sensitivity", "specificity") and number is not None and 0 < number < 1:
        return rule, number
    if not value and number is not None and 0 <= number <= 1:
        return "fixed", number
    raise ResnetlabError(
        f"--threshold {spec!r} is not understood; use youden, sensitivity=0.95, "
        "specificity=0.95 or a probability such as 0.5."
    )


def choose_threshold(
    scores: np.ndarray, positive: np.ndarray, spec: str | float | None, *, split: str
) -> dict:
    """The threshold (predict positive when score >= threshold) by the rule, with its rates;
    ``split`` names where the scores come from, and only validation is accepted (recorded as
    ``chosen_on``), so a threshold is never chosen on test."""
    check_fit_split(split, "operating threshold")
    rule, target = parse_threshold(spec)
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    if rule == "fixed":
        assert target is not None  # parse_threshold gives every rule but youden a number
        return {"rule": "fixed", "target": target, "threshold": float(target),
                "chosen_on": "given (--threshold)"}  # fmt: skip
    if positive.all() or not positive.any():
        raise ResnetlabError(
            "validation has one class only, so no threshold can be chosen on it; "
            "pass --threshold 0.5 or give validation images of both classes."
        )
    candidates = np.unique(scores)[::-1]  # each distinct score, highest first
    predicted = scores[None, :] >= candidates[:, None]
    sens = (predicted & positive).sum(1) / positive.sum()
    spec_ = (~predicted & ~positive).sum(1) / (~positive).sum()
    if rule == "youden":
        pick = int(np.argmax(sens + spec_ - 1))
    elif rule == "sensitivity":  # the highest threshold that still reaches the sensitivity
        assert target is not None
        pick = int(np.flatnonzero(sens >= target - 1e-12)[0])
    else:  # the lowest threshold that keeps the specificity
        assert target is not None
        pick = int(np.flatnonzero(spec_ >= target - 1e-12)[-1])
    return {
        "rule": rule,
        "target": target,
        "threshold": float(candidates[pick]),
        "chosen_on": split,
        "val_sensitivity": float(sens[pick]),
        "val_specificity": float(spec_[pick]),
    }


def binary_rates(scores: np.ndarray, positive: np.ndarray, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, PPV, NPV, F1, balanced accuracy and accuracy at a threshold."""
    predicted = is_positive(np.asarray(scores), threshold)
    positive = np.asarray(positive, bool)
    tp, fn = int((predicted & positive).sum()), int((~predicted & positive).sum())
    fp, tn = int((predicted & ~positive).sum()), int((~predicted & ~positive).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    sens, spec, ppv = ratio(tp, tp + fn), ratio(tn, tn + fp), ratio(tp, tp + fp)
    return {
        "threshold": float(threshold),
        "sensitivity": sens,
        "specificity": spec,
        "ppv": ppv,
        "npv": ratio(tn, tn + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "balanced_accuracy": (sens + spec) / 2,
        "accuracy": ratio(tp + tn, len(positive)),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }
