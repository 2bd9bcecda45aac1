"""What a finished fine-tuning run leaves behind: the best model once as safetensors and once as
a torch file, the model card, merged metrics of both phases, plots, and the report (HTML +
Markdown); the training checkpoints are deleted unless ``keep_checkpoints`` is set.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import runfolder
from ..artifact import decide
from ..card import WEIGHTS, build_from_card, write_card
from ..console import say
from ..evaluation import clinic
from ..evaluation.gallery import draw_gallery
from ..evaluation.logits import format_metrics, image_logits, image_probabilities
from ..evaluation.metrics import classification_metrics
from ..evaluation.plots import plot_confusion, plot_history, plot_roc
from ..files import write_text_atomic
from ..reports.report import render_report
from ..runfolder import read_jsonl
from ..train.metrics import MetricsWriter
from ..weights import load_checkpoint, load_weights, save_weights
from .options import PHASES, FinetuneResult

CHECKPOINTS = ("last.pt", "best.pt")  # the engine's, in each phase folder
BEST_MODEL = "best_model.pt"  # the tracker's best model while the run is going
HEADLINE = ("loss", "accuracy", "balanced_accuracy", "roc_auc", "pr_auc", "macro_f1")


def finish(options, run_dir: Path, model: nn.Module, prep, bundle, data, info) -> FinetuneResult:
    """Save the best model and everything that describes it; returns the headline metrics."""
    best_path = run_dir / BEST_MODEL
    best = read_jsonl(run_dir / "val_metrics.jsonl")
    best_row = _best_row(best, options.monitor)
    if best_path.is_file():
        model.load_state_dict(load_checkpoint(best_path)["model"])
    elif (run_dir / "model.safetensors").is_file():  # a finished run, resumed: its saved model
        model.load_state_dict(load_weights(run_dir / "model.safetensors"))
    model.cpu().eval()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    classes = list(data.classes)
    card: dict[str, Any] = {
        "model": {
            "name": options.model,
            "in_channels": prep.channels,
            "options": dict(options.model_options),
            "num_classes": len(classes),
            "head_dropout": options.head_dropout,
            "parameters": total,
            "trainable": trainable,
        },
        "classes": classes,
        "preprocessing": prep.to_dict(),
        "weights": _weights_facts(model, options, info),
    }
    meta = {"model": options.model, "classes": classes, "preprocessing": prep.to_dict()}
    save_weights(model, run_dir / WEIGHTS, metadata=meta)
    save_weights(model, run_dir / "model.pt", metadata=meta)
    _check_reload(card, model, run_dir)
    digests = None  # the test images' content hashes, when none was left out
    if bundle.test is not None and data.test is not None and len(bundle.test) == len(data.test):
        digests = clinic.image_digests(bundle.test)
    metrics, clinical = split_metrics(options, run_dir, model, prep, data, best_row, digests)
    card["calibration"] = {"temperature": clinical["temperature"], "fitted_on": "val"}
    if "threshold" in clinical:
        card["operating_point"] = clinical["threshold"]
    records = merge_metrics(run_dir)
    plot_history(records, options.monitor, run_dir / "history.png")
    card["training"] = {
        "data": {
            "description": bundle.description,
            "source": bundle.source,
            "class_counts": info["counts"],
        },
        "options": dataclasses.asdict(options),
        "recipe": {
            "head_epochs": info["head_epochs"],
            "epochs": options.full_epochs,
            "phase2_frozen": info["phase2_frozen"],
            "lr_mult": info["lr_mult"],
            "head_lr": options.lr_of_head,
            "optimizer": options.optimizer,
            "weight_decay": options.decay,
            "schedule": options.schedule,
            "batch_size": info["batch_size"],
            "class_weights": info["class_weights"],
        },
        "notes": info["notes"],
        "command": runfolder.command_line(),
        "wall_time_s": round(info["wall_s"], 1),
    }
    card["metrics"] = {split: _card_metrics(m) for split, m in metrics.items()}
    card["clinical"] = clinical
    headline = summary_lines(card)  # the model line first, the split lines last
    card["summary"] = headline[:1] + clinic.summary_lines(clinical) + headline[1:]
    write_card(run_dir, card)
    write_report(run_dir, card, bundle.summary())
    best_path.unlink(missing_ok=True)  # the same weights as model.pt
    if not options.keep_checkpoints:
        for phase in PHASES:
            remove_checkpoints(run_dir / phase)
    say(f"done in {info['wall_s']:.0f} s: {run_dir / 'model_card.json'}")
    return FinetuneResult(run_dir, card, metrics)


def remove_checkpoints(phase_dir: Path) -> None:
    """Delete a phase's training checkpoints (weights and optimiser state); its records stay."""
    for name in CHECKPOINTS:
        (Path(phase_dir) / name).unlink(missing_ok=True)


