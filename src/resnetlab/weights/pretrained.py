"""Putting weights into a model: named tags, URLs or files, loaded strictly with clear errors.

Two deliberate adaptations, each announced in one log line: a different ``num_classes`` keeps
the backbone and the model's fresh head; a 1-channel model sums 3-channel stem weights over
the colour axis (the usual start for greyscale fine-tuning).
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ResnetlabError
from . import catalog, hf_hub, hub
from .io import (
    CorruptFileError,
    StateDict,
    extract_state_dict,
    load_checkpoint,
    normalise_state_dict,
)

log = logging.getLogger(__name__)
SHOWN = 5  # keys shown per list in a mismatch error


def load_pretrained(
    model: nn.Module, pretrained: bool | str | Path, *, num_classes: int | None = None
) -> nn.Module:
    """Load ``pretrained`` (True, a tag, a path, a URL, ``hf-hub:ORG/NAME[@REV]`` or a
    Hub-layout folder) and set ``model.pretrained_cfg``.

    ``True`` means the model's default weights (``imagenet``, or ``cifar10`` for the CIFAR
    ResNets). ``num_classes=None`` keeps the weights' classes (the head is rebuilt to their
    size if needed); another value keeps the model's freshly initialised head.
    """
    if hf_hub.is_hub_spec(pretrained) or hf_hub.is_hub_folder(pretrained):
        path, checkpoint, cfg = hf_hub.load(pretrained, model)  # type: ignore[arg-type]
    elif (entry := _catalog_entry(model, pretrained)) is not None:
        path, checkpoint = _load_fetched(
            entry.url, lambda: hub.fetch_named(entry.url, sha256=entry.sha256)
        )
        cfg = entry.to_cfg()
    else:
        path, checkpoint = _load_source(pretrained)
        cfg = {"tag": None, "url": _as_url(pretrained, path), "file": str(path)}
        meta = checkpoint.get("metadata")
        if isinstance(meta, dict):
            cfg |= {k: v for k, v in meta.items() if k not in cfg}
    state = normalise_state_dict(extract_state_dict(checkpoint, where=str(path)), model)
    kept_head = load_state_dict_strict(model, state, num_classes=num_classes, source=path.name)
    if not kept_head:
        cfg = cfg | {"classes": None, "num_classes": num_classes, "head": "new"}
    model.pretrained_cfg = cfg  # type: ignore[assignment]
    return model


def _catalog_entry(model: nn.Module, pretrained: bool | str | Path) -> catalog.WeightsEntry | None:
    """The named weights asked for by ``True`` or a tag; None for paths and URLs."""
    if pretrained is True:
        tag = None
    elif isinstance(pretrained, str) and _looks_like_tag(pretrained):
        tag = pretrained
    else:
        return None
    info = getattr(model, "info", None)
    if info is None:
        raise ResnetlabError("named weights need a model built by create_model(name, ...).")
    return catalog.get_weights(info.torchvision_name or info.name, tag)


def _looks_like_tag(text: str) -> bool:
    return not any(c in text for c in "/\\.") and not Path(text).is_file()


def _load_source(pretrained: bool | str | Path) -> tuple[Path, dict]:
    text = str(pretrained)
    if "://" in text:
        return _load_fetched(text, lambda: hub.fetch(text))
    path = Path(text).expanduser()
    if not path.is_file():
        raise ResnetlabError(
            f"pretrained weights {text!r} not found: give an existing checkpoint file or "
            "Hub-layout folder, a file:// or http(s):// URL, hf-hub:ORG/NAME, or a tag such as "
            "'imagenet' or 'cifar10'."
        )
    return path, load_checkpoint(path)


def _load_fetched(url: str, fetch: Callable[[], Path]) -> tuple[Path, dict]:
    """Fetch and load; a cached copy that does not load is moved aside and fetched once more."""
    path = fetch()
    try:
        return path, load_checkpoint(path)
    except CorruptFileError:
        if not hub.in_cache(path):
            raise
        aside = hub.set_aside(path)
        log.warning("%s does not load; moved it to %s and fetching %s again.", path, aside, url)
    path = fetch()
    try:
        return path, load_checkpoint(path)
    except CorruptFileError as exc:
        raise CorruptFileError(
            f"{path} does not load even when fetched again ({str(exc)[:160]}); delete it and "
            f"check the URL {url}."
        ) from None


def _as_url(pretrained: bool | str | Path, path: Path) -> str:
    text = str(pretrained)
    return (
        text
        if urllib.parse.urlparse(text).scheme in ("http", "https", "file")
        else path.resolve().as_uri()
    )


def load_state_dict_strict(
    model: nn.Module, state: StateDict, *, num_classes: int | None = None, source: str = "weights"
) -> bool:
    """Load ``state`` with every key and shape matching; returns False if the head was not loaded.

    Only the head (when the class count differs) and the stem conv (1 input channel from 3)
    may differ; anything else raises ResnetlabError listing missing, unexpected and reshaped keys.
    """
    state = dict(state)
    own = model.state_dict()
    head_keys = _head_keys(model, own)
    kept_head = True
    differing = [k for k in head_keys if k in state and state[k].shape != own[k].shape]
    if differing:
        weights_classes = state[head_keys[0]].shape[0] if head_keys[0] in state else None
        if num_classes is None and weights_classes is not None and _rebuild_head(model, state):
            own = model.state_dict()
        else:
            for key in head_keys:
                state.pop(key, None)
            state |= {k: own[k] for k in head_keys}
            kept_head = False
            log.warning(
                "%s: the weights have %s classes, the model %d; loaded the backbone and kept "
                "the model's newly initialised head.",
                source, weights_classes, own[head_keys[0]].shape[0],
            )  # fmt: skip
    _adapt_stem(model, own, state, source)
    # Checkpoints from before PyTorch 0.4.1 have no BN batch counters; the model's own stand in.
    state |= {k: own[k] for k in own if k.endswith(".num_batches_tracked") and k not in state}
    _check_keys(own, state, source)
    model.load_state_dict(state, strict=True)
    return kept_head


def check_classes(model: nn.Module, classes: list[str], where: str) -> None:
    """A loaded model's head must have one output per class name its card gives (a card that
    disagrees would answer with the wrong names or fail at the first prediction)."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if heads and heads[-1].out_features != len(classes):
        raise ResnetlabError(
            f"{where} lists {len(classes)} class names but the weights' head has "
            f"{heads[-1].out_features} outputs; give one name per output (check the card "
            "against the weights)."
        )


