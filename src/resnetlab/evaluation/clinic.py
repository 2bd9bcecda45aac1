"""The figures a clinician needs beside accuracy: a temperature fitted on validation, the
operating threshold chosen on validation (never on test), test metrics at that threshold and
at 0.5 with stratified bootstrap 95 % intervals, calibration before and after (errors, and the
calibration slope and intercepts of logistic recalibration), the decision curve, split-conformal
prediction sets fitted on validation (abstention with a coverage guarantee), and the plots.

``analyse`` returns the card's ``clinical`` section; it is the one place fine-tuning,
``evaluate`` and cross-validation compute these, so they cannot disagree.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artifact import is_positive
from ..card import check_fit_split
from ..errors import ResnetlabError
from ..runfolder import write_csv
from .calibration import calibration_summary, fit_temperature
from .conformal import fit_conformal, prediction_sets, set_summary
from .decision import decision_curve, predictive_value_intervals, useful_range
from .operating_point import binary_rates, choose_threshold
from .plots import plot_decision_curve, plot_pr, plot_reliability
from .recalibration import recalibration_intervals
from .uncertainty import bootstrap_intervals

RESAMPLES = 2000
DEFAULT_CUT = 0.5  # MedMNIST's convention, reported for comparison
DIGEST = "image_sha256"  # the predictions' column of each image's content hash
COVERAGE = 0.95  # of the conformal prediction sets


def fit_on_val(
    val_logits: torch.Tensor, val_labels: torch.Tensor, threshold_spec: str | None, classes,
    *, split: str,
) -> dict[str, Any]:  # fmt: skip
    """Temperature (NLL, L-BFGS) and, for two classes, the threshold and the conformal sets,
    all from validation: ``split`` names the split the logits are of, and any but ``val`` is
    refused (one line), so nothing is ever fitted on test."""
    check_fit_split(split, "temperature, threshold and conformal sets")
    temperature = fit_temperature(val_logits, val_labels)
    out: dict[str, Any] = {"temperature": temperature, "fitted_on": split}
    if len(classes) == 2:
        probs = torch.softmax(val_logits.double() / temperature, 1)[:, 1].numpy()
        out["threshold"] = choose_threshold(probs, val_labels.numpy() == 1, threshold_spec,
                                            split=split)  # fmt: skip
        out["threshold"]["positive_class"] = classes[1]
    calibrated = torch.softmax(val_logits.double() / temperature, 1).numpy()
    if len(val_labels) >= COVERAGE / (1 - COVERAGE):  # enough images for the coverage
        out["conformal"] = fit_conformal(calibrated, val_labels.numpy(), COVERAGE, split=split)
    return out


def reviewer_figures(
    logits: torch.Tensor, labels: torch.Tensor, fit: dict[str, Any], seed: int,
    prevalence: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """What a reviewer asks beside the rates: calibration slope / intercepts before and after
    temperature scaling, the decision curve, the conformal sets' coverage and, at a stated
    deployment prevalence, the predictive values at the threshold."""
    y = labels.numpy() == 1
    raw = torch.softmax(logits.double(), 1).numpy()
    calibrated = torch.softmax(logits.double() / fit["temperature"], 1).numpy()
    p1 = calibrated[:, 1]  # what the threshold, the decision curve and the prevalence read
    out: dict[str, Any] = {"recalibration": {
        name: recalibration_intervals(probs[:, 1], y, seed=seed)
        for name, probs in (("before", raw), ("after", calibrated))
    }}
    curve = decision_curve(p1, y)
    out["decision_curve"] = {**curve, "useful_range": useful_range(curve)}
    if "conformal" in fit:
        sets = prediction_sets(calibrated, fit["conformal"])
        out["conformal"] = {**fit["conformal"], **set_summary(sets, labels.numpy())}
    if prevalence is not None and "threshold" in fit:
        out["prevalence"] = predictive_value_intervals(
            p1, y, fit["threshold"]["threshold"], prevalence, seed=seed
        )
    return out


def test_figures(
    probs: np.ndarray, labels: np.ndarray, threshold: float, seed: int, resamples: int = RESAMPLES
) -> dict[str, Any]:
    """Rates at the threshold and at 0.5, each with bootstrap intervals of ROC-AUC, PR-AUC,
    accuracy, sensitivity and specificity (the same resamples for both cuts)."""
    positive = labels == 1
    out: dict[str, Any] = {}
    for name, cut in (("at_threshold", threshold), ("at_0.5", DEFAULT_CUT)):
        rates: dict[str, Any] = binary_rates(probs, positive, cut)
        if positive.all() or not positive.any():
            out[name] = rates
            continue
        rates["ci95"] = bootstrap_intervals(probs, positive, cut, n_resamples=resamples, seed=seed)
        out[name] = rates
    return out


def analyse(
    fit: dict[str, Any],
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
    classes: list[str],
    out_dir: Path | None,
    *,
    seed: int = 0,
    test_probs: torch.Tensor | None = None,
    evaluated: str = "test",
    digests: list[str] | None = None,
    prevalence: float | None = None,
) -> dict[str, Any]:
    """The ``clinical`` section for {split: (logits, labels)}; plots and the predictions of the
    ``evaluated`` split (``predictions_<split>.csv``, with each image's content hash from
    ``digests``) go to ``out_dir``; its rates with intervals are under ``section[evaluated]``.
    ``test_probs`` overrides its calibrated probabilities (mirror averaging)."""
    temperature = fit["temperature"]
    section: dict[str, Any] = {**fit, "calibration": {}}
    for split, (logits, labels) in splits.items():
        section["calibration"][split] = calibration_summary(logits, labels, temperature)
        if out_dir is not None:
            path = out_dir / f"reliability_{split}.png"
            plot_reliability(logits, labels, temperature, path, split)
    if len(classes) != 2:
        return section
    if out_dir is not None and "val" in splits and evaluated != "val":
        val_p1 = torch.softmax(splits["val"][0].double() / temperature, 1)[:, 1].numpy()
        write_predictions(out_dir / "predictions_val.csv", *splits["val"], val_p1, fit, classes)
    if evaluated not in splits:
        return section
    logits, labels = splits[evaluated]
    probs = torch.softmax(logits.double() / temperature, 1)
    if test_probs is not None:
        probs = test_probs.double()
    p1, y = probs[:, 1].numpy(), labels.numpy()
    section["evaluated"] = evaluated
    section[evaluated] = test_figures(p1, y, fit["threshold"]["threshold"], seed)
    section[evaluated]["reviewer"] = reviewer_figures(logits, labels, fit, seed, prevalence)
    if out_dir is not None:
        curve = section[evaluated]["reviewer"]["decision_curve"]
        plot_decision_curve(curve, fit["threshold"]["threshold"],
                            out_dir / f"decision_curve_{evaluated}.png", evaluated)  # fmt: skip
        plot_pr(p1, y == 1, classes[1], out_dir / f"pr_{evaluated}.png", evaluated)
        write_predictions(out_dir / f"predictions_{evaluated}.csv", logits, labels, p1, fit,
                          classes, digests)  # fmt: skip
    return section


def image_digests(part: Any, keep: Sequence[int] | None = None) -> list[str]:
    """The sha256 of each image of a split, in order: its file's bytes, or an in-memory
    image's pixels; ``keep``: the indices that were used (unreadable files left out)."""
    index = range(len(part)) if keep is None else keep
    if hasattr(part, "paths"):
        return [hashlib.sha256(Path(part.paths[i]).read_bytes()).hexdigest() for i in index]
    return [hashlib.sha256(part.images[i].contiguous().numpy().tobytes()).hexdigest()
            for i in index]  # fmt: skip


