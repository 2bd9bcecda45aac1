"""``resnetlab train``: train a model from a recipe, flags overriding the recipe's values.

Every ``TrainConfig`` field is a flag (``max_iters`` is ``--max-iters``). Values are checked
after parsing, so a bad value is one line naming the flag and the fix, with exit status 2.
Multi-GPU: ``torchrun --nproc-per-node=G -m resnetlab.cli train ...`` (global batch and lr).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from ..errors import ResnetlabError
from ..train.config import RECIPES, TrainConfig, recipe_config

# Fields with their own flag (or none): everything else is --field-name VALUE.
SPECIAL = {"model_options", "out_dir", "resume", "progress"}
HELP = {
    "model": "registered model name, e.g. resnet20, plain56, resnet18",
    "pretrained": "initial weights: a tag (imagenet), URL or checkpoint file",
    "data": "data set name (cifar10, cifar100, fashion-mnist) or path",
    "data_root": "folder for downloads and caches (default $RESNETLAB_HOME/data)",
    "val_size": "images (or a fraction) held out of train for validation",
    "normalisation": "per-pixel-mean, mean-std, imagenet, none, or MEAN,.../STD,...",
    "augment": "random crop + flip on training batches (true/false)",
    "pad": "zero padding before the random crop, in pixels",
    "flip": "random horizontal flip (true/false)",
    "num_workers": "decoding processes for large-image folders",
    "on_bad": "unreadable image files: error, or skip them with a warning",
    "batch_size": "GLOBAL batch size (split over all processes)",
    "eval_batch_size": "batch size for evaluation (default: the training batch)",
    "optimizer": "sgd or adamw",
    "lr": "learning rate for the global batch",
    "momentum": "SGD momentum",
    "nesterov": "Nesterov momentum (true/false)",
    "betas": "AdamW betas, e.g. 0.9,0.999",
    "weight_decay": "weight decay",
    "no_decay_bn_bias": "no weight decay on BatchNorm and bias parameters (true/false)",
    "schedule": "multistep, cosine, onecycle or constant",
    "milestones": "iterations where the lr is multiplied by --gamma, e.g. 32000,48000",
    "gamma": "lr factor at each milestone",
    "min_lr": "final lr of the cosine schedule",
    "onecycle_pct": "fraction of the run spent rising in the one-cycle schedule",
    "warmup_iters": "iterations of warm-up before the schedule",
    "warmup_lr": "lr at the start of warm-up (constant warm-up: throughout)",
    "warmup": "linear or constant warm-up",
    "max_iters": "iterations (optimiser steps) to train",
    "epochs": "epochs to train instead of --max-iters",
    "label_smoothing": "label smoothing of the cross-entropy, e.g. 0.1",
    "class_weights": "per-class loss weights, e.g. 1,3",
    "grad_clip": "clip the gradient norm to this value",
    "ema": "keep an exponential moving average of the weights with this decay, e.g. 0.999",
    "precision": "auto (bf16 on CUDA), fp32 or bf16",
    "channels_last": "auto (CUDA, and CPU nets whose last maps are >= 4 px), true or false",
    "compile": "torch.compile the model (true/false)",
    "cuda_graphs": "auto (small nets on CUDA), true or false",
    "activation_checkpointing": "recompute activations in backward to save memory (true/false)",
    "sync_bn": "SyncBatchNorm under multi-GPU DDP: auto, true or false",
    "device": "auto, cpu, cuda or cuda:N",
    "deterministic": "deterministic algorithms only (true/false)",
    "seed": "seed of the split, initialisation, order and augmentation",
    "eval_every": "iterations between evaluations",
    "eval_splits": "splits to evaluate, e.g. val,test",
    "checkpoint_every": "iterations between checkpoints",
    "log_every": "iterations between metric records",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model; writes a run folder with metrics and checkpoints",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--recipe", help=f"start from a recipe: {', '.join(RECIPES)}")
    p.add_argument("--out", required=True, help="run folder, e.g. runs/resnet20")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--model-option", action="append", default=[], metavar="KEY=VALUE",
        help="model option, e.g. shortcut=B (repeatable)",
    )  # fmt: skip
    for f in dataclasses.fields(TrainConfig):
        if f.name not in SPECIAL:
            flag = "--" + f.name.replace("_", "-")
            p.add_argument(flag, dest=f.name, default=None, metavar="VALUE",
                           help=_help(f))  # fmt: skip
    p.set_defaults(func=run_train)


def _help(f: dataclasses.Field) -> str:
    """The field's help, with its default where one is worth showing."""
    text = HELP[f.name]
    if f.default in (None, dataclasses.MISSING) or "default" in text:
        return text
    return f"{text} (default {f.default})"


def run_train(args: argparse.Namespace) -> int:
    from ..train import train

    overrides = parse_overrides(args)
    out = Path(args.out)
    saved = out / "config.json"
    if args.resume and saved.is_file() and args.recipe is None:
        values = json.loads(saved.read_text())
        values.pop("resolved", None)
        config = TrainConfig.from_dict({**values, **overrides, "out_dir": str(out),
                                        "resume": True})  # fmt: skip
    else:
        config = recipe_config(args.recipe, **overrides, out_dir=str(out), resume=args.resume)
    print(f"run folder: {out.resolve()}")
    result = train(config)
    shown = {k: v for k, v in result.metrics.items() if "error" in k}
    print(" ".join(f"{k} {100 * v:.2f}%" for k, v in shown.items()))
    print(f"run folder: {out.resolve()} ({result.steps} iterations)")
    return 0


def parse_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given on the command line, converted to the config's types."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(TrainConfig):
        text = getattr(args, f.name, None)
        if f.name in SPECIAL or text is None:
            continue
        try:
            values[f.name] = convert(str(f.type), text)
        except ValueError:
            flag = "--" + f.name.replace("_", "-")
            raise ResnetlabError(f"{flag}: cannot read {text!r} ({f.type}).") from None
    if args.model_option:
        values["model_options"] = dict(_option(item) for item in args.model_option)
    if args.no_progress:
        values["progress"] = False
    return values


def convert(kind: str, text: str) -> Any:
    """Text to the type named by a ``TrainConfig`` annotation; ValueError when it does not fit."""
    if text.lower() in ("none", "null") and "None" in kind:
        return None
    if kind.startswith("bool"):
        word = text.lower()
        if "str" in kind and word == "auto":
            return "auto"
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off"):
            return False
        raise ValueError(text)
    if kind.startswith("tuple[int"):
        return tuple(int(v) for v in text.split(",") if v.strip())
    if kind.startswith("tuple[float"):
        return tuple(float(v) for v in text.split(","))
    if kind.startswith("tuple[str"):
        return tuple(v.strip() for v in text.split(",") if v.strip())
    if kind.startswith("int | float"):
        return int(text) if text.isdigit() else float(text)
    if kind.startswith("int"):
        return int(text)
    if kind.startswith("float"):
        return float(text)
    if kind.startswith("str | dict") and "/" in text:
        mean, std = (part.split(",") for part in text.split("/"))
        return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    return text


def _option(item: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ResnetlabError(f"--model-option {item!r}: write KEY=VALUE, e.g. shortcut=B.")
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, {"true": True, "false": False}.get(value.lower(), value)