def _head_keys(model: nn.Module, own: StateDict) -> list[str]:
    name = getattr(model, "head_name", "fc")
    return [k for k in own if k.startswith(name + ".")]


def _rebuild_head(model: nn.Module, state: StateDict) -> bool:
    """Give the model a Linear head of the weights' size; False when its head is not a Linear."""
    net: Any = model  # a resnetlab model when it has set_head, get_head and head_name
    if not hasattr(net, "set_head") or not isinstance(net.get_head(), nn.Linear):
        return False
    weight = state.get(f"{net.head_name}.weight")
    if weight is None or weight.ndim != 2:
        return False
    net.set_head(nn.Linear(weight.shape[1], weight.shape[0]))
    return True


def _adapt_stem(model: nn.Module, own: StateDict, state: StateDict, source: str) -> None:
    """Sum 3-channel stem weights over the input axis for a 1-channel model."""
    stem = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    key = f"{stem}.weight"
    if stem is None or key not in state or key not in own:
        return
    mine, theirs = own[key], state[key]
    grey = mine.ndim == 4 and mine.shape[1] == 1 and theirs.ndim == 4 and theirs.shape[1] > 1
    if grey and mine.shape[0] == theirs.shape[0] and mine.shape[2:] == theirs.shape[2:]:
        state[key] = theirs.sum(dim=1, keepdim=True)
        log.warning(
            "%s: summed the %d-channel stem weights (%s) over colour for a 1-channel input.",
            source, theirs.shape[1], key,
        )  # fmt: skip


def _check_keys(own: StateDict, state: StateDict, source: str) -> None:
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if not (missing or unexpected or reshaped):
        return
    parts = [
        f"{label} ({len(items)}): {_abbreviate(items)}"
        for label, items in (("missing", missing), ("unexpected", unexpected),
                             ("shape differs", reshaped))
        if items
    ]  # fmt: skip
    raise ResnetlabError(
        f"{source} does not fit this model: {'; '.join(parts)}. "
        "Build the architecture the weights were saved from."
    )


def _abbreviate(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown + (f" ... and {len(items) - SHOWN} more" if len(items) > SHOWN else "")
