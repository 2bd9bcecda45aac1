"""``resnetlab predict``: top-k classes for image files, folders or globs, preprocessed as the
model card says; unreadable or oversized files are reported by name and the rest still
predicted (``on_bad="skip"``, the default), or refused (``on_bad="error"``). A card with
conformal sets adds each image's set and action (its class, or "refer to a human").
"""

from __future__ import annotations

import csv
import glob
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artifact import Trained, coverage_label
from ..data.folder import BAD_ERRORS, IMAGE_SUFFIXES, BadImage, is_image_name
from ..data.preprocess import load_image, prepare_images, torch_threads
from ..errors import ResnetlabError
from ..evaluation.clinic import prevalence_line
from ..evaluation.decision import predictive_values
from ..evaluation.logits import image_probabilities


@dataclass
class Prediction:
    """One file's top-k (class, calibrated probability) pairs, most likely first; for two
    classes also the positive class's probability and the decision at the card's threshold;
    with conformal sets on the card, the set, the action and the set's coverage
    (``Trained.abstentions``)."""

    path: str
    top: list[tuple[str, float]]
    probability: float | None = None
    threshold: float | None = None
    decision: str | None = None
    conformal: dict[str, Any] | None = None


def expand_inputs(items: list[str], keep_empty: bool = False) -> list[Path]:
    """Files as given, image files under folders (sorted, recursive), and glob matches; a
    folder without images is an error, or kept as it is (``keep_empty``) for
    :func:`predict_files` to report by name."""
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_name(p.name))
            if not found and keep_empty:
                found = [path]
            if not found:
                raise ResnetlabError(
                    f"{path}: folder has no images ({', '.join(IMAGE_SUFFIXES)}); "
                    "give image files or a folder with some"
                )
            paths += found
        elif path.exists():
            paths.append(path)
        elif glob.has_magic(item):
            paths += sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
        else:
            paths.append(path)  # reported as missing when read
    return list(dict.fromkeys(paths))


