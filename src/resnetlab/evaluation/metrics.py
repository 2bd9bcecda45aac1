"""Classification metrics practitioners report: accuracy, balanced accuracy, per-class
precision/recall/F1, the confusion matrix, ROC-AUC and PR-AUC (binary, or macro one-vs-rest).

Computed from logits and labels with torch alone, so they run wherever the model does.
"""

from __future__ import annotations

import torch


def confusion_matrix(
    labels: torch.Tensor, predictions: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Counts ``[true, predicted]``, shape (num_classes, num_classes)."""
    index = labels.long() * num_classes + predictions.long()
    counts = torch.bincount(index, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def roc_curve(scores: torch.Tensor, positive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """False- and true-positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    order = torch.argsort(scores.double(), descending=True, stable=True)
    scores, positive = scores.double()[order], positive.bool()[order]
    # One point per distinct score, so tied scores move the curve diagonally.
    last_of_run = torch.ones_like(scores, dtype=torch.bool)
    last_of_run[:-1] = scores[1:] != scores[:-1]
    tp = torch.cumsum(positive.double(), 0)[last_of_run]
    fp = torch.cumsum((~positive).double(), 0)[last_of_run]
    zero = torch.zeros(1, dtype=torch.float64)
    fpr = torch.cat([zero, fp / max(fp[-1].item(), 1.0)])
    tpr = torch.cat([zero, tp / max(tp[-1].item(), 1.0)])
    return fpr, tpr


def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve (trapezoidal); NaN when only one class is present."""
    if positive.all() or not positive.any():
        return float("nan")
    fpr, tpr = roc_curve(scores, positive)
    return float(torch.trapezoid(tpr, fpr))


def average_precision(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """PR-AUC as scikit-learn's ``average_precision_score``; NaN without positives."""
    positive = positive.bool()
    if not positive.any():
        return float("nan")
    order = torch.argsort(scores.double(), descending=True, stable=True)
    s, y = scores.double()[order], positive[order]
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]
    tp = torch.cumsum(y.double(), 0)[last]
    fp = torch.cumsum((~y).double(), 0)[last]
    gained = torch.diff(torch.cat([torch.zeros(1, dtype=torch.float64), tp]))
    return float((gained * tp / (tp + fp)).sum() / tp[-1])


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor, classes: list[str] | None = None
) -> dict:
    """Every metric of a labelled split, as plain Python numbers (JSON-ready)."""
    logits, labels = logits.detach().float().cpu(), labels.detach().long().cpu()
    num_classes = logits.shape[1]
    classes = classes or [str(i) for i in range(num_classes)]
    probabilities = torch.softmax(logits, dim=1)
    predictions = probabilities.argmax(dim=1)
    matrix = confusion_matrix(labels, predictions, num_classes).double()
    true_positive = matrix.diag()
    support = matrix.sum(dim=1)
    predicted = matrix.sum(dim=0)
    precision = torch.where(predicted > 0, true_positive / predicted.clamp(min=1), 0.0)
    recall = torch.where(support > 0, true_positive / support.clamp(min=1), 0.0)
    denominator = precision + recall
    f1 = torch.where(denominator > 0, 2 * precision * recall / denominator.clamp(min=1e-12), 0.0)
    present = support > 0
    loss = torch.nn.functional.cross_entropy(logits, labels).item() if len(labels) else float("nan")
    if num_classes == 2:
        auc = roc_auc(probabilities[:, 1], labels == 1)
        pr_auc = average_precision(probabilities[:, 1], labels == 1)
    else:
        per_class = [roc_auc(probabilities[:, c], labels == c) for c in range(num_classes)]
        valid = [a for a in per_class if a == a]
        auc = sum(valid) / len(valid) if valid else float("nan")
        per_class = [
            average_precision(probabilities[:, c], labels == c) for c in range(num_classes)
        ]
        valid = [a for a in per_class if a == a]
        pr_auc = sum(valid) / len(valid) if valid else float("nan")
    return {
        "n": len(labels),
        "loss": loss,
        "accuracy": float(true_positive.sum() / max(len(labels), 1)),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        "roc_auc": auc,
        "pr_auc": pr_auc,
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
        "confusion_matrix": matrix.long().tolist(),
    }
