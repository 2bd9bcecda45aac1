"""``resnetlab export RUN --format hub``: a run (train or finetune) as a Hugging Face Hub model
folder.

The folder holds ``model.safetensors`` (resnetlab's keys; a dropout head stored as its Linear),
``config.json`` (architecture, classes, preprocessing, temperature and threshold, licence:
what ``create_model(name, pretrained=DIR)`` and ``hf-hub:`` read back), ``README.md`` (a model
card with the Hub's YAML front matter) and the run's ``model_card.json`` (for ``predict``).
The same essentials go into an ONNX file's ``metadata_props`` (:func:`deploy_metadata`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .artifact import load_trained
from .card import write_card
from .errors import ResnetlabError
from .files import write_json, write_text_atomic
from .models import create_model
from .weights.hf_hub import CONFIG, EXPORT_FORMAT
from .weights.io import save_weights

WEIGHTS = "model.safetensors"
README = "README.md"
UNKNOWN_LICENCE = "unknown"  # the Hub's word for a licence not stated
CARD_METRICS = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
                ("roc_auc", "ROC-AUC"), ("pr_auc", "PR-AUC"), ("macro_f1", "macro F1"))  # fmt: skip
THRESHOLD_FREE = ("roc_auc", "pr_auc")  # the card's argmax metrics otherwise
AT_THRESHOLD = ("sensitivity", "specificity", "accuracy")  # at the operating threshold


def run_essentials(card: dict[str, Any], source_run: str, licence: str | None) -> dict[str, Any]:
    """What a user of the model needs, from its model card: architecture, classes,
    preprocessing, temperature and threshold (where the run has them), licence, source run."""
    spec, prep = card["model"], card["preprocessing"]
    out: dict[str, Any] = {
        "architecture": spec["name"],
        "num_classes": len(card["classes"]),
        "in_channels": spec["in_channels"],
        "model_options": dict(spec.get("options") or {}),
        "label_names": list(card["classes"]),
        "source_run": source_run,
        "license": licence or weights_licence(card),
    }
    if prep:  # none for a model whose weights record none
        out["preprocessing"] = {k: prep[k] for k in ("resize", "crop", "mean", "std",
                                "interpolation", "channels", "grey", "pixel_mean")
                                if prep.get(k) is not None}  # fmt: skip
    temperature = (card.get("calibration") or {}).get("temperature")
    if temperature is not None:
        out["temperature"] = float(temperature)
    point = card.get("operating_point") or {}
    if point.get("threshold") is not None:
        out |= {"threshold": float(point["threshold"]), "threshold_rule": point.get("rule"),
                "positive_class": point.get("positive_class")}  # fmt: skip
    return out


def weights_licence(card: dict[str, Any]) -> str:
    """The licence of the weights the run started from, where recorded; else ``unknown``."""
    source = (card.get("weights") or {}).get("source") or {}
    return source.get("licence") or UNKNOWN_LICENCE


def deploy_metadata(essentials: dict[str, Any], input_size: tuple[int, ...], io: str) -> dict:
    """ONNX ``metadata_props`` (string values; lists and dicts as JSON)."""
    prep = essentials.get("preprocessing") or {}
    values: dict[str, Any] = {
        "producer": "resnetlab",
        "architecture": essentials.get("architecture"),
        "classes": essentials.get("label_names"),
        "input_size": list(input_size),
        "mean": prep.get("mean"),
        "std": prep.get("std"),
        "preprocessing": prep or None,
        "io": io,
        "source_run": essentials.get("source_run"),
        "temperature": essentials.get("temperature"),
        "threshold": essentials.get("threshold"),
        "positive_class": essentials.get("positive_class"),
        "license": essentials.get("license"),
    }
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()
            if v is not None}  # fmt: skip


def hub_config(essentials: dict[str, Any]) -> dict[str, Any]:
    """``config.json``: resnetlab's fields plus a timm-style ``pretrained_cfg`` for other tools."""
    prep = essentials["preprocessing"]
    timm_cfg = {
        "input_size": [prep.get("channels", 3), prep["crop"], prep["crop"]],
        "crop_pct": round(prep["crop"] / prep["resize"], 6),
        "crop_mode": "center",
        "interpolation": prep["interpolation"],
        "mean": prep["mean"],
        "std": prep["std"],
        "num_classes": essentials["num_classes"],
        "license": essentials["license"],
    }
    return {"format": EXPORT_FORMAT, "library_name": "resnetlab", **essentials,
            "pretrained_cfg": timm_cfg}  # fmt: skip