def predict_files(
    loaded: Trained,
    paths: list[Path],
    *,
    top_k: int = 3,
    batch_size: int = 64,
    tta: bool = False,
    on_bad: str = "skip",
    engine: str = "auto",
) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Predictions for the readable files and (path, reason) for the others; with
    ``on_bad="error"`` the first unreadable file is an error instead. The model runs on
    ``engine`` (``optimize_for_inference``), made once per ``loaded`` and kept for later calls."""
    prep, classes = loaded.preprocessing, loaded.classes
    k = max(1, min(top_k, len(classes)))
    predictions: list[Prediction] = []
    failed: list[tuple[str, str]] = []
    model = loaded.optimized(engine)
    for start in range(0, len(paths), batch_size):
        names, images = [], []
        for path in paths[start : start + batch_size]:
            try:
                # Decoded at a reduced scale where the format allows: a large JPEG needs far
                # less memory; images above the pixel limit are refused before decoding.
                with torch_threads(1):  # one image: too small to split over threads
                    images.append(prepare_images(load_image(path, prep.resize)[None], prep)[0])
                names.append(str(path))
            except FileNotFoundError:
                failed.append((str(path), "no such file"))
            except IsADirectoryError:
                failed.append((str(path), "a folder with no images"))
            except BAD_ERRORS as exc:
                why = str(exc) if isinstance(exc, BadImage) else type(exc).__name__
                failed.append((str(path), f"not a readable image ({why})"))
            if failed and on_bad == "error":
                first, reason = failed[0]
                raise ResnetlabError(f"{first}: {reason}; fix it or pass --on-bad skip")
        if not images:
            continue
        probs = image_probabilities(model, torch.stack(images), prep, tta=tta,
                                    temperature=loaded.temperature)  # fmt: skip
        values, index = probs.topk(k, dim=1)
        decided = loaded.decide(probs).tolist()
        found = loaded.abstentions(probs)
        sets: list[dict[str, Any] | None] = list(found) if found else [None] * len(names)
        for n, (name, v, i) in enumerate(zip(names, values.tolist(), index.tolist(), strict=True)):
            top = [(classes[c], p) for c, p in zip(i, v, strict=True)]
            if loaded.threshold is None:
                predictions.append(Prediction(name, top, conformal=sets[n]))
                continue
            predictions.append(Prediction(name, top, float(probs[n, 1]), loaded.threshold,
                                          classes[decided[n]], sets[n]))  # fmt: skip
    return predictions, failed


SET_COLUMNS = ("prediction_set", "action", "coverage")  # with conformal sets on the card


def _set_cells(p: Prediction) -> list[str]:
    c = p.conformal or {}
    return [";".join(c.get("prediction_set", [])), c.get("action", ""), f"{c.get('coverage', 0):g}"]


def render(predictions: list[Prediction], fmt: str) -> str:
    """A table (``text``), JSON lines' worth as one JSON list (``json``) or CSV (``csv``)."""
    if fmt == "json":
        rows = []
        for p in predictions:
            top = [{"class": c, "probability": v} for c, v in p.top]
            row: dict[str, Any] = {"path": p.path, "top": top}
            if p.decision is not None:
                row |= {"probability": p.probability, "threshold": p.threshold,
                        "decision": p.decision}  # fmt: skip
            if p.conformal is not None:
                row |= p.conformal
            rows.append(row)
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        k = max((len(p.top) for p in predictions), default=0)
        header = ["path"] + [f"{w}{i + 1}" for i in range(k) for w in ("class", "probability")]
        binary = any(p.decision is not None for p in predictions)
        sets = any(p.conformal is not None for p in predictions)
        writer.writerow(header + (["probability", "threshold", "decision"] if binary else [])
                        + (list(SET_COLUMNS) if sets else []))  # fmt: skip
        for p in predictions:
            extra = [f"{p.probability:.6f}", f"{p.threshold:.6f}", p.decision] if binary else []
            extra += _set_cells(p) if sets else []
            writer.writerow([p.path] + [x for c, v in p.top for x in (c, f"{v:.6f}")] + extra)
        return buffer.getvalue().rstrip("\n")
    if fmt != "text":
        raise ResnetlabError(f"unknown output format {fmt!r}; use text, json or csv.")
    width = max((len(p.path) for p in predictions), default=4)
    lines = [f"{'file':<{width}}  top classes (calibrated probability)"]
    for p in predictions:
        line = f"{p.path:<{width}}  " + ", ".join(f"{c} {v:.3f}" for c, v in p.top)
        if p.decision is not None:
            line += f"  -> {p.decision} (p {p.probability:.3f}, threshold {p.threshold:.3f})"
        if p.conformal is not None:
            c = p.conformal
            held = ", ".join(c["prediction_set"]) or "no class"
            line += f"  [{coverage_label(c['coverage'])}: {held}] action: {c['action']}"
        lines.append(line)
    return "\n".join(lines)


def at_prevalence(loaded: Trained, prevalence: float) -> str:
    """PPV and NPV of the card's operating point at ``prevalence``, from the sensitivity and
    specificity the run measured on test; or one line saying it has none."""
    clinical = loaded.card.get("clinical") or {}
    rates = (clinical.get("test") or {}).get("at_threshold") or {}
    if not isinstance(rates.get("sensitivity"), float | int) or "specificity" not in rates:
        return (
            f"{loaded.label} has no test rates (sensitivity and specificity on a test split) in "
            f"its model card, so PPV and NPV at a prevalence of {prevalence:.1%} are not shown; "
            "fine-tune with a test split (e.g. --test-size 0.2)"
        )
    values = predictive_values(rates["sensitivity"], rates["specificity"], prevalence)
    counted = [rates.get(k) for k in ("tp", "fn", "tn", "fp")]
    counts = [float(c) for c in counted if isinstance(c, int | float)]
    total = float(np.sum(counts))
    if len(counts) == 4 and total > 0:
        values["test_prevalence"] = (counts[0] + counts[1]) / total
    return (
        f"operating point {rates['threshold']:.4f} (test sensitivity {rates['sensitivity']:.3f}, "
        f"specificity {rates['specificity']:.3f}): " + prevalence_line(values)
    )


def report_failures(failed: list[tuple[str, str]]) -> None:
    for path, reason in failed:
        print(f"resnetlab predict: skipped {path}: {reason}", file=sys.stderr)
