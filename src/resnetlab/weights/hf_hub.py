"""Weights from the Hugging Face Hub, ``hf-hub:ORG/NAME[@REVISION]``, and Hub-layout folders.

Files come through ``huggingface_hub``'s own cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``),
which honours ``HF_HUB_OFFLINE=1``; both are read when a model is loaded, not at import. A repo
is a timm one (``config.json`` with ``architecture`` and ``pretrained_cfg``) or one written by
``resnetlab export RUN --format hub`` (``format: resnetlab-hub/1``). timm's ResNets name their
parameters as torchvision does; its VGG keeps the classifier as 7x7/1x1 convs
(``pre_logits.fc1/fc2``) and ``head.fc``, reshaped here to resnetlab's ``classifier`` Linears.
The architecture must be the one the model was built as: ``create_model(name, pretrained=...)``.
Repo ids and revisions are validated before any lookup, and a config is checked against its
weights (one class name per output, one mean/std value per input channel) when loaded.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

from torch import nn

from ..errors import ResnetlabError
from .catalog import imagenet_classes
from .io import StateDict, extract_state_dict, load_checkpoint

HUB_PREFIX = "hf-hub:"
CONFIG = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
EXPORT_FORMAT = "resnetlab-hub/1"
INSTALL = "pip install 'resnetlab[hub]'"
HUB_URL = "https://huggingface.co/"
# timm architectures whose parameters map onto resnetlab's models of the same name.
TIMM_FAMILIES = re.compile(r"resnet\d+[a-z]?|wide_resnet\d+_\d+|resnext\d+_\d+x\d+d|vgg\d+(_bn)?")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
# A branch, tag, ``refs/pr/N`` or commit hash: git-like components, no ``..``, no leading "/".
REVISION = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]*(?:/[A-Za-z0-9_+-][A-Za-z0-9_.+-]*)*")
MAX_REVISION = 128
# timm's VGG layer -> resnetlab's, and whether it is a conv to flatten into a Linear.
VGG_KEYS = {"pre_logits.fc1": ("classifier.0", True), "pre_logits.fc2": ("classifier.3", True),
            "head.fc": ("classifier.6", False)}  # fmt: skip


@dataclass(frozen=True)
class HubSource:
    """A parsed ``hf-hub:ORG/NAME[@REVISION]``."""

    repo_id: str
    revision: str | None = None

    @property
    def spec(self) -> str:
        return HUB_PREFIX + self.repo_id + (f"@{self.revision}" if self.revision else "")


def is_hub_spec(pretrained: object) -> bool:
    return isinstance(pretrained, str) and pretrained.startswith(HUB_PREFIX)


def is_hub_folder(pretrained: object) -> bool:
    """A local folder in the Hub layout: ``config.json`` and a weights file."""
    if not isinstance(pretrained, str | Path) or is_hub_spec(pretrained):
        return False
    path = Path(pretrained).expanduser()
    return (path / CONFIG).is_file() and any((path / n).is_file() for n in WEIGHT_FILES)


def parse_spec(text: str) -> HubSource:
    """``hf-hub:ORG/NAME[@REVISION]``, the id checked by huggingface_hub's own validator and the
    revision by :data:`REVISION`, before anything is looked up."""
    repo, at, revision = text.removeprefix(HUB_PREFIX).partition("@")
    if not REPO_ID.fullmatch(repo) or (at and not revision):
        raise ResnetlabError(
            f"{text[:200]!r} is not a Hub model: write hf-hub:ORG/NAME or "
            "hf-hub:ORG/NAME@REVISION, e.g. hf-hub:timm/resnet50.a1_in1k."
        )
    hub = _hub()
    try:
        hub.validate_repo_id(repo)
    except hub.errors.HFValidationError as exc:
        why = (str(exc).strip().splitlines() or ["invalid"])[0][:160]
        raise ResnetlabError(
            f"{text[:200]!r} is not a Hub model id ({why}); write hf-hub:ORG/NAME with letters, "
            "digits, '-', '_' and '.', at most 96 characters, e.g. hf-hub:timm/resnet50.a1_in1k."
        ) from None
    if at:
        check_revision(revision, text)
    return HubSource(repo, revision or None)


def check_revision(revision: str, text: str) -> None:
    """A branch, tag or commit name that can only name a ref inside the repo."""
    parts = revision.split("/")
    if (
        len(revision) > MAX_REVISION
        or not REVISION.fullmatch(revision)
        or ".." in revision
        or any(p.endswith((".", ".lock")) for p in parts)
    ):
        raise ResnetlabError(
            f"{text[:200]!r}: {revision[:60]!r} is not a revision; give a branch, tag or commit "
            f"hash (letters, digits, '-', '_', '.', '/'; no '..'; at most {MAX_REVISION} "
            "characters), e.g. @main or @v1.0."
        )


def hf_cache_dir() -> Path:
    """huggingface_hub's cache folder, as its environment variables set it now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "huggingface" / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def load(pretrained: str | Path, model: nn.Module) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(weights file, ``{"state_dict"}`` in resnetlab's keys, ``pretrained_cfg``) for an
    ``hf-hub:`` spec or a Hub-layout folder, after checking the architecture against ``model``."""
    if is_hub_spec(pretrained):
        source = parse_spec(str(pretrained))
        where = source.spec
        config_path = _fetch(source, CONFIG)
        config = read_config(config_path, where)
        architecture = check_architecture(config, model, where)
        weights = _fetch_weights(source)
        extra = {"hub": source.repo_id, "revision": config_path.parent.name,
                 "url": HUB_URL + source.repo_id}  # fmt: skip
    else:
        folder = Path(pretrained).expanduser()
        where = str(folder)
        config = read_config(folder / CONFIG, where)
        architecture = check_architecture(config, model, where)
        weights = next(folder / n for n in WEIGHT_FILES if (folder / n).is_file())
        extra = {"url": folder.resolve().as_uri()}
    state = extract_state_dict(load_checkpoint(weights), where=str(weights))
    if config.get("format") != EXPORT_FORMAT:
        state = timm_to_resnetlab(state, architecture)
    cfg = pretrained_cfg(config, architecture) | extra | {"tag": None, "file": str(weights)}
    check_against_weights(cfg, state, model, where)
    return weights, {"state_dict": state}, cfg


def hub_config(pretrained: str | Path) -> dict[str, Any]:
    """The ``config.json`` of an ``hf-hub:`` spec (fetched) or of a Hub-layout folder."""
    if is_hub_spec(pretrained):
        source = parse_spec(str(pretrained))
        return read_config(_fetch(source, CONFIG), source.spec)
    return read_config(Path(pretrained).expanduser() / CONFIG, str(pretrained))


def read_config(path: Path, where: str) -> dict[str, Any]:
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ResnetlabError(f"{where}: {CONFIG} is not readable JSON ({exc}).") from None
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise ResnetlabError(
            f"{where}: {CONFIG} names no architecture; give a timm image model repo (e.g. "
            "hf-hub:timm/resnet50.a1_in1k) or a folder written by resnetlab export --format hub "
            "(for a fine-tuning run folder, its model.safetensors)."
        )
    return config


def check_architecture(config: dict[str, Any], model: nn.Module, where: str) -> str:
    """The repo's architecture, which must be one resnetlab has and the one ``model`` is."""
    architecture = config["architecture"]
    if config.get("format") != EXPORT_FORMAT and not TIMM_FAMILIES.fullmatch(architecture):
        raise ResnetlabError(
            f"{where} holds a timm {architecture}, an architecture resnetlab does not have; "
            "resnetlab loads timm's ResNet, ResNet-D, Wide ResNet, ResNeXt and VGG repos "
            "(e.g. hf-hub:timm/resnet50.a1_in1k)."
        )
    info = getattr(model, "info", None)
    if info is None:
        raise ResnetlabError("weights from the Hub need a model built by create_model(name, ...).")
    if architecture != info.name:
        raise ResnetlabError(
            f"{where} holds a {architecture}, not the {info.name} asked for; build it with "
            f"create_model({architecture!r}, pretrained={where!r})."
        )
    channels = config.get("in_channels")
    stem = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if channels == 1 and stem is not None and stem.in_channels != 1:
        raise ResnetlabError(
            f"{where} holds a 1-channel (greyscale) {architecture}; build it with "
            f"create_model({architecture!r}, in_channels=1, pretrained=...)."
        )
    return architecture


