"""The reporting checklist of a fine-tuning run: the items of CLAIM 2024 (Checklist for
Artificial Intelligence in Medical Imaging, Tejani et al. 2024, Radiology: AI) and TRIPOD+AI
(Collins et al. 2024, BMJ) that the run's model card can answer, each with its answer and the
part of the report that shows it, and the items only the authors can supply.

Only what the run did is claimed: no test split, no conformal sets or no threshold is said so.
Items are named by their titles; a number is given only where it was checked against the
published list (TRIPOD+AI 5a, 5b, 6b).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifact import coverage_label
from ..card import CARD_NAME, card_preprocessing, read_card

TO_COMPLETE = "to be completed by the authors"
CV_SUMMARY = "cv_summary.json"


@dataclass
class Item:
    """One checklist row: the items it answers, the answer, and where the report shows it
    (an anchor name of the run's section, e.g. ``findings``; None: nowhere in the report)."""

    claim: str  # CLAIM 2024 item title ("" when CLAIM has none)
    tripod: str  # TRIPOD+AI item ("" when TRIPOD+AI has none)
    answer: str
    where: str | None = None


def for_folder(folder: Path) -> list[Item] | None:
    """The checklist of a fine-tuning run folder or a cross-validation folder; None for other
    runs (a ``train`` run, a study)."""
    folder = Path(folder)
    if (folder / CARD_NAME).is_file():
        card = read_card(folder / CARD_NAME)
        if (card.get("training") or {}).get("kind") == "train" or "clinical" not in card:
            return None
        return items(card)
    if (folder / CV_SUMMARY).is_file() and (folder / "fold-1" / CARD_NAME).is_file():
        return items(read_card(folder / "fold-1" / CARD_NAME), folds=_folds(folder))
    return None


def _folds(folder: Path) -> int:
    return sum(1 for p in folder.glob("fold-*") if (p / CARD_NAME).is_file())


def items(card: dict[str, Any], folds: int | None = None) -> list[Item]:
    """The rows for a model card; ``folds``: the card is fold 1 of a cross-validation of that
    many folds, whose report shows the summary over folds, not one fold's figures."""
    return [
        *_data_items(card, folds),
        *_model_items(card),
        *_evaluation_items(card, folds),
        *_author_items(),
    ]


def _options(card: dict[str, Any]) -> dict[str, Any]:
    return (card.get("training") or {}).get("options") or {}


def _data_items(card: dict[str, Any], folds: int | None) -> list[Item]:
    options, metrics = _options(card), card.get("metrics") or {}
    data = (card.get("training") or {}).get("data") or {}
    counts = data.get("class_counts") or {}
    sizes = ", ".join(f"{s} {m['n']}" for s, m in metrics.items() if "n" in m)
    if "test" not in metrics:
        sizes += "; no test split: every figure is measured on validation, not held out"
    per_class = "; ".join(f"{s}: {words(c)}" for s, c in counts.items() if isinstance(c, dict))
    notes = " ".join(str(n) for n in (card.get("training") or {}).get("notes") or [])
    grouped = "groups:" in notes
    how = (
        f"{folds}-fold cross-validation (stratified{', grouped' if grouped else ''}, seed "
        f"{options.get('seed')}) over train plus validation; this report shows the mean and sd "
        "over folds"
        if folds
        else f"validation held out {_share(options.get('val_size'))} and test "
        f"{_share(options.get('test_size'))} where the data had none (stratified by class, "
        f"seed {options.get('seed')})"
    )
    apart = (
        "images of one patient (the manifest's group) were kept in one split, checked: "
        + next(n for n in (card.get("training") or {}).get("notes") or [] if "groups:" in n)
        if grouped
        else "the data named no groups (patients), so images were split one by one: if a "
        "patient has several images they may fall in two splits"
    )
    skipped = (
        "left out, each named in the log"
        if options.get("on_bad") == "skip"
        else "none: an unreadable file stops the run"
    )
    return [
        Item(
            "Data partitions: how data were assigned to partitions",
            "Analytical methods (how the data were used, partitioned)",
            f"{how}; images per split: {sizes}",
            "findings" if folds else "choices.txt",
        ),
        Item(
            "Level at which partitions are disjoint",
            "Analytical methods (partitioning)",
            apart,
            "choices.txt",
        ),
        Item(
            "Data preprocessing steps",
            "Data preparation",
            card_preprocessing(card["preprocessing"], CARD_NAME).describe()
            + "".join(
                f"; {n}"
                for n in (card.get("training") or {}).get("notes") or []
                if n.startswith("normalisation")
            ),
            "choices.txt",
        ),
        Item(
            "Sample size and how it was determined",
            "Sample size",
            f"images per class: {per_class or 'not recorded'}; the sample size was not "
            f"justified by a calculation ({TO_COMPLETE})",
            "data",
        ),
        Item(
            "How missing data were handled",
            "Missing data",
            f"unreadable image files: {skipped}; missing clinical data is {TO_COMPLETE}",
            "config",
        ),
        Item(
            "Data sources",
            "5a Data sources",
            f"{data.get('description') or 'not recorded'}"
            f" (the data as given to resnetlab; where and how it was collected is "
            f"{TO_COMPLETE})",
            "data",
        ),
    ]


def _share(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) and value else "none"


def _model_items(card: dict[str, Any]) -> list[Item]:
    spec, weights = card.get("model") or {}, card.get("weights") or {}
    recipe = (card.get("training") or {}).get("recipe") or {}
    options = _options(card)
    pretrained = weights.get("pretrained")
    init = (
        f"transfer learning from {pretrained} ({weights.get('file') or 'weights file'}), "
        f"new head for {spec.get('num_classes')} classes"
        if pretrained
        else "random initialisation (trained from scratch)"
    )
    training = (
        f"{recipe.get('head_epochs')} head epoch(s) with the backbone frozen, then "
        f"{recipe.get('epochs')} epoch(s) unfrozen; optimiser {recipe.get('optimizer')}, head "
        f"lr {recipe.get('head_lr')}, per-stage lr multiplier {recipe.get('lr_mult')}, weight "
        f"decay {recipe.get('weight_decay')}, {recipe.get('schedule')} schedule, batch "
        f"{recipe.get('batch_size')}, class weights {words(recipe.get('class_weights'))}"
    )
    return [
        Item(
            "Detailed description of the model",
            "Model specification",
            f"{spec.get('name')}, {spec.get('parameters'):,} parameters, head dropout "
            f"{spec.get('head_dropout', 0)}; weights in model.safetensors with model_card.json",
            "findings",
        ),
        Item(
            "Initialization of model parameters",
            "Analytical methods (model type, building steps)",
            init,
            "findings",
        ),
        Item(
            "Details of training approach",
            "Analytical methods (model-building steps, hyperparameters)",
            training,
            "config",
        ),
        Item(
            "Method of selecting the final model",
            "Analytical methods (internal validation)",
            f"the epoch with the best validation {options.get('monitor')}",
            "findings",
        ),
        Item(
            "Software libraries, frameworks and packages",
            "Open science (code)",
            f"resnetlab with PyTorch; versions and the command line under Machine and "
            f"versions ({(card.get('training') or {}).get('command') or 'command'})",
            "machine",
        ),
    ]


def _evaluation_items(card: dict[str, Any], folds: int | None) -> list[Item]:
    clinical = card.get("clinical") or {}
    split = clinical.get("evaluated")
    point = clinical.get("threshold")
    figures = clinical.get(split) or {} if split else {}
    reviewer = figures.get("reviewer") or {}
    held = f"the {split} split" if split == "test" else "no held-out test split"
    if point:
        how = (
            f"fixed at {point['threshold']:.4f} by --threshold"
            if point.get("rule") == "fixed"
            else f"{point['threshold']:.4f} by {point['rule']}"
            + (f" {point['target']:g}" if point.get("target") is not None else "")
        )
        threshold = (
            f"{how}, on the calibrated probability of {point.get('positive_class')!r}, chosen on "
            f"{point.get('chosen_on', 'val')}; resnetlab refuses to choose a threshold on test "
            "and refuses a model card whose threshold says test"
        )
        if folds:
            threshold += "; each fold chose its own on its validation fold (the ensemble "
            threshold += "uses their mean)"
    else:
        threshold = "no threshold: the most probable class (more than two classes)"
    cal = clinical.get("calibration") or {}
    calibration = (
        f"temperature {clinical.get('temperature', 1.0):.3f} fitted on "
        f"{clinical.get('fitted_on', 'val')}; ECE before and after on "
        f"{', '.join(cal) or 'no split'}"
        + (
            "; calibration slope and intercepts with 95 % intervals"
            if "recalibration" in reviewer
            else ""
        )
    )
    ci = (figures.get("at_threshold") or {}).get("ci95")
    intervals = (
        f"95 % stratified bootstrap intervals on {held} ({ci['bootstrap']['resamples']} "
        "resamples) for ROC-AUC, PR-AUC, sensitivity, specificity and accuracy"
        if ci
        else "no intervals: no held-out test split with both classes"
    )
    if folds:
        intervals = "mean ± sd over folds; out-of-fold ROC-AUC and PR-AUC with 95 % bootstrap "
        intervals += "intervals; the fold models' mean test probability with intervals"
    curve = reviewer.get("decision_curve")
    conformal = reviewer.get("conformal") or clinical.get("conformal")
    sets = (
        f"split-conformal (LAC) {coverage_label(conformal['coverage'])}s, fitted on "
        f"{conformal.get('fitted_on', 'val')} ({conformal['calibration_images']} images)"
        + (
            f"; on {split}: coverage {conformal['coverage_achieved']:.3f}, refer to a human "
            f"{conformal['refer']:.1%}"
            if "coverage_achieved" in conformal
            else ""
        )
        + "; predict and serve give each image its set and action"
        if conformal
        else "no conformal sets (too few validation images for 95 % coverage)"
    )
    gallery = clinical.get("gallery")
    shown = (gallery or {}).get("split", split)
    where = "gallery_test_fold1" if folds else f"gallery_{shown}"
    reliability = "reliability_test_fold1" if folds else f"reliability_{split or 'val'}"
    fig = "findings" if folds else None
    return [
        Item(
            "Metrics of model performance",
            "Analytical methods (performance measures)",
            "accuracy, balanced accuracy, ROC-AUC, PR-AUC, macro F1 on validation"
            + (
                f" and {held}; sensitivity, specificity, PPV, NPV at the threshold and at 0.5"
                if split == "test"
                else f" only ({held})"
            ),
            "findings",
        ),
        Item(
            "Statistical measures of significance and uncertainty",
            "Model performance",
            intervals,
            "findings",
        ),
        Item(
            "",
            "Model output",
            f"calibrated class probabilities and a decision: {threshold}",
            "findings",
        ),
        Item(
            "Calibration",
            "Analytical methods (performance measures: calibration)",
            calibration,
            reliability,
        ),
        Item(
            "Clinical utility",
            "Analytical methods (performance measures: clinical utility)",
            f"decision curve (net benefit against treat all and treat none) on {held}"
            if curve
            else "no decision curve (no held-out two-class test split)",
            (fig or f"decision_curve_{split}") if curve else None,
        ),
        Item("Uncertainty and abstention", "Model output", sets, "findings"),
        Item(
            "Methods for explainability or interpretability",
            "",
            f"Grad-CAM of the decided class for the most confident mistakes and correct "
            f"answers on {shown}{' (fold 1)' if folds else ''}; `resnetlab explain` for "
            "others; the maps were not validated against annotations"
            if gallery or folds
            else "no explanation maps in this run",
            where if gallery or folds else None,
        ),
        Item(
            "Validation or testing on external data",
            "Training versus evaluation",
            "not done: every split comes from the one data set; external evaluation is "
            f"{TO_COMPLETE} (`resnetlab evaluate RUN OTHER_DATA`)",
        ),
    ]


def _author_items() -> list[Item]:
    """What no run can know."""
    topics = [
        ("Study design (prospective or retrospective)", ""),
        ("", "5b Data dates (start and end of accrual)"),
        ("Eligibility criteria", "6b Eligibility criteria"),
        (
            "Demographic and clinical characteristics of cases in each partition",
            "Participants (characteristics, fairness)",
        ),
        ("Reference standard, its rationale, source and annotators", "Outcome"),
        ("De-identification methods", ""),
        ("Intended use and clinical role", "Background (target population, intended use)"),
        ("", "Ethical approval"),
        ("Registration, protocol, funding", "Open science (funding, protocol, registration)"),
    ]
    return [Item(claim, tripod, TO_COMPLETE) for claim, tripod in topics]


def words(value: Any) -> str:
    """A dict or list in words for a cell."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items()) or "none"
    if isinstance(value, list | tuple):
        return ", ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in value) or "none"
    return "none" if value is None else str(value)
