"""``resnetlab finetune --folds K``: stratified, grouped k-fold cross-validation.

Each fold is one ordinary fine-tuning run (``fold-<k>/``) whose validation split is fold k
of the pool (train plus any val); the test split, when there is one, is the same for all.
The top folder gets every metric as mean ± sd over folds (``cv_metrics.csv``), the
out-of-fold predictions (``predictions_oof.csv``) with their ROC-AUC/PR-AUC and intervals,
the fold models' mean calibrated test probability (``predictions_test.csv``, for DeLong
comparisons) and one report.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import runfolder
from ..artifact import is_positive
from ..card import read_card
from ..console import say
from ..evaluation.clinic import DIGEST, read_digests, read_predictions
from ..evaluation.uncertainty import bootstrap_intervals
from ..files import RunLock, write_json, write_text_atomic
from ..reports.report import render_report
from ..runfolder import write_csv
from .finetune import finetune
from .options import OPTIONS_FILE, FinetuneOptions, resume_settings

KEYS = ("accuracy", "balanced_accuracy", "roc_auc", "pr_auc", "macro_f1", "loss")


def fold_row(k: int, card: dict[str, Any]) -> dict[str, Any]:
    """One fold's figures: val (its held-out fold) and test, at the threshold and at 0.5."""
    row: dict[str, Any] = {"fold": k + 1}
    for split, m in card["metrics"].items():
        row |= {f"{split}_{key}": m[key] for key in KEYS if key in m}
    clinical = card.get("clinical", {})
    row["temperature"] = clinical.get("temperature")
    if "threshold" in clinical:
        row["threshold"] = clinical["threshold"]["threshold"]
    for cut, m in clinical.get("test", {}).items():
        if not cut.startswith("at_"):  # the reviewer's figures are no rates at a cut
            continue
        for key in ("sensitivity", "specificity", "ppv", "npv", "f1", "balanced_accuracy"):
            row[f"test_{key}_{cut}"] = m[key]
    for split, cal in clinical.get("calibration", {}).items():
        row[f"{split}_ece_before"] = cal["before"]["ece"]
        row[f"{split}_ece_after"] = cal["after"]["ece"]
    return row