def check_against_weights(
    cfg: dict[str, Any], state: StateDict, model: nn.Module, where: str
) -> None:
    """The config must describe these weights: one class name per output of the head,
    ``num_classes`` equal to it, and one mean/std value per input channel of the stem."""
    head = state.get(f"{getattr(model, 'head_name', 'fc')}.weight")
    outputs = int(head.shape[0]) if head is not None and head.ndim == 2 else None
    classes, num_classes = cfg.get("classes"), cfg.get("num_classes")
    fix = f"correct {CONFIG} (or the model card) to match the weights"
    if classes is not None and (
        not isinstance(classes, list) or (outputs is not None and len(classes) != outputs)
    ):
        count = len(classes) if isinstance(classes, list) else "no list of"
        raise ResnetlabError(
            f"{where}: {CONFIG} label_names gives {count} class names but the weights' head has "
            f"{outputs} outputs; give one name per output ({fix})."
        )
    if num_classes is not None and outputs is not None and num_classes != outputs:
        raise ResnetlabError(
            f"{where}: {CONFIG} num_classes is {num_classes!r} but the weights' head has "
            f"{outputs} outputs; {fix}."
        )
    prep = cfg.get("preprocessing")
    if not isinstance(prep, dict):
        return
    channels = _input_channels(state, model, prep)
    for field in ("mean", "std"):
        values = prep.get(field)
        listed = values if isinstance(values, list) else []
        numbers = [v for v in listed if isinstance(v, int | float)]
        if len(numbers) != channels or numbers != values or (field == "std" and 0 in numbers):
            size = len(values) if isinstance(values, list) else "no list of"
            raise ResnetlabError(
                f"{where}: {CONFIG} preprocessing {field} has {size} values but the weights take "
                f"{channels} input channel(s); give one (non-zero std) value per channel, as "
                f"the model's in_channels ({fix})."
            )


