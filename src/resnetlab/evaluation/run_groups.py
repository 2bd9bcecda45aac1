"""Two groups of fine-tuning runs (one per seed) compared across seeds: each run's test ROC-AUC,
and sensitivity, specificity and accuracy at its own threshold; per group the mean, sd and
95 % t-interval; the difference B - A with Welch's interval, and a verdict read off it. One run
against one run is DeLong's test instead (``compare-runs A B``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..card import CARD_NAME, read_card
from ..errors import ResnetlabError
from .clinic import read_digests, read_predictions
from .metrics import roc_auc
from .operating_point import binary_rates
from .seeds import LEVEL, describe, difference, spread

FIGURES = ("auc", "sensitivity", "specificity", "accuracy")
PREDICTIONS = "predictions_test.csv"


def expand_group(paths: list[str]) -> list[Path]:
    """Run folders of a group: a folder with ``predictions_test.csv`` is a run; a folder
    without one stands for its sub-folders that have one (a parent of the seeds' runs)."""
    runs: list[Path] = []
    for text in paths:
        path = Path(text)
        if (path / PREDICTIONS).is_file():
            runs.append(path)
            continue
        found = sorted(p.parent for p in path.glob(f"*/{PREDICTIONS}")) if path.is_dir() else []
        if not found:
            raise ResnetlabError(
                f"{path}: no {PREDICTIONS} in it or in its sub-folders; give fine-tuning run "
                "folders with a test split (or a folder holding them)."
            )
        runs += found
    if len(set(runs)) != len(runs):
        raise ResnetlabError("a run is given twice in one group; give each seed's run once.")
    return runs


def same_test_images(runs: list[Path]) -> None:
    """Refuse runs whose test labels or images (content hashes) differ, or whose predictions
    record no hashes, in one line naming the run."""
    _, first_labels = read_predictions(runs[0])
    first = read_digests(runs[0])
    for run in runs:
        _, labels = read_predictions(run)
        if len(labels) != len(first_labels) or (labels != first_labels).any():
            raise ResnetlabError(
                f"{runs[0]} and {run}: the test labels differ; compare runs on the same test "
                "images in the same order."
            )
        digests = read_digests(run)
        if digests is None:
            raise ResnetlabError(
                f"{run}: {PREDICTIONS} records no image hashes (made before they were), so "
                "the test images cannot be shown to be the same; re-create it with `resnetlab "
                f"evaluate {run} DATA --out {run}`."
            )
        if first is not None and digests != first:
            raise ResnetlabError(
                f"{runs[0]} and {run}: the test images differ (their content hashes); compare "
                "runs on the same test images in the same order."
            )


def run_figures(run: Path) -> dict[str, Any]:
    """A run's test ROC-AUC and its rates at the threshold its model card records."""
    card = read_card(run / CARD_NAME)
    threshold = (card.get("operating_point") or {}).get("threshold")
    if threshold is None:
        raise ResnetlabError(
            f"{run}: its model card records no operating threshold; give two-class "
            "fine-tuning runs (their threshold is chosen on validation)."
        )
    scores, labels = read_predictions(run)
    positive = labels == 1
    rates = binary_rates(scores, positive, float(threshold))
    data = ((card.get("training") or {}).get("data") or {}).get("source")
    return {"run": str(run), "classes": [str(c) for c in card["classes"]], "data": data,
            "threshold": float(threshold),
            "auc": roc_auc(torch.from_numpy(scores), torch.from_numpy(positive)),
            **{k: rates[k] for k in FIGURES[1:]}}  # fmt: skip


def _same_setup(name: str, figures: list[dict[str, Any]]) -> None:
    """Runs of one group must share their training data and classes."""
    for key, what in (("classes", "classes"), ("data", "training data")):
        values = {repr(f[key]) for f in figures}
        if len(values) > 1:
            runs = ", ".join(f"{f['run']} ({f[key]})" for f in figures)
            raise ResnetlabError(
                f"group {name}'s runs differ in their {what}: {runs}; a group is one setup "
                "trained with different seeds."
            )


def compare_groups(group_a: list[Path], group_b: list[Path]) -> dict[str, Any]:
    """Per group each figure's spread across seeds; per figure B - A with Welch's interval;
    the verdict on the ROC-AUC difference's interval."""
    if len(group_a) < 2 or len(group_b) < 2:
        raise ResnetlabError(
            f"groups of {len(group_a)} and {len(group_b)} run(s): a spread across seeds needs "
            "at least two runs per group (two single runs: drop --vs for DeLong's test)."
        )
    same_test_images([*group_a, *group_b])
    figures = {"A": [run_figures(r) for r in group_a], "B": [run_figures(r) for r in group_b]}
    for name, rows in figures.items():
        _same_setup(name, rows)
    if figures["A"][0]["classes"] != figures["B"][0]["classes"]:
        raise ResnetlabError(
            f"the groups' classes differ ({figures['A'][0]['classes']} against "
            f"{figures['B'][0]['classes']}); compare runs of the same task."
        )
    groups = {name: {k: spread([r[k] for r in rows]) for k in FIGURES}
              for name, rows in figures.items()}  # fmt: skip
    diffs = {k: difference([r[k] for r in figures["B"]], [r[k] for r in figures["A"]])
             for k in FIGURES}  # fmt: skip
    auc = diffs["auc"]
    if auc["excludes_zero"]:
        better = "B" if auc["mean"] > 0 else "A"
        verdict = f"{better} better: the {100 * LEVEL:.0f} % interval of B - A excludes 0."
    else:
        verdict = f"no difference shown: the {100 * LEVEL:.0f} % interval of B - A includes 0."
    return {"test": "Welch's t-interval across seeds", "level": LEVEL, "runs": figures,
            "groups": groups, "difference_b_minus_a": diffs, "verdict": verdict,
            "seeds_disagree": bool(auc["seeds_disagree"])}  # fmt: skip


def group_lines(result: dict[str, Any]) -> list[str]:
    """The comparison in lines: each group's figures, the differences, the verdict."""
    lines = []
    for name in ("A", "B"):
        runs = ", ".join(r["run"] for r in result["runs"][name])
        lines.append(f"{name} ({runs}):")
        for k in FIGURES:
            text = describe(result["groups"][name][k], scale=1.0, unit="", digits=4, of="runs")
            lines.append(f"  {k:<12} {text}")
    lines.append("B - A (Welch):")
    for k in FIGURES:
        d = result["difference_b_minus_a"][k]
        ci = "" if d["lo"] is None else f" [{d['lo']:+.4f}, {d['hi']:+.4f}]"
        lines.append(f"  {k:<12} {d['mean']:+.4f}{ci}")
    lines.append(f"verdict (test ROC-AUC): {result['verdict']}")
    if result["seeds_disagree"]:
        lines.append("the seeds disagree: some seed's B - A (paired by position) has the other "
                     "sign than the mean difference.")  # fmt: skip
    return lines
