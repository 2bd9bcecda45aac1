"""The test-split predictions of a finished training run, made once at its end: logits of the
best (else last) checkpoint saved as ``test_predictions.npz``, and from them the per-class
precision, recall, F1, support and the confusion matrix (``per_class.json``, a PNG).

The data is opened, normalised and batched as the engine did (``train.prepare``), and the
metrics are the fine-tuner's (``evaluation.metrics``), so a report reads numbers, not models.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..card import CARD_NAME, read_card, write_card
from ..data import open_data
from ..files import atomic_write, write_json
from ..train import TrainConfig, load_checkpoint
from ..train.distributed import Dist
from ..train.prepare import Plan, make_loaders
from .clinic import image_digests
from .logits import loader_logits
from .metrics import classification_metrics
from .plots import plot_confusion

PER_CLASS = "per_class.json"
PREDICTIONS = "test_predictions.npz"


def split_predictions(
    config: TrainConfig, model: nn.Module, out_dir: str | Path, data: Any = None
) -> dict[str, Any] | None:
    """Evaluate ``best.pt`` (else ``last.pt``) on the test split (val without one), write the
    predictions, the per-class metrics and the confusion matrix; None when neither split exists.
    """
    out = Path(out_dir)
    checkpoint = out / "best.pt" if (out / "best.pt").is_file() else out / "last.pt"
    if data is None:
        data = open_data(config.data, val_size=config.val_size, seed=config.seed,
                         root=Path(config.data_root) if config.data_root else None,
                         on_bad=config.on_bad)  # fmt: skip
    split = next((s for s in ("test", "val") if getattr(data, s, None) is not None
                  and len(getattr(data, s)) > 0), None)  # fmt: skip
    if split is None:
        return None
    state = load_checkpoint(checkpoint)
    device = next(model.parameters()).device
    model.load_state_dict(state["model"])
    plan = Plan(str(device), False, False, False, False, False)
    loaders = make_loaders(config, data, Dist(device=device), plan, state["preprocess"])
    logits, labels = loader_logits(model, loaders[split])
    classes = list(data.classes)
    metrics = classification_metrics(logits, labels, classes)
    with atomic_write(out / PREDICTIONS) as handle:
        np.savez(handle, logits=logits.numpy(), labels=labels.numpy(),
                 predictions=logits.argmax(1).numpy(), classes=np.array(classes))  # fmt: skip
    facts = {
        "split": split,
        "checkpoint": checkpoint.name,
        "step": int(state.get("step", 0)),
        "classes": classes,
        **{k: metrics[k] for k in ("n", "loss", "accuracy", "balanced_accuracy", "macro_f1")},
        "error": 1.0 - metrics["accuracy"],
        "per_class": metrics["per_class"],
        "confusion_matrix": metrics["confusion_matrix"],
    }
    write_json(out / PER_CLASS, facts)
    if (out / CARD_NAME).is_file():  # the run's model card gains its test figures
        card = read_card(out / CARD_NAME)
        card.setdefault("metrics", {})[split] = {
            **{k: metrics[k] for k in ("n", "loss", "accuracy", "balanced_accuracy", "macro_f1")},
            "measured_on": f"{split}, {checkpoint.name} at step {facts['step']}, argmax",
            "images_sha256": hashlib.sha256("".join(image_digests(getattr(data, split)))
                                            .encode()).hexdigest(),
        }  # fmt: skip
        write_card(out, {k: v for k, v in card.items() if k != "format"})
    title = f"{split} ({facts['n']:,} images, {checkpoint.name} at step {facts['step']:,}, argmax)"
    plot_confusion(metrics["confusion_matrix"], classes, out / f"confusion_{split}.png", title)
    return facts
