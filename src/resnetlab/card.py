"""The model card (``model_card.json``): what a fine-tuned model is, what it expects, how it
was trained and how well it did, and loading a model back from a run folder or a model file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data.preprocess import Preprocessing
from .errors import ResnetlabError
from .files import write_json
from .models import create_model, list_models
from .models.summary import count_parameters
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD
from .transfer import replace_head
from .weights import load_weights
from .weights.io import checkpoint_metadata
from .weights.pretrained import check_classes, load_state_dict_strict

CARD_NAME = "model_card.json"
CARD_FORMAT = "resnetlab-model-card/1"
WEIGHT_FILES = ("model.safetensors", "model.pt")


@dataclass
class LoadedModel:
    """A model in eval mode with its card, ready for prediction or evaluation."""

    model: nn.Module
    card: dict[str, Any]
    preprocessing: Preprocessing
    classes: list[str]
    weights: Path


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
            f"no model card at {path}; give a fine-tuning run folder or a model file with "
            f"{CARD_NAME} beside it."
        ) from None
    except (OSError, ValueError) as exc:
        raise ResnetlabError(f"{path} is not a readable model card ({exc}).") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise ResnetlabError(f"{path} is not a resnetlab model card (format {CARD_FORMAT}).")
    return card


def locate(source: str | Path) -> tuple[Path, Path]:
    """(card path, weights path) for a run folder or a model file with a card beside it."""
    source = Path(source)
    if source.is_dir():
        weights = next((source / n for n in WEIGHT_FILES if (source / n).is_file()), None)
        if weights is None:
            raise ResnetlabError(
                f"{source} holds no {' or '.join(WEIGHT_FILES)}; is the fine-tuning run finished?"
            )
        return source / CARD_NAME, weights
    if source.is_file():
        return source.parent / CARD_NAME, source
    raise ResnetlabError(f"{source} does not exist; give a run folder or a model file.")


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


def load_model(source: str | Path, device: str = "cpu") -> LoadedModel:
    """Load a fine-tuned model (run folder or model file + card) in eval mode."""
    card_path, weights = locate(source)
    card = read_card(card_path)
    model = build_from_card(card)
    load_state_dict_strict(model, load_weights(weights), source=weights.name)
    check_classes(model, list(card["classes"]), str(card_path))
    model.to(device).eval()
    prep = Preprocessing.from_dict(card["preprocessing"])
    return LoadedModel(model, card, prep, list(card["classes"]), weights)


def card_calibration(card: dict) -> tuple[float, float | None, str | None]:
    """(temperature, threshold, positive class) from a model card (1, None, None if absent)."""
    temperature = float(card.get("calibration", {}).get("temperature", 1.0))
    point = card.get("operating_point") or {}
    return temperature, point.get("threshold"), point.get("positive_class")


class Calibrated(nn.Module):
    """The model's logits over the card's temperature: its softmax is the calibrated one."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model, self.temperature = model, float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature


def export_input_size(source: str | Path) -> tuple[nn.Module, tuple[int, int, int]]:
    """For ``resnetlab export RUN_DIR``: the model (with the card's temperature, when it has
    one) and its (C, H, W) input size from the card."""
    loaded = load_model(source)
    prep = loaded.preprocessing
    temperature = loaded.card.get("calibration", {}).get("temperature")
    model = loaded.model if temperature is None else Calibrated(loaded.model, temperature).eval()
    return model, (prep.channels, prep.crop, prep.crop)


def run_summary(source: str | Path) -> str:
    """For ``resnetlab summary RUN_DIR``: architecture, head, parameters (total/trainable)."""

    card = read_card(locate(source)[0])
    model = build_from_card(card)
    total, _ = count_parameters(model)
    spec, prep = card["model"], Preprocessing.from_dict(card["preprocessing"])
    lines = [
        f"{spec['name']} fine-tuned for {len(card['classes'])} classes: "
        + ", ".join(card["classes"]),
        f"head: dropout {spec.get('head_dropout', 0.0)} + Linear; parameters {total:,} "
        f"(trainable while fine-tuning: {spec.get('trainable', total):,})",
        f"input: {prep.describe()}",
    ]
    for split, m in card.get("metrics", {}).items():
        lines.append(
            f"{split}: accuracy {m['accuracy']:.4f}, ROC-AUC {m['roc_auc']:.4f} "
            f"({m.get('measured_on', split)})"
        )
    return "\n".join(lines)


def build_model(
    source: str,
    model_name: str | None,
    pretrained: str | None,
    num_classes: int | None,
    in_channels: int | None,
) -> torch.nn.Module:
    """A model from a registered name (optionally with weights) or from a checkpoint file."""
    options = {"in_channels": in_channels} if in_channels is not None else {}
    if source in list_models():
        return create_model(
            source, num_classes=num_classes, pretrained=pretrained or False, **options
        )
    path = Path(source)
    if not path.is_file():
        raise ResnetlabError(
            f"{source!r} is neither a model name nor a checkpoint file; see `resnetlab models`."
        )
    name = model_name or checkpoint_metadata(path).get("model")
    if not name:
        raise ResnetlabError(f"{path} does not say which model it holds; pass --model NAME.")
    return create_model(name, num_classes=num_classes, pretrained=path, **options)


def is_fine_tuned(source: str) -> bool:
    """A fine-tuning run folder, or a model file with its model card beside it."""
    path = Path(source)
    return path.is_dir() or (path.is_file() and (path.parent / "model_card.json").is_file())


def load_source(source: str, pretrained: str | None, device: str):
    """(model, preprocessing, class names, temperature) of a run/model file or a model name."""
    if is_fine_tuned(source):
        loaded = load_model(source, device)
        temperature, _, _ = card_calibration(loaded.card)
        return loaded.model, loaded.preprocessing, loaded.classes, temperature
    model = build_model(source, None, pretrained, None, None).to(device).eval()
    info: Any = model.info  # set by create_model
    c, h, _ = info.input_size
    mean, std = (list(IMAGENET_MEAN), list(IMAGENET_STD)) if c == 3 else ([0.5] * c, [0.25] * c)
    prep = Preprocessing(h, round(h * 256 / 224) if h >= 224 else h, mean, std, channels=c)
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classes")
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    return model, prep, list(names or range(head.out_features)), 1.0
