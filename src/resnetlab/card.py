"""The model card (``model_card.json``) beside ``model.safetensors``: what a trained model is,
what it expects, how it decides, how it was made and how well it did. Every run that yields a
model (``train``, ``finetune``, each fold, each degradation arm) ends with these two files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ResnetlabError
from .files import write_json
from .models import create_model
from .models.summary import count_parameters
from .preprocessing import Preprocessing
from .transfer import replace_head
from .weights.io import save_weights

CARD_NAME = "model_card.json"
CARD_FORMAT = "resnetlab-model-card/1"
WEIGHTS = "model.safetensors"
SMALL_IMAGES = 64  # the engine holds images up to this size in memory, at their own size
FIT_SPLIT = "val"  # the one split a temperature, threshold or conformal set is fitted on


def check_fit_split(split: str, what: str) -> None:
    """Refuse to fit ``what`` (a threshold, a conformal set) on any split but validation: one
    fitted on test would leak its labels into the figures measured there."""
    if split != FIT_SPLIT:
        raise ResnetlabError(
            f"the {what} is chosen on the validation split only, not on {split!r} (test "
            "labels would leak into the test figures); give the validation split's "
            "probabilities and labels."
        )


def check_provenance(card: Mapping[str, Any], where: str) -> None:
    """Refuse a card whose temperature, threshold or conformal sets say they were fitted on
    the test split (``fitted_on`` / ``chosen_on``); cards that say nothing were fitted on val."""
    recorded = {
        "temperature": (card.get("calibration") or {}).get("fitted_on"),
        "threshold": (card.get("operating_point") or {}).get("chosen_on"),
        "conformal sets": ((card.get("clinical") or {}).get("conformal") or {}).get("fitted_on"),
    }
    for what, split in recorded.items():
        if isinstance(split, str) and split.split(" ")[0] == "test":
            raise ResnetlabError(
                f"{where}: the {what} was fitted on the test split, so the test figures are "
                "not held out; fit it again on validation (re-run resnetlab finetune)."
            )
EXTERNAL = "external_validation"  # the card's list of evaluations on other data
EXTERNAL_METRICS = (("roc_auc", "ROC-AUC"), ("sensitivity", "sensitivity"),
                    ("specificity", "specificity"), ("accuracy", "accuracy"))  # fmt: skip


def write_card(folder: Path, card: dict[str, Any]) -> Path:
    """Write ``model_card.json`` atomically."""

    path = Path(folder) / CARD_NAME
    write_json(path, {"format": CARD_FORMAT, **card})
    return path


def read_card(path: Path) -> dict[str, Any]:
    """Read a model card; a missing or foreign file is one clear error."""
    path = Path(path)
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResnetlabError(
            f"no model card at {path}; give a run folder or a model file with {CARD_NAME} "
            "beside it."
        ) from None
    except (OSError, ValueError) as exc:
        raise ResnetlabError(f"{path} is not a readable model card ({exc}).") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise ResnetlabError(f"{path} is not a resnetlab model card (format {CARD_FORMAT}).")
    for key in ("model", "classes", "preprocessing"):
        if key not in card:
            raise ResnetlabError(f"{path}: the card has no {key!r}; re-create the run's card.")
    return card


def add_external_validation(folder: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Record an external validation in the card of ``folder`` (written atomically): appended
    to ``external_validation``, replacing the entry of the same data and split."""
    card = read_card(Path(folder) / CARD_NAME)
    entries = [e for e in card.get(EXTERNAL) or []
               if (e.get("data"), e.get("split")) != (entry["data"], entry["split"])]  # fmt: skip
    card[EXTERNAL] = [*entries, entry]
    write_card(folder, {k: v for k, v in card.items() if k != "format"})
    return card


def external_lines(card: dict[str, Any]) -> list[str]:
    """One line per external validation in a card (none for older cards)."""
    lines = []
    for e in card.get(EXTERNAL) or []:
        drop = e.get("drop") or {}
        shown = ", ".join(
            f"{name} {e['metrics'][key]:.3f}"
            + (f" ({-drop[key]:+.3f} vs internal test)" if drop.get(key) is not None else "")
            for key, name in EXTERNAL_METRICS if e["metrics"].get(key) is not None
        )  # fmt: skip
        lines.append(f"external validation on {e['name']} ({e['split']}, {e['images']} images, "
                     f"{e['date'][:10]}): {shown}")  # fmt: skip
    return lines