def check_target(out: Path) -> None:
    """``out`` must be new, empty, or a previous export (which is then overwritten)."""
    if out.exists() and not out.is_dir():
        raise ResnetlabError(f"--out {out} is a file; give a folder for the Hub export.")
    if not out.is_dir() or not any(out.iterdir()):
        return
    try:
        previous = json.loads((out / CONFIG).read_text()).get("format") == EXPORT_FORMAT
    except (OSError, ValueError, AttributeError):
        previous = False
    if not previous:
        raise ResnetlabError(
            f"--out {out} is not empty and holds no previous resnetlab Hub export; give a new "
            "or empty folder."
        )


def export_hub(source: str | Path, out: str | Path, *, licence: str | None = None) -> Path:
    """Write the Hub folder for a run (or model file with its card) and check that it loads
    back to the same outputs."""
    out = Path(out)
    check_target(out)
    loaded = load_trained(source)
    if loaded.run is None:
        raise ResnetlabError(
            f"--format hub exports a run: a train or fine-tuning run folder; {source!r} is not one."
        )
    card = loaded.card
    essentials = run_essentials(card, loaded.run.resolve().name, licence)
    config = hub_config(essentials)
    out.mkdir(parents=True, exist_ok=True)
    state = plain_head(loaded.model, card["model"].get("head_dropout", 0.0))
    meta = {"model": essentials["architecture"], "classes": essentials["label_names"],
            "preprocessing": card["preprocessing"]}  # fmt: skip
    save_weights(state, out / WEIGHTS, metadata=meta)
    write_json(out / CONFIG, config)
    write_text_atomic(out / README, model_card_markdown(card, config))
    shared = json.loads(json.dumps(card))  # a deep copy to edit
    shared["model"] |= {"head_dropout": 0.0,
                        "head_dropout_in_training": card["model"].get("head_dropout", 0.0)}
    shared.pop("format", None)
    write_card(out, shared)
    check_roundtrip(loaded.model, out, essentials)
    return out


def plain_head(model: nn.Module, dropout: float) -> dict[str, torch.Tensor]:
    """The state dict with a ``Dropout + Linear`` head stored as the Linear (same inference)."""
    state = model.state_dict()
    if not dropout:
        return state
    head = getattr(model, "head_name", "fc")
    inner = f"{head}.1."
    return {(head + "." + k[len(inner):] if k.startswith(inner) else k): v
            for k, v in state.items()}  # fmt: skip


def check_roundtrip(model: nn.Module, out: Path, essentials: dict[str, Any]) -> None:
    """``create_model(arch, pretrained=out)`` must give the run's model's logits."""
    options = dict(essentials["model_options"])
    rebuilt = create_model(essentials["architecture"], pretrained=out,
                           in_channels=essentials["in_channels"], **options).eval()  # fmt: skip
    prep = essentials["preprocessing"]
    x = torch.randn(2, essentials["in_channels"], prep["crop"], prep["crop"],
                    generator=torch.Generator().manual_seed(0))  # fmt: skip
    with torch.no_grad():
        diff = float((rebuilt(x) - model.eval()(x)).abs().max())
    if not diff <= 1e-5:
        raise RuntimeError(f"{out} loads back to other outputs (max |diff| {diff:.3g})")


