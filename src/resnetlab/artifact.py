"""One loader for every trained model: :func:`load_trained` opens a registered model name (with
optional weights), a weights file, a run folder of ``train`` or ``finetune`` (old layouts too), a
Hub folder or an ``hf-hub:ORG/NAME`` id, and returns a :class:`Trained`: the model in eval
mode with its card, which owns the preprocessing and the decision rule. ``predict``,
``evaluate``, ``explain``, ``export``, ``serve`` and the studies all load through it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import runfolder
from .card import (
    CARD_NAME,
    build_from_card,
    card_preprocessing,
    check_against_weights,
    check_provenance,
    external_lines,
    read_card,
    train_card,
)
from .data.preprocess import normalise, prepare_images
from .errors import ResnetlabError
from .models import create_model, list_models
from .models.inference import optimize_for_inference
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from .weights.hf_hub import CONFIG, hub_config, is_hub_spec
from .weights.io import checkpoint_metadata, load_checkpoint, load_weights
from .weights.pretrained import check_classes, load_state_dict_strict

CARD_WEIGHTS = ("model.safetensors", "model.pt")  # beside a card; the first is preferred
RUN_CHECKPOINTS = ("best.pt", "last.pt")  # a train run folder without a card (older layout)


def is_positive(p1: Any, threshold: float) -> Any:
    """The two-class rule, written once: the positive class when its probability reaches the
    threshold (``p1 >= threshold``); for a number, an array or a tensor."""
    return p1 >= threshold


def decide(probs: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """The decision rule: for two classes with a threshold, :func:`is_positive`; otherwise the
    most probable class."""
    if threshold is None or probs.shape[1] != 2:
        return probs.argmax(1)
    return is_positive(probs[:, 1], threshold).long()


def conformal_sets(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """Split-conformal (LAC) prediction sets: each class whose ``1 - p`` is at most the
    threshold fitted on validation; (N, classes) booleans. A set of several classes is the
    model saying "refer to a human", an empty one that the image is unlike its validation
    images."""
    return 1 - probs.double() <= threshold


REFER = "refer to a human"  # the action when the conformal set does not single out a class


def set_actions(sets: torch.Tensor, decided: torch.Tensor, classes: list[str]) -> list[str]:
    """Per row of conformal sets (N, classes booleans): the decided class when the set holds
    that one class alone, else :data:`REFER`: a set of several classes (the model cannot tell
    them apart at the coverage), an empty set (no class is likely enough: the image is unlike
    the validation images) or a lone class the decision rule (the threshold) does not pick."""
    actions = []
    for row, pick in zip(sets.tolist(), decided.tolist(), strict=True):
        alone = sum(row) == 1 and row[pick]
        actions.append(classes[pick] if alone else REFER)
    return actions


def coverage_label(coverage: float) -> str:
    """How a set's coverage is shown: ``95 % set``."""
    return f"{100 * coverage:g} % set"