def mean_sd(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Mean and sample sd (ddof 1) of every numeric column over folds."""
    keys = [k for k in rows[0] if k != "fold"]
    values = {k: np.array([r[k] for r in rows if r.get(k) is not None], float) for k in keys}
    mean = {"fold": "mean"} | {k: float(v.mean()) for k, v in values.items() if len(v)}
    sd = {"fold": "sd"} | {k: float(v.std(ddof=1)) for k, v in values.items() if len(v) > 1}
    return mean, sd


def cross_validate(options: FinetuneOptions) -> Path:
    """Run the K folds (each resumable), then the summary and the one report. The folder is
    new, or ``resume`` continues it with its own settings (``resume_settings``): a finished
    cross-validation is never read back as the result of other data or another seed. The
    folder is locked for the run's life and its run.json records how the run ended."""
    with RunLock(options.out_dir):
        options = resume_settings(options, Path(options.out_dir))  # refused before any write
        with runfolder.recording(options.out_dir):
            return _cross_validate(options)


def _cross_validate(options: FinetuneOptions) -> Path:
    start = time.perf_counter()
    root = Path(options.out_dir)
    if not options.resume:
        root.mkdir(parents=True, exist_ok=True)
        write_json(root / OPTIONS_FILE, dataclasses.asdict(options))
    runfolder.start(root, resume=options.resume)
    rows, cards = [], []
    for k in range(options.folds):
        fold_dir = root / f"fold-{k + 1}"
        done = (fold_dir / "model_card.json").is_file()
        say(f"cross-validation fold {k + 1}/{options.folds} -> {fold_dir}")
        if done:
            card = read_card(fold_dir / "model_card.json")
        else:
            resume = options.resume and (fold_dir / OPTIONS_FILE).is_file()
            fold_options = dataclasses.replace(
                options, out_dir=str(fold_dir), fold=k, resume=resume
            )
            card = finetune(fold_options).card
        cards.append(card)
        rows.append(fold_row(k, card))
    mean, sd = mean_sd(rows)
    write_csv(root / "cv_metrics.csv", [*rows, mean, sd])
    summary = summarise(root, options, mean, sd, cards)
    wall = time.perf_counter() - start
    runfolder.finish(root, "completed")
    write_text_atomic(root / "data.txt", cards[0]["training"]["data"]["description"] + "\n")
    write_json(root / "cv_summary.json", summary | {"wall_time_s": round(wall, 1)})
    for name in ("gallery_test.png", "reliability_test.png"):
        if (root / "fold-1" / name).is_file():
            shutil.copyfile(root / "fold-1" / name, root / name.replace(".png", "_fold1.png"))
    render_report([root])
    for line in summary["summary"]:
        say(line)
    say(f"cross-validation done in {wall:.0f} s: {root / 'report.html'}")
    return root


def summarise(root: Path, options, mean, sd, cards) -> dict[str, Any]:
    """Summary lines and figures: mean ± sd per metric, out-of-fold and ensemble test."""
    k = options.folds
    lines = [
        f"{k}-fold cross-validation (stratified, grouped where the data has groups, seed "
        f"{options.seed}) of {options.model}, weights {options.pretrained or 'none'}"
    ]
    for key in [c for c in mean if c != "fold"]:
        if key in sd:
            lines.append(f"{key}: {mean[key]:.4f} ± {sd[key]:.4f} (mean ± sd over {k} folds)")
    out: dict[str, Any] = {"folds": k, "mean": mean, "sd": sd}
    if len(cards[0]["classes"]) != 2:
        return out | {"summary": lines}
    oof = [read_predictions(root / f"fold-{i + 1}", "val") for i in range(k)]
    p, y = np.concatenate([a for a, _ in oof]), np.concatenate([b for _, b in oof])
    write_csv(root / "predictions_oof.csv", [{"label": int(a), "probability": f"{b:.6f}"}
                                             for a, b in zip(y, p, strict=True)])  # fmt: skip
    ci = bootstrap_intervals(p, y == 1, 0.5, seed=options.seed)
    out["out_of_fold"] = ci
    lines.append(
        f"out-of-fold ({len(y)} images): ROC-AUC {_ci(ci['roc_auc'])}, PR-AUC {_ci(ci['pr_auc'])}"
        " (95 % stratified bootstrap)"
    )
    if (root / "fold-1" / "predictions_test.csv").is_file():
        tests = [read_predictions(root / f"fold-{i + 1}") for i in range(k)]
        p = np.mean([a for a, _ in tests], 0)
        y = tests[0][1]
        cut = float(mean.get("threshold", 0.5))
        digests = read_digests(root / "fold-1")  # every fold tests on the same images
        write_csv(root / "predictions_test.csv", [
            {"index": i, "label": int(a), "probability": f"{b:.6f}",
             "decision": cards[0]["classes"][int(is_positive(b, cut))],
             **({DIGEST: digests[i]} if digests else {})}
            for i, (a, b) in enumerate(zip(y, p, strict=True))
        ])  # fmt: skip
        for name, t in (("at the mean fold threshold", cut), ("at 0.5", 0.5)):
            e = bootstrap_intervals(p, y == 1, t, seed=options.seed)
            out[f"ensemble_test {name}"] = e
            lines.append(
                f"test, mean of the {k} fold models' calibrated probabilities, {name} "
                f"({t:.3f}): ROC-AUC {_ci(e['roc_auc'])}, PR-AUC {_ci(e['pr_auc'])}, sensitivity "
                f"{_ci(e['sensitivity'])}, specificity {_ci(e['specificity'])}, accuracy "
                f"{_ci(e['accuracy'])}"
            )
    return out | {"summary": lines}


def _ci(c: dict[str, float]) -> str:
    return f"{c['value']:.4f} [{c['low']:.4f}, {c['high']:.4f}]"
