"""What the report says about a training run folder: findings in words (final metrics on each
split, the best checkpoint, time, images/s), the training curves, and the per-class metrics and
confusion matrix that ``per_class.json`` holds (``evaluation.predictions``).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from ..figures import pyplot, save_figure

CURVE_KEYS = ("train_error", "val_error", "test_error")
PER_CLASS = "per_class.json"
MAX_MATRIX = 20  # classes up to which the confusion matrix is also shown as a table


def _pct(value: float) -> str:
    return f"{100 * value:.2f} %"


def findings(run: dict[str, Any], config: dict[str, Any], records: list[dict]) -> list[str]:
    """The run's headline, every number read from ``metrics.jsonl`` and ``run.json``."""
    trains = [r for r in records if r.get("kind") == "train" and "step" in r]
    evals = [r for r in records if r.get("kind") == "eval" and "step" in r]
    planned = config.get("resolved", {}).get("max_iters") or config.get("max_iters")
    lines = []
    last_step = max([0, *(r["step"] for r in records if isinstance(r.get("step"), int))])
    of = f" of {planned:,}" if isinstance(planned, int) else ""
    parts = []
    if trains and isinstance(trains[-1].get("error"), int | float):
        parts.append(f"train {_pct(trains[-1]['error'])} (running error of the last logged "
                     "batches, augmented)")  # fmt: skip
    last_eval = evals[-1] if evals else {}
    for split in ("val", "test"):
        if isinstance(last_eval.get(f"{split}_error"), int | float):
            parts.append(f"{split} {_pct(last_eval[f'{split}_error'])}")
    if parts:
        lines.append(f"Final errors at step {last_step:,}{of}: " + ", ".join(parts) + ".")
    scored = [r for r in evals if isinstance(r.get("val_error"), int | float)]
    if scored:
        best = min(scored, key=lambda r: r["val_error"])
        test = f", test error {_pct(best['test_error'])}" if "test_error" in best else ""
        lines.append(f"Best checkpoint: best.pt, step {best['step']:,} (lowest val error "
                     f"{_pct(best['val_error'])}{test}).")  # fmt: skip
    elif records:
        lines.append(f"Best checkpoint: none (no val split); last.pt holds step {last_step:,}.")
    speeds = [r["images_per_s"] for r in trains if isinstance(r.get("images_per_s"), int | float)]
    timing = run.get("timing", {})
    time_parts = []
    if trains and isinstance(trains[-1].get("time_s"), int | float):
        time_parts.append(f"{trains[-1]['time_s']:.1f} s of training")
    if timing.get("wall_time_s") is not None:
        time_parts.append(f"wall time {timing['wall_time_s']:.1f} s with evaluations")
    if speeds:
        time_parts.append(f"median {statistics.median(speeds):,.0f} images/s over "
                          f"{len(speeds)} logged intervals")  # fmt: skip
    if time_parts:
        device = run.get("machine", {}).get("device")
        lines.append("Time: " + ", ".join(time_parts) + (f" on {device}." if device else "."))
    if run.get("status") not in (None, "completed"):
        lines.append(f"Status: {run['status']}.")
    return lines


def per_class_findings(folder: Path) -> tuple[list[str], list[tuple[str, list[dict]]]]:
    """From ``per_class.json``: one finding line, the per-class table and the confusion matrix
    (rows: true class, columns: predicted) as a table for up to ``MAX_MATRIX`` classes."""
    path = folder / PER_CLASS
    if not path.is_file():
        return [], []
    facts = json.loads(path.read_text())
    rows = [
        {"class": name, "precision": f"{r['precision']:.4f}", "recall": f"{r['recall']:.4f}",
         "F1": f"{r['f1']:.4f}", "support": r["support"]}
        for name, r in facts["per_class"].items()
    ]  # fmt: skip
    by_f1 = sorted(facts["per_class"].items(), key=lambda item: item[1]["f1"])
    split, n = facts["split"], facts["n"]
    line = (
        f"{split.capitalize()} split ({n:,} images, {facts['checkpoint']} at step "
        f"{facts['step']:,}): accuracy {_pct(facts['accuracy'])}, macro F1 "
        f"{facts['macro_f1']:.4f}; weakest class {by_f1[0][0]!r} (F1 {by_f1[0][1]['f1']:.3f}), "
        f"strongest {by_f1[-1][0]!r} (F1 {by_f1[-1][1]['f1']:.3f})."
    )
    tables = [(f"Per-class metrics, {split} split", rows)]
    classes = facts["classes"]
    if len(classes) <= MAX_MATRIX:
        matrix = [
            {"true \\ predicted": name, **dict(zip(classes, counts, strict=True))}
            for name, counts in zip(classes, facts["confusion_matrix"], strict=True)
        ]
        tables.append((f"Confusion matrix, {split} split (rows: true class)", matrix))
    return [line], tables


def training_curve(records: list[dict], title: str, path: Path) -> Path | None:
    """Train/val/test error (and train loss) against iteration; missing keys are skipped."""
    series: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        if "step" not in r:
            continue
        values = {k: r[k] for k in (*CURVE_KEYS, "train_loss") if k in r}
        if r.get("kind") == "train":
            values.setdefault("train_error", r.get("error"))
            values.setdefault("train_loss", r.get("loss"))
        for key, value in values.items():
            if isinstance(value, int | float):
                series.setdefault(key, []).append((r["step"], float(value)))
    errors = {k: v for k, v in series.items() if k.endswith("_error")}
    if not series:
        return None
    plt = pyplot()
    panels = [p for p in (errors, {"train_loss": series.get("train_loss", [])}) if any(p.values())]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        is_error = panel is errors
        percent = is_error and all(v <= 1.0 for s in panel.values() for _, v in s)
        for key, points in panel.items():
            steps, ys = zip(*points, strict=True)
            shown = [v * 100 for v in ys] if percent else list(ys)
            ax.plot(steps, shown, label=key.replace("_", " "), linewidth=1.2, marker="o",
                    markersize=2.5)  # fmt: skip
        ax.set_xlabel("iteration")
        ax.set_ylabel("error (%)" if is_error else "training loss (cross-entropy)")
        every = [v for points in panel.values() for _, v in points]
        if not is_error and min(every) > 0 and max(every) / min(every) > 10:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
