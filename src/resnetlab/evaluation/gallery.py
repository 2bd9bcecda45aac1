"""The report's gallery: test images with their Grad-CAM maps, the most confident mistakes
first (fastai's "top losses"), then the most confident correct answers.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..analysis.gradcam import cam_maps, overlay
from ..data.preprocess import Preprocessing, normalise, prepare_images
from ..figures import pyplot, save_figure

WRONG, RIGHT = 8, 4


def pick(probs: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor) -> list[int]:
    """Indices: mistakes by loss (highest first), then correct answers by confidence."""
    loss = -probs[torch.arange(len(labels)), labels].clamp_min(1e-12).log()
    wrong = (predicted != labels).nonzero().flatten()
    right = (predicted == labels).nonzero().flatten()
    wrong = wrong[torch.argsort(loss[wrong], descending=True)][:WRONG]
    right = right[torch.argsort(loss[right])][:RIGHT]
    return wrong.tolist() + right.tolist()


def draw_gallery(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    probs: torch.Tensor,
    predicted: torch.Tensor,
    prep: Preprocessing,
    classes: list[str],
    path: Path,
    layer: str | None = None,
) -> dict | None:
    """Draw the gallery PNG (image, Grad-CAM overlay of the predicted class); returns what
    was shown, or None when there is nothing to show."""
    chosen = pick(probs, labels, predicted)
    if not chosen:
        return None
    index = torch.tensor(chosen)
    raw = prepare_images(images[index], prep)
    x = normalise(raw.to(next(model.parameters()).device), prep)
    result = cam_maps(model, x, target=predicted[index], layer=layer)
    plt = pyplot()
    cols = 4
    rows = -(-len(chosen) // cols)
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2 * cols * 1.7, rows * 2.1), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    shown = []
    for k, i in enumerate(chosen):
        r, c = divmod(k, cols)
        picture = raw[k].expand(3, -1, -1) if raw.shape[1] == 1 else raw[k]
        axes[r, 2 * c].imshow(picture.permute(1, 2, 0).numpy())
        axes[r, 2 * c + 1].imshow(overlay(raw[k], result["maps"][k]))
        ok = bool(predicted[i] == labels[i])
        p = float(probs[i, predicted[i]])
        axes[r, 2 * c].set_title(
            f"#{i} true {classes[labels[i]]}\npred {classes[predicted[i]]} {p:.2f}",
            fontsize=7,
            color="black" if ok else "#b00020",
        )
        shown.append({"index": i, "label": int(labels[i]), "predicted": int(predicted[i]),
                      "probability": p, "correct": ok})  # fmt: skip
    n_wrong = sum(not s["correct"] for s in shown)
    fig.suptitle(
        f"test images and Grad-CAM ({result['layer']}, predicted class): {n_wrong} most "
        f"confident mistakes (red), then {len(shown) - n_wrong} most confident correct",
        fontsize=9,
    )
    save_figure(fig, path, dpi=110)
    return {"layer": result["layer"], "images": shown, "file": Path(path).name}