def model_card_markdown(card: dict[str, Any], config: dict[str, Any]) -> str:
    """``README.md``: YAML front matter (licence, library, tags, data, metrics per split with
    their 95 % intervals where the run has them), then the card's summary and usage."""
    arch, run = config["architecture"], config["source_run"]
    data = (card.get("training") or {}).get("data") or {}
    description = data.get("description") or "not recorded"
    results = []
    for split, m in (card.get("metrics") or {}).items():
        clinic = ((card.get("clinical") or {}).get(split) or {}).get("at_threshold") or {}
        ci = clinic.get("ci95") or {}
        metrics = []
        for key, label in CARD_METRICS:  # intervals only for the threshold-free ones
            if _number(m.get(key)):
                interval = _interval(ci.get(key)) if key in THRESHOLD_FREE else ""
                metrics.append({"type": key, "value": round(float(m[key]), 6),
                                "name": f"{label} ({split}{interval})"})  # fmt: skip
        for key in AT_THRESHOLD:
            if _number(clinic.get(key)):
                name = f"{key} at threshold {clinic['threshold']:.4g} ({split}"
                metrics.append({"type": key, "value": round(float(clinic[key]), 6),
                                "name": name + _interval(ci.get(key)) + ")"})  # fmt: skip
        results.append({"task": {"type": "image-classification"},
                        "dataset": {"name": description, "type": "custom", "split": split},
                        "metrics": metrics})  # fmt: skip
    front = {
        "license": config["license"],
        "library_name": "resnetlab",
        "pipeline_tag": "image-classification",
        "tags": ["image-classification", "resnetlab", arch],
        "metrics": [key for key, _ in CARD_METRICS],
        "model-index": [{"name": f"{arch} fine-tuned ({run})", "results": results}],
    }
    lines = ["---", *_yaml(front), "---", "", f"# {arch} fine-tuned: {run}", ""]
    lines += [f"- {line}" for line in card.get("summary") or []]
    lines += ["", "## Data", "", description, "", "## Use", "", "```python",
              "from . import create_model", "",
              f"model = create_model({arch!r}, in_channels={config['in_channels']}, "
              "pretrained=\"hf-hub:ORG/NAME\")  # or the folder's path",
              "```", "", "```bash", "resnetlab predict THIS_FOLDER image.png", "```", "",
              f"Inputs: {_prep_text(config['preprocessing'])}."]  # fmt: skip
    if config.get("temperature") is not None:
        lines.append(f"Probabilities are softmax(logits / {config['temperature']:.4g}) "
                     "(temperature fitted on validation).")  # fmt: skip
    if config.get("threshold") is not None:
        lines.append(f"Decision: {config['positive_class']!r} when its probability is at least "
                     f"{config['threshold']:.4g} (rule {config['threshold_rule']}).")  # fmt: skip
    lines += ["", f"Licence of the weights: {config['license']}.", ""]
    return "\n".join(lines)


def _interval(ci: dict | None) -> str:
    if not ci or not all(_number(ci.get(k)) for k in ("low", "high")):
        return ""
    return f"; 95% CI {ci['low']:.4f}-{ci['high']:.4f}"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _prep_text(prep: dict[str, Any]) -> str:
    return (f"RGB resized (shorter side {prep['resize']}, {prep['interpolation']}), centre "
            f"crop {prep['crop']}, scaled to [0, 1], normalised with mean {prep['mean']} and "
            f"std {prep['std']}")  # fmt: skip


def _yaml(value: Any, indent: int = 0) -> list[str]:
    """Block YAML for dicts and lists, scalars as JSON (which YAML reads as the same value)."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines += [f"{pad}{key}:", *_yaml(item, indent + 2)]
            else:
                lines.append(f"{pad}{key}: {json.dumps(item)}")
        return lines
    for item in value:
        if isinstance(item, dict | list) and item:
            first, *rest = _yaml(item, indent + 2)
            lines += [f"{pad}- {first.lstrip()}", *rest]
        else:
            lines.append(f"{pad}- {json.dumps(item)}")
    return lines