def card_preprocessing(values: Mapping[str, Any], where: str) -> Preprocessing:
    """The card's ``preprocessing`` as the record; a bad field is one line naming it."""
    try:
        return Preprocessing.from_dict(dict(values))
    except (ResnetlabError, TypeError) as exc:
        raise ResnetlabError(f"{where}: preprocessing: {exc}") from None


def build_from_card(card: dict[str, Any]) -> nn.Module:
    """The card's architecture with its head, randomly initialised (weights are loaded next)."""

    spec = card["model"]
    model = create_model(
        spec["name"],
        num_classes=len(card["classes"]),
        in_channels=spec["in_channels"],
        **spec.get("options", {}),
    )
    return replace_head(model, len(card["classes"]), dropout=spec.get("head_dropout", 0.0))


def check_against_weights(
    model: nn.Module, state: Mapping[str, torch.Tensor], classes: list, channels: int, where: str
) -> None:
    """Refuse a card whose class list or input channels disagree with the weights (one line
    naming the field), before a mismatch could reach a prediction as a wrong index."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    head = state.get(f"{names[-1]}.weight") if names else None
    if head is not None and head.shape[0] != len(classes):
        raise ResnetlabError(
            f"{where}: classes lists {len(classes)} class names but the weights' head has "
            f"{head.shape[0]} outputs; give one name per output."
        )
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    stem = state.get(f"{convs[0]}.weight") if convs else None
    if stem is not None and stem.shape[1] != channels:
        raise ResnetlabError(
            f"{where}: preprocessing.channels is {channels} but the weights take "
            f"{stem.shape[1]} input channel(s); fix the card's channels, mean and std."
        )


def train_card(
    config: Mapping[str, Any],
    classes: list,
    preprocess: Mapping[str, Any] | None,
    model: nn.Module,
    image_size: int | None = None,
) -> dict[str, Any]:
    """The card of a ``resnetlab train`` run from its settings (``config.json``), its classes
    and normalisation (the checkpoint's ``preprocess``) and the model. Inputs are the training
    images' size (``image_size``; else the per-pixel mean's or the model's), resized whole up to
    64 px as the engine keeps them, else 224 px after a resize to 256."""
    info: Any = getattr(model, "info", None)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    channels = convs[0].in_channels if convs else 3
    norm = dict(preprocess or {})
    pixel = norm.get("pixel_mean")
    if pixel is not None:
        pixel = torch.as_tensor(pixel).float()
        image_size = int(pixel.shape[-1])
    size = image_size or (info.input_size[-1] if info is not None else 32)
    prep = Preprocessing.for_input(
        channels, size if size <= SMALL_IMAGES else 224, norm.get("mean"), norm.get("std"),
        pixel.tolist() if pixel is not None else None,
    )  # fmt: skip
    total, _ = count_parameters(model)
    return {
        "model": {"name": config.get("model") or (info.name if info is not None else None),
                  "in_channels": channels, "options": dict(config.get("model_options") or {}),
                  "num_classes": len(classes), "head_dropout": 0.0, "parameters": total},
        "classes": [str(c) for c in classes],
        "preprocessing": prep.to_dict(),
        "calibration": {"temperature": 1.0, "fitted_on": None},
        "operating_point": None,
        "training": {"kind": "train", "options": dict(config)},
    }  # fmt: skip


def save_artifact(
    folder: Path, state: Mapping[str, torch.Tensor], card: dict[str, Any]
) -> Path:
    """``model.safetensors`` (the card's essentials in its header) and ``model_card.json``."""
    meta = {"model": card["model"]["name"], "classes": card["classes"],
            "preprocessing": card["preprocessing"]}  # fmt: skip
    save_weights(dict(state), Path(folder) / WEIGHTS, metadata=meta)
    return write_card(folder, card)