@dataclass
class Trained:
    """A model in eval mode and its card: the preprocessing that turns uint8 images into its
    inputs, its classes, and the decision rule (temperature, two-class threshold)."""

    model: nn.Module
    card: dict[str, Any]
    preprocessing: Preprocessing
    classes: list[str]
    weights: Path | None = None
    label: str = ""
    run: Path | None = None  # the folder whose model card this is (None: a model or Hub id)
    engines: dict[str, nn.Module] = field(default_factory=dict, repr=False, compare=False)

    @property
    def temperature(self) -> float:
        return float((self.card.get("calibration") or {}).get("temperature") or 1.0)

    @property
    def threshold(self) -> float | None:
        value = (self.card.get("operating_point") or {}).get("threshold")
        return float(value) if value is not None and len(self.classes) == 2 else None

    @property
    def positive_class(self) -> str | None:
        return (self.card.get("operating_point") or {}).get("positive_class")

    @property
    def conformal(self) -> dict[str, Any] | None:
        """The card's split-conformal fit (coverage, threshold; fitted on validation)."""
        return (self.card.get("clinical") or {}).get("conformal")

    def prediction_sets(self, probs: torch.Tensor) -> torch.Tensor | None:
        """Calibrated probabilities to conformal sets (:func:`conformal_sets`); None when the
        card has no conformal fit."""
        fit = self.conformal
        return None if fit is None else conformal_sets(probs, float(fit["threshold"]))

    def abstentions(self, probs: torch.Tensor) -> list[dict[str, Any]] | None:
        """Per row of calibrated probabilities: its conformal set (class names), the action
        (:func:`set_actions`) and the set's coverage; None when the card has no conformal fit
        (the outputs then stay as they were)."""
        sets, fit = self.prediction_sets(probs), self.conformal
        if sets is None or fit is None:
            return None
        coverage = float(fit["coverage"])
        actions = set_actions(sets, self.decide(probs), self.classes)
        return [{"prediction_set": [c for c, held in zip(self.classes, row, strict=True) if held],
                 "action": action, "coverage": coverage}
                for row, action in zip(sets.tolist(), actions, strict=True)]  # fmt: skip

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def optimized(self, engine: str = "auto") -> nn.Module:
        """The model as ``optimize_for_inference`` runs it with ``engine``, at the card's input
        size; made on the first call and kept, so later calls cost nothing."""
        if engine not in self.engines:
            prep = self.preprocessing
            self.engines[engine] = optimize_for_inference(
                self.model, engine=engine, input_size=(prep.channels, prep.crop, prep.crop)
            )
        return self.engines[engine]

    def prepared(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, C, H, W) of any size at the model's size and channels (uint8)."""
        return prepare_images(images, self.preprocessing)

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, C, H, W) of any size to the model's normalised input."""
        return normalise(self.prepared(images).to(self.device), self.preprocessing)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities: softmax of the logits over the temperature."""
        return torch.softmax(logits.float() / self.temperature, dim=1)

    def decide(self, probs: torch.Tensor) -> torch.Tensor:
        """The class index each row of probabilities decides for (:func:`decide`)."""
        return decide(probs, self.threshold)

    def rule(self) -> str:
        if self.threshold is None:
            return "the most probable class"
        return f"{self.classes[1]} when its probability >= {self.threshold:.4f}"


def load_trained(
    source: str | Path,
    pretrained: str | None = None,
    device: str = "cpu",
    *,
    model_name: str | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
) -> Trained:
    """The trained model ``source`` names, on ``device`` in eval mode.

    ``source``: a run folder (model card + weights; or a ``train`` run's ``config.json`` +
    ``best.pt``/``last.pt``), a model file with its card beside it, a Hub folder, an
    ``hf-hub:ORG/NAME`` id, a registered model name (``pretrained``: a tag, file or URL) or
    a weights file (``model_name`` when it does not record its architecture)."""
    text, path = str(source), Path(str(source)).expanduser()
    has_card = path.is_file() and (path.parent / CARD_NAME).is_file()
    if (path.is_dir() or has_card) and pretrained:
        raise ResnetlabError(f"{source} brings its own weights; drop --pretrained.")
    if is_hub_spec(text):
        trained = _from_model(create_model(**_hub_build(text)), text, text)
    elif path.is_dir() or has_card:
        trained = _from_folder(path)
    elif text in list_models() or path.is_file():  # a name (+ weights) or a weights file
        named = text in list_models()
        name = text if named else model_name or checkpoint_metadata(path).get("model")
        if not name:
            raise ResnetlabError(f"{path} does not say which model it holds; pass --model NAME.")
        weights = (pretrained or False) if named else path
        options = {"in_channels": in_channels} if in_channels is not None else {}
        model = create_model(name, num_classes=num_classes, pretrained=weights, **options)
        shown = (pretrained or "random weights") if named else path.name
        trained = _from_model(model, f"{name} ({shown})", pretrained if named else str(path))
    else:
        raise ResnetlabError(
            f"{text!r} is neither a model name nor a checkpoint (weights file, run folder, Hub "
            "folder or hf-hub: id); "
            "see `resnetlab models`."
        )
    trained.model.to(device).eval()
    return trained


def _from_folder(path: Path) -> Trained:
    folder = path if path.is_dir() else path.parent
    if (folder / CARD_NAME).is_file():
        weights = path if path.is_file() else _first(folder, CARD_WEIGHTS)
        if weights is None:
            raise ResnetlabError(
                f"{folder} holds {CARD_NAME} but no {' or '.join(CARD_WEIGHTS)}; is the run "
                "finished?"
            )
        return _from_card(read_card(folder / CARD_NAME), weights, folder)
    config = _read_json(folder / CONFIG) if (folder / CONFIG).is_file() else None
    if config is None:
        raise ResnetlabError(
            f"{folder} holds no {CARD_NAME} or {CONFIG}; give a finished run folder (train or "
            "finetune), a Hub folder, or a model name."
        )
    if "architecture" in config:  # a Hub folder without resnetlab's card
        return _from_model(create_model(**_hub_build(str(folder))), str(folder), str(folder))
    return _from_train_run(folder, config)


def _from_card(card: dict[str, Any], weights: Path, folder: Path) -> Trained:
    where = str(folder / CARD_NAME)
    check_provenance(card, where)  # nothing fitted on test is ever used
    prep = card_preprocessing(card["preprocessing"], where)
    model = build_from_card(card)
    state = load_weights(weights)
    check_against_weights(model, state, card["classes"], prep.channels, where)
    load_state_dict_strict(model, state, source=weights.name)
    label = f"{card['model']['name']} ({folder.resolve().name})"
    return Trained(model, card, prep, [str(c) for c in card["classes"]], weights, label, folder)


def _from_train_run(folder: Path, config: dict[str, Any]) -> Trained:
    """A ``resnetlab train`` folder written before runs ended with a card: its ``config.json``
    names the model, ``best.pt`` (else ``last.pt``) holds weights, classes and normalisation."""
    if not isinstance(config.get("model"), str):
        raise ResnetlabError(
            f"{folder / CONFIG} names no model (key 'model'); give a resnetlab train run folder."
        )
    weights = _first(folder, RUN_CHECKPOINTS)
    if weights is None:
        raise ResnetlabError(f"{folder} holds no best.pt or last.pt. Pass a finished training run.")
    ckpt = load_checkpoint(weights)  # weights_only: a code-running pickle is one error
    state = ckpt.get("model", ckpt)
    classes = [str(c) for c in ckpt.get("classes") or []]
    stems = [v for v in state.values() if torch.is_tensor(v) and v.dim() == 4]
    options = dict(config.get("model_options") or {})
    if stems:
        options.setdefault("in_channels", int(stems[0].shape[1]))
    model = create_model(config["model"], **options)
    load_state_dict_strict(model, state, source=weights.name)  # the head: the weights' size
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    classes = classes or [str(i) for i in range(head.out_features)]
    check_classes(model, classes, str(weights))
    size = (runfolder.read(folder).get("data") or {}).get("image_size")
    card = train_card(config, classes, ckpt.get("preprocess"), model,
                      max(size) if isinstance(size, list) and size else None)  # fmt: skip
    prep = card_preprocessing(card["preprocessing"], str(weights))
    label = f"{config['model']} ({folder.resolve().name})"
    return Trained(model, card, prep, classes, weights, label, folder)


def _hub_build(spec: str) -> dict[str, Any]:
    """``create_model`` arguments for an ``hf-hub:`` id or a Hub folder, from its config."""
    config = hub_config(spec)
    return {"name": config["architecture"], "pretrained": spec,
            "in_channels": int(config.get("in_channels") or 3),
            **dict(config.get("model_options") or {})}  # fmt: skip


def _from_model(model: nn.Module, label: str, pretrained: str | None) -> Trained:
    """A model built by ``create_model``; its weights' ``pretrained_cfg`` gives the classes,
    preprocessing and decision rule (a Hub export's), else the model's nominal input with
    ImageNet mean/std (0.5/0.25 for other channel counts) is assumed (the card then records
    no preprocessing, so an export does not claim one)."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    info: Any = model.info  # set by create_model
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    channels, where = stem.in_channels, pretrained or info.name
    given = cfg.get("preprocessing")  # recorded with the weights, else assumed
    given = given if isinstance(given, dict) and int(given.get("channels", 3)) == channels else None
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,) * channels,
                                                                      (0.25,) * channels)
    prep = card_preprocessing(given, where) if given else Preprocessing.for_input(
        channels, info.input_size[-1], mean, std)  # fmt: skip
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    classes = [str(c) for c in cfg.get("classes") or range(head.out_features)]
    check_classes(model, classes, where)
    card = {
        "model": {"name": info.name, "in_channels": channels, "options": {},
                  "num_classes": len(classes)},
        "classes": classes,
        "preprocessing": prep.to_dict() if given else None,
        "calibration": {k: cfg[k] for k in ("temperature",) if cfg.get(k) is not None},
        "operating_point": {k: cfg.get(k) for k in ("threshold", "positive_class")}
        if cfg.get("threshold") is not None else None,
        "weights": {"pretrained": pretrained, "source": {"licence": cfg.get("licence")}},
    }  # fmt: skip
    return Trained(model, card, prep, classes, None, label)


