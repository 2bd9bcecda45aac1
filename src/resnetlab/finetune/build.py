"""The model a fine-tuning run starts from: the weights (a tag, URL, file or run folder), the
greyscale choice, the new head, and the preprocessing those weights expect.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..console import say
from ..download import NetworkError
from ..errors import ResnetlabError
from ..models import create_model, model_info
from ..transfer import replace_head
from ..weights import list_weights
from .prepare import choose_preprocessing

if TYPE_CHECKING:
    from .options import FinetuneOptions


def weights_source(spec: str | None, model: str) -> str | None:
    """``auto``: the ImageNet weights if published for ``model``, else none; a run folder
    given as weights means its model file (fine-tuning or training run)."""
    if spec == "auto":

        info = model_info(model)
        published = [w for w in list_weights(info.torchvision_name or info.name)
                     if w.tag.startswith("imagenet")]  # fmt: skip
        choice = "imagenet" if published else f"none ({model} has no ImageNet weights)"
        say(f"--pretrained auto: {choice}")
        return "imagenet" if published else None
    if spec is None or not Path(spec).exists():
        return spec
    folder = Path(spec).resolve()  # absolute, as the weights' record (a file URI) needs
    if folder.is_file():
        return str(folder)
    for name in ("model.safetensors", "model.pt", "best.pt", "last.pt"):
        if (folder / name).is_file():
            return str(folder / name)
    raise ResnetlabError(f"{folder} holds no model file (model.safetensors, best.pt, last.pt).")


def build_model(options: FinetuneOptions, bundle: Any) -> tuple[nn.Module, Any, str | None]:
    """The model with its new head, and the preprocessing its weights expect."""

    spec = weights_source(options.pretrained, options.model)
    torch.manual_seed(options.seed)  # the new head (and a model from scratch) starts the same
    grey, grey_note = None, None
    channels = bundle.in_channels
    if bundle.in_channels == 1:
        grey = options.grey if options.grey != "auto" else ("repeat" if spec else "sum")
        channels = 3 if grey == "repeat" else 1
        how = "repeated to 3 channels" if grey == "repeat" else "fed as 1 channel"
        how += ", the 3-channel stem weights summed" if grey == "sum" and spec else ""
        grey_note = f"greyscale images: --grey {grey} ({how})"
    try:
        model = create_model(
            options.model,
            num_classes=len(bundle.classes),
            in_channels=channels,
            pretrained=spec or False,
            **options.model_options,
        )
    except NetworkError as exc:  # offline: name both ways out, the cache and no weights
        raise NetworkError(f"{exc} Or pass --pretrained none to train from scratch.") from None
    replace_head(model, len(bundle.classes), dropout=options.head_dropout)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    weights_file = cfg.get("file") or (spec if spec and Path(spec).is_file() else None)
    say(
        f"model {options.model}, weights {spec or 'none (from scratch)'}, new head for "
        f"{len(bundle.classes)} classes (dropout {options.head_dropout:g})"
    )
    prep = choose_preprocessing(
        model,
        bundle,
        weights_file=Path(weights_file) if weights_file else None,
        pretrained=bool(spec),
        channels=channels,
        grey=grey,
        image_size=options.image_size,
    )
    prep.notes[:0] = [grey_note] if grey_note else []
    return model, prep, weights_file