def _input_channels(state: StateDict, model: nn.Module, prep: dict[str, Any]) -> int:
    """The weights' input channels: their stem conv's, else the config's own count."""
    stem = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    weight = state.get(f"{stem}.weight")
    if weight is not None and weight.ndim == 4:
        return int(weight.shape[1])
    return int(prep.get("channels") or 3)


def timm_to_resnetlab(state: dict, architecture: str) -> StateDict:
    """timm's parameter names for ``architecture`` in resnetlab's (ResNet-D stems and shortcuts
    are left to :func:`resnetlab.weights.io.normalise_state_dict`)."""
    if not architecture.startswith("vgg"):
        return dict(state)  # timm's ResNets use torchvision's names
    out: StateDict = {}
    for key, value in state.items():
        layer, _, leaf = key.rpartition(".")
        if layer in VGG_KEYS:
            layer, conv = VGG_KEYS[layer]
            if conv and leaf == "weight":
                value = value.reshape(value.shape[0], -1)  # (out, C, kh, kw): C*kh*kw as flatten
            key = f"{layer}.{leaf}"
        out[key] = value
    return out


def pretrained_cfg(config: dict[str, Any], architecture: str) -> dict[str, Any]:
    """``model.pretrained_cfg`` from a repo's ``config.json`` (timm's or resnetlab's)."""
    if config.get("format") == EXPORT_FORMAT:
        classes = config.get("label_names")
        cfg = {
            "model": architecture,
            "num_classes": config.get("num_classes"),
            "classes": classes,
            "preprocessing": config.get("preprocessing"),
            "licence": config.get("license"),
            "source": "resnetlab",
            "source_run": config.get("source_run"),
        }
        for key in ("temperature", "threshold", "positive_class"):
            if config.get(key) is not None:
                cfg[key] = config[key]
        return cfg
    timm = config.get("pretrained_cfg") or {}
    num_classes = config.get("num_classes", timm.get("num_classes"))
    classes = config.get("label_names")
    if classes is None and num_classes == 1000:
        classes = imagenet_classes()  # timm's ImageNet-1k heads use the same label order
    return {
        "model": architecture,
        "num_classes": num_classes,
        "classes": classes,
        "preprocessing": timm_preprocessing(timm),
        "licence": timm.get("license"),
        "homepage": timm.get("origin_url"),
        "paper_ids": timm.get("paper_ids"),
        "timm_tag": timm.get("tag"),
        "source": "timm",
    }