def _first(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ResnetlabError(f"{path} is not readable JSON ({exc}).") from None
    if not isinstance(value, dict):
        raise ResnetlabError(f"{path} holds no settings (a JSON object); check the file.")
    return value


class Calibrated(nn.Module):
    """The model's logits over the card's temperature: its softmax is the calibrated one."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model, self.temperature = model, float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature


def export_input_size(source: str | Path | Trained) -> tuple[nn.Module, tuple[int, int, int]]:
    """For ``resnetlab export RUN``: the model over its temperature (when the card has one)
    and its (C, H, W) input size."""
    trained = source if isinstance(source, Trained) else load_trained(source)
    prep = trained.preprocessing
    has_temperature = (trained.card.get("calibration") or {}).get("temperature") is not None
    model = Calibrated(trained.model, trained.temperature).eval() if has_temperature else (
        trained.model)  # fmt: skip
    return model, (prep.channels, prep.crop, prep.crop)


def run_summary(source: str | Path) -> str:
    """For ``resnetlab summary RUN``: architecture, head, parameters, input and metrics."""
    trained = load_trained(source)
    card, prep = trained.card, trained.preprocessing
    spec = card["model"]
    total = sum(p.numel() for p in trained.model.parameters())
    how = "trained" if (card.get("training") or {}).get("kind") == "train" else "fine-tuned"
    lines = [
        f"{spec['name']} {how} for {len(trained.classes)} classes: " + ", ".join(trained.classes),
        f"head: dropout {spec.get('head_dropout', 0.0)} + Linear; parameters {total:,} "
        f"(trainable while fine-tuning: {spec.get('trainable', total):,})",
        f"input: {prep.describe()}",
    ]
    for split, m in (card.get("metrics") or {}).items():
        shown = ", ".join(f"{name} {m[key]:.4f}" for key, name in (("accuracy", "accuracy"),
                          ("roc_auc", "ROC-AUC")) if isinstance(m.get(key), float))  # fmt: skip
        lines.append(f"{split}: {shown} ({m.get('measured_on', split)})")
    return "\n".join(lines + external_lines(card))