def read_digests(run_dir: Path, split: str = "test") -> list[str] | None:
    """The images' content hashes in ``predictions_<split>.csv``; None for older runs."""
    with (Path(run_dir) / f"predictions_{split}.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not rows[0].get(DIGEST):
        return None
    return [r[DIGEST] for r in rows]


def write_predictions(path: Path, logits, labels, p1: np.ndarray, fit, classes,
                      digests: list[str] | None = None) -> Path:  # fmt: skip
    """One row per image: label, raw and calibrated probability, decision at the threshold,
    and the image's content hash (where known)."""
    raw = torch.softmax(logits.double(), 1)[:, 1].numpy()
    cut = fit["threshold"]["threshold"]
    rows = [
        {
            "index": i,
            "label": int(labels[i]),
            "probability_raw": f"{raw[i]:.6f}",
            "probability": f"{p1[i]:.6f}",
            "decision": classes[int(is_positive(p1[i], cut))],
            **({DIGEST: digests[i]} if digests is not None else {}),
        }
        for i in range(len(p1))
    ]
    return write_csv(path, rows)


def read_predictions(run_dir: Path, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """(calibrated positive probability, label) per image of a split from a run folder."""
    path = Path(run_dir) / f"predictions_{split}.csv"
    if not path.is_file():
        raise ResnetlabError(
            f"{run_dir} has no {path.name}; give two-class fine-tuning runs with a test "
            "split (or run `resnetlab evaluate RUN DATA --out RUN`)."
        )
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    probs = np.array([float(r["probability"]) for r in rows])
    return probs, np.array([int(r["label"]) for r in rows])


def summary_lines(section: dict[str, Any]) -> list[str]:
    """Findings lines: threshold, test rates with intervals, calibration before/after."""
    lines = []
    th = section.get("threshold")
    if th:
        target = f" {th['target']:g}" if th.get("target") is not None else ""
        lines.append(
            f"operating threshold {th['threshold']:.4f} on the calibrated probability of "
            f"{th['positive_class']!r} (rule {th['rule']}{target}, chosen on validation); "
            f"temperature {section['temperature']:.3f} (fitted on validation)"
        )
    split = section.get("evaluated", "test")
    for name, m in section.get(split, {}).items():
        if name == "reviewer":
            continue
        ci = m.get("ci95", {})

        def show(key: str, m: dict = m, ci: dict = ci) -> str:
            if key not in ci:
                return f"{m.get(key, float('nan')):.3f}"
            c = ci[key]
            return f"{c['value']:.3f} [{c['low']:.3f}, {c['high']:.3f}]"

        lines.append(
            f"{split} {name.replace('_', ' ')} ({m['threshold']:.3f}): sensitivity "
            f"{show('sensitivity')}, specificity {show('specificity')}, PPV {m['ppv']:.3f}, "
            f"NPV {m['npv']:.3f}, F1 {m['f1']:.3f}, balanced accuracy "
            f"{m['balanced_accuracy']:.3f}, accuracy {show('accuracy')}"
        )
    test = section.get(split, {}).get("at_threshold", {}).get("ci95")
    if test:
        lines.append(
            f"{split} ROC-AUC {test['roc_auc']['value']:.4f} [{test['roc_auc']['low']:.4f}, "
            f"{test['roc_auc']['high']:.4f}], PR-AUC {test['pr_auc']['value']:.4f} "
            f"[{test['pr_auc']['low']:.4f}, {test['pr_auc']['high']:.4f}] (95 % stratified "
            f"bootstrap, {test['bootstrap']['resamples']} resamples)"
        )
    for split, cal in section.get("calibration", {}).items():
        b, a = cal["before"], cal["after"]
        lines.append(
            f"{split} calibration: ECE {b['ece']:.4f} -> {a['ece']:.4f} (equal-mass "
            f"{b['ece_equal_mass']:.4f} -> {a['ece_equal_mass']:.4f}), MCE {b['mce']:.4f} -> "
            f"{a['mce']:.4f}, Brier {b['brier']:.4f} -> {a['brier']:.4f} after temperature scaling"
        )
    return lines + reviewer_lines(section.get(split, {}).get("reviewer"), split)


def reviewer_lines(figures: dict[str, Any] | None, split: str) -> list[str]:
    """Findings lines for :func:`reviewer_figures`."""
    if not figures:
        return []

    def ci(c: dict[str, Any]) -> str:
        return f"{c['value']:.3f} [{c['low']:.3f}, {c['high']:.3f}]"

    lines = []
    for name, r in figures["recalibration"].items():
        lines.append(
            f"{split} calibration slope {ci(r['slope'])}, intercept {ci(r['intercept'])}, "
            f"calibration-in-the-large {ci(r['in_the_large'])} ({name} temperature scaling; "
            "ideal 1, 0, 0; 95 % bootstrap)"
        )
    useful = figures["decision_curve"]["useful_range"]
    lines.append(
        f"{split} decision curve: the model's net benefit beats treating all and treating none "
        + (f"for threshold probabilities {useful[0]:.2f} to {useful[1]:.2f}" if useful
           else "at no threshold probability")  # fmt: skip
    )
    if "conformal" in figures:
        c = figures["conformal"]
        lines.append(
            f"{split} conformal sets ({c['coverage']:.0%} target, fitted on "
            f"{c['calibration_images']} validation images): coverage {c['coverage_achieved']:.3f}, "
            f"one class {c['single']:.1%}, refer to a human (both classes) {c['refer']:.1%}"
        )
    if "prevalence" in figures:
        lines.append(f"{split}: " + prevalence_line(figures["prevalence"]))
    return lines


def prevalence_line(p: dict[str, Any]) -> str:
    """The predictive values at the deployment prevalence in one sentence."""

    def value(name: str) -> str:
        c = p.get("ci95", {}).get(name)
        return f"{p[name]:.3f}" + (f" [{c['low']:.3f}, {c['high']:.3f}]" if c else "")

    own = p.get("test_prevalence")
    return (
        f"at a prevalence of {p['prevalence']:.1%}, PPV {value('ppv')} and NPV {value('npv')}"
        + (f"; the test set's own prevalence is {own:.1%}" if own is not None else "")
        + " (sensitivity and specificity at the threshold do not depend on the prevalence; "
        "the predictive values do)"
    )