def split_metrics(options, run_dir: Path, model: nn.Module, prep, data, best_row,
                  digests: list[str] | None = None):  # fmt: skip
    """Metrics, plots and the clinical section (temperature and threshold fitted on val, test
    figures with intervals, calibration, gallery) of the best model on val and test."""
    classes = list(data.classes)
    logits = {
        split: (image_logits(model, part.images, prep), part.labels)
        for split, part in (("val", data.val), ("test", data.test))
        if part is not None
    }
    fit = clinic.fit_on_val(*logits["val"], options.threshold, classes, split="val")
    test_probs = None
    if options.tta and data.test is not None:
        test_probs = image_probabilities(
            model, data.test.images, prep, tta=True, temperature=fit["temperature"]
        )
    clinical = clinic.analyse(fit, logits, classes, run_dir, seed=options.seed,
                              test_probs=test_probs, digests=digests,
                              prevalence=options.prevalence)  # fmt: skip
    metrics: dict[str, dict[str, Any]] = {}
    for split, (raw, labels) in logits.items():
        tta = options.tta and split == "test"
        probs = test_probs if tta else torch.softmax(raw / fit["temperature"], 1)
        assert probs is not None  # test_probs is computed whenever tta applies to test
        m = classification_metrics(probs.clamp_min(1e-12).log(), labels, classes)
        where = (
            f"val, best epoch {best_row['epoch']:g} ({best_row['phase']}) by {options.monitor}"
            if split == "val" and best_row
            else split
        )
        m |= {"measured_on": where + (", mirror-averaged" if tta else ""), "split": split}
        if split == "val" and best_row:
            m |= {"epoch": best_row["epoch"], "phase": best_row["phase"], "step": best_row["step"]}
        metrics[split] = m
        plot_confusion(m["confusion_matrix"], classes, run_dir / f"confusion_{split}.png",
                       f"{split} ({len(labels)} images, argmax)")  # fmt: skip
        plot_roc(probs, labels, classes, run_dir / f"roc_{split}.png", split)
        print(format_metrics(m))
    split = "test" if data.test is not None else "val"
    part = data.test if data.test is not None else data.val
    probs = test_probs if split == "test" and test_probs is not None else None
    if probs is None:
        probs = torch.softmax(logits[split][0] / fit["temperature"], 1)
    cut = fit.get("threshold", {}).get("threshold")
    shown = draw_gallery(model, part.images, part.labels, probs, decide(probs, cut), prep,
                         classes, run_dir / f"gallery_{split}.png")  # fmt: skip
    clinical["gallery"] = shown | {"split": split} if shown else None
    for line in clinic.summary_lines(clinical):
        say(line)
    return metrics, clinical


def _best_row(rows: list[dict[str, Any]], monitor: str) -> dict[str, Any] | None:
    rows = [r for r in rows if r[monitor] == r[monitor]]
    if not rows:
        return None
    pick = min if monitor == "loss" else max
    return pick(rows, key=lambda r: r[monitor])  # the first best, as the tracker keeps it


