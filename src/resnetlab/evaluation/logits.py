"""Logits and probabilities of a model over a loader or a batch of uint8 images, preprocessed
as the model expects, and the short metrics table printed after an evaluation.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from ..card import EXTERNAL, external_lines
from ..data.preprocess import Preprocessing, normalise, prepare_images
from ..models.inference import input_device
from .clinic import summary_lines
from .subgroups import subgroup_lines


@torch.no_grad()
def loader_logits(model: nn.Module, loader: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels over an evaluation loader; the modes of all modules are restored
    (a fine-tuner keeps frozen BatchNorm layers in eval mode)."""
    modes = [m.training for m in model.modules()]
    model.eval()
    logits, labels = [], []
    for x, y in loader.epoch(0):
        logits.append(model(x).float().cpu())
        labels.append(y.cpu())
    for module, mode in zip(model.modules(), modes, strict=True):
        module.training = mode
    return torch.cat(logits), torch.cat(labels)


@torch.no_grad()
def image_logits(
    model: nn.Module, images: torch.Tensor, prep: Preprocessing, *, batch_size: int = 64,
    mirror: bool = False,
) -> torch.Tensor:  # fmt: skip
    """Raw logits for uint8 images (N, C, H, W) of any size, preprocessed as ``prep`` says
    (what temperature scaling is fitted on); ``mirror``: of the mirror images."""
    device = input_device(model)
    model.eval()
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = normalise(prepare_images(images[start : start + batch_size], prep).to(device), prep)
        out.append(model(x.flip(-1) if mirror else x).float().cpu())
    return torch.cat(out) if out else torch.empty(0, 0)


def image_probabilities(
    model: nn.Module, images: torch.Tensor, prep: Preprocessing, *, batch_size: int = 64,
    tta: bool = False, temperature: float = 1.0,
) -> torch.Tensor:  # fmt: skip
    """Class probabilities of the logits over ``temperature``; ``tta`` averages each image's
    and its mirror's."""
    probs = torch.softmax(image_logits(model, images, prep, batch_size=batch_size)
                          / temperature, dim=1)  # fmt: skip
    if tta:
        mirrored = image_logits(model, images, prep, batch_size=batch_size, mirror=True)
        probs = (probs + torch.softmax(mirrored / temperature, dim=1)) / 2
    return probs


def format_metrics(metrics: dict[str, Any]) -> str:
    """A short table: the headline numbers, precision/recall/F1 per class, and for two
    classes the rates at the card's threshold and at 0.5 with their intervals."""
    lines = [
        f"{metrics.get('split', 'split')}: n {metrics['n']}, loss {metrics['loss']:.4f}, "
        f"accuracy {metrics['accuracy']:.4f}, "
        f"balanced accuracy {metrics['balanced_accuracy']:.4f}, "
        f"ROC-AUC {metrics['roc_auc']:.4f}, macro F1 {metrics['macro_f1']:.4f}",
        f"{'class':<20} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}",
    ]
    for name, row in metrics["per_class"].items():
        lines.append(
            f"{name[:20]:<20} {row['precision']:>9.4f} {row['recall']:>9.4f} "
            f"{row['f1']:>9.4f} {row['support']:>8}"
        )
    lines.append("confusion matrix [true][predicted]: " + json.dumps(metrics["confusion_matrix"]))
    if "splits" in metrics:
        lines.append(f"splits: {metrics['splits']}")
    if "clinical" in metrics:
        lines += summary_lines(metrics["clinical"])
    if "subgroups" in metrics:
        lines += subgroup_lines(metrics["subgroups"], metrics.get("split", "split"))
    if EXTERNAL in metrics:
        lines += external_lines({EXTERNAL: [metrics[EXTERNAL]]})
    return "\n".join(lines)