def timm_preprocessing(timm: dict[str, Any]) -> dict[str, Any]:
    """timm's ``input_size``/``crop_pct`` as resnetlab's resize + centre crop (timm's rule:
    resize the shorter side to ``floor(crop / crop_pct)``)."""
    crop = int((timm.get("input_size") or (3, 224, 224))[-1])
    crop_pct = float(timm.get("crop_pct") or 0.875)
    interpolation = timm.get("interpolation") or "bilinear"
    return {
        "resize": max(crop, math.floor(crop / crop_pct)),
        "crop": crop,
        "mean": list(timm.get("mean") or (0.485, 0.456, 0.406)),
        "std": list(timm.get("std") or (0.229, 0.224, 0.225)),
        "interpolation": interpolation if interpolation in INTERPOLATIONS else "bilinear",
    }


class _Hub(NamedTuple):
    """What is used of huggingface_hub, each imported by name: its top level loads submodules
    lazily, so ``huggingface_hub.errors`` is not an attribute until something imports it."""

    download: Callable[..., str]
    errors: ModuleType
    validate_repo_id: Callable[[str], None]


def _hub() -> _Hub:
    try:
        from huggingface_hub import errors, hf_hub_download
        from huggingface_hub.utils import validate_repo_id
    except ImportError:
        raise ResnetlabError(
            f"hf-hub: weights need the huggingface_hub package: {INSTALL}."
        ) from None
    return _Hub(hf_hub_download, errors, validate_repo_id)


class _NoSuchFile(Exception):
    """The repo exists but has no such file (a weights name to try next)."""


def _fetch(source: HubSource, filename: str) -> Path:
    """One file of the repo through huggingface_hub's cache, its failures as one line."""
    hub = _hub()
    errors = hub.errors
    try:
        return Path(
            hub.download(
                source.repo_id, filename, revision=source.revision, cache_dir=hf_cache_dir(),
                local_files_only=offline(), library_name="resnetlab",
                endpoint=os.environ.get("HF_ENDPOINT") or None,
            )
        )  # fmt: skip
    except errors.RepositoryNotFoundError:
        raise ResnetlabError(
            f"{source.spec}: no such model repository on the Hugging Face Hub (or it is private "
            "or gated: log in with `hf auth login`); check the name, e.g. hf-hub:timm/resnet50."
            "a1_in1k."
        ) from None
    except errors.RevisionNotFoundError:
        raise ResnetlabError(
            f"{source.spec}: the repository has no revision {source.revision!r}; give a branch, "
            "tag or commit hash it has."
        ) from None
    except errors.LocalEntryNotFoundError:
        why, fix = (
            ("HF_HUB_OFFLINE=1 forbids downloading", "unset HF_HUB_OFFLINE and connect once")
            if offline()
            else ("the Hub cannot be reached", "connect to the network once")
        )
        raise ResnetlabError(
            f"{source.spec}: {filename} is not in the Hugging Face cache {hf_cache_dir()} and "
            f"{why}; {fix} to download it, or copy the repo's snapshot into that cache "
            "(set by HF_HOME or HF_HUB_CACHE)."
        ) from None
    except errors.EntryNotFoundError:  # on the Hub (a local miss is caught above)
        raise _NoSuchFile(filename) from None
    except errors.HfHubHTTPError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ResnetlabError(f"{source.spec}: the Hub refused {filename} ({first}).") from None


def _fetch_weights(source: HubSource) -> Path:
    """``model.safetensors``, else ``pytorch_model.bin`` (read with ``weights_only``)."""
    first_error: ResnetlabError | None = None
    for name in WEIGHT_FILES:
        try:
            return _fetch(source, name)
        except _NoSuchFile:
            continue
        except ResnetlabError as exc:
            if not offline():
                raise
            first_error = first_error or exc  # offline: the other file may be the cached one
    raise first_error or ResnetlabError(
        f"{source.spec} has neither {' nor '.join(WEIGHT_FILES)}; is it an image model repo?"
    )