def _card_metrics(m: dict[str, Any]) -> dict[str, Any]:
    keep = (
        *HEADLINE,
        "n",
        "per_class",
        "confusion_matrix",
        "measured_on",
        "split",
        "epoch",
        "phase",
        "step",
    )
    return {k: m[k] for k in keep if k in m}


def _weights_facts(model: nn.Module, options, info: dict[str, Any]) -> dict[str, Any]:
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg.pop("classes", None)  # 1000 ImageNet names add nothing here
    return {
        "pretrained": options.pretrained,
        "file": info["weights_file"],
        "source": cfg,
        "files": {"safetensors": "model.safetensors", "torch": "model.pt"},
    }


def _check_reload(card: dict[str, Any], model: nn.Module, run_dir: Path) -> None:
    """The saved file must rebuild exactly this model from the card (the next user's path)."""
    rebuilt = build_from_card(card)
    rebuilt.load_state_dict(load_weights(run_dir / "model.safetensors"))
    for key, value in model.state_dict().items():
        if not torch.equal(value.cpu(), rebuilt.state_dict()[key]):
            raise RuntimeError(f"saved model differs from the trained one at {key}")


def flatten(prefix: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """Scalar metrics and per-class precision/recall/F1 as flat ``<prefix><name>`` columns."""
    out = {f"{prefix}{k}": metrics[k] for k in HEADLINE if k in metrics}
    for name, row in metrics.get("per_class", {}).items():
        for k in ("precision", "recall", "f1"):
            out[f"{prefix}{k}_{name}"] = row[k]
    return out


def merge_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Both phases' engine records in one ``metrics.jsonl``/``metrics.csv`` (steps and epochs
    counted from the start of phase 1; eval rows carry the full validation metric set)."""
    val = {(r["phase"], r["step"]): r for r in read_jsonl(run_dir / "val_metrics.jsonl")}
    writer = MetricsWriter(run_dir)
    step_offset, epoch_offset = 0, 0.0
    for phase in PHASES:
        records = read_jsonl(run_dir / phase / "metrics.jsonl")
        last = 0.0
        for r in records:
            row = {
                **r,
                "phase": phase,
                "phase_step": r["step"],
                "step": step_offset + r["step"],
                "epoch": round(epoch_offset + r["epoch"], 4),
            }
            if r["kind"] == "eval" and (phase, r["step"]) in val:
                row |= flatten("val_", val[(phase, r["step"])])
                row["val_error"] = 1.0 - row["val_accuracy"]
            writer.write(row)
            last = max(last, r["epoch"])
        if records:
            step_offset += max(r["step"] for r in records)
            epoch_offset += last
    return writer.records


def write_report(run_dir: Path, card: dict[str, Any], data_summary: str) -> None:
    """``run.json``, ``data.txt``, ``choices.txt``, then the experiments' report renderer
    (``report.html`` + ``report.md``), which shows them with the card's summary and plots."""
    train = card["training"]
    runfolder.finish(run_dir, "completed", extra={"data": train["data"]})
    write_text_atomic(run_dir / "data.txt", data_summary + "\n")
    write_text_atomic(run_dir / "choices.txt", "\n".join(train["notes"]) + "\n")
    render_report([run_dir])


def summary_lines(card: dict[str, Any]) -> list[str]:
    """The card's headline: model and weights, then each split's metrics and where measured."""
    spec, weights = card["model"], card["weights"]["pretrained"] or "none (from scratch)"
    lines = [f"{spec['name']} ({spec['parameters']:,} parameters), weights {weights}, "
             f"{len(card['classes'])} classes: {', '.join(card['classes'])}"]  # fmt: skip
    for split, m in card["metrics"].items():
        lines.append(
            f"{split}: accuracy {m['accuracy']:.4f}, balanced accuracy "
            f"{m['balanced_accuracy']:.4f}, ROC-AUC {m['roc_auc']:.4f}, macro F1 "
            f"{m['macro_f1']:.4f} (n {m['n']}; {m['measured_on']})"
        )
    return lines
