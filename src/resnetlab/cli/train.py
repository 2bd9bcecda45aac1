"""``resnetlab train``: train a model from a recipe, flags overriding the recipe's values.

Every ``TrainConfig`` field is a flag (``max_iters`` is ``--max-iters``). Values are checked
after parsing, so a bad value is one line naming the flag and the fix, with exit status 2.
Multi-GPU: ``torchrun --nproc-per-node=G -m resnetlab.cli train ...`` (global batch and lr).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from ..errors import ResnetlabError
from ..settings import help_of
from ..train.config import RECIPES, TrainConfig, recipe_config

# Fields with their own flag (or none): everything else is --field-name VALUE.
SPECIAL = {"model_options", "out_dir", "resume", "progress"}


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
            p.add_argument(flag, dest=f.name, default=None, metavar=metavar(str(f.type)),
                           help=help_of(f))  # fmt: skip
    p.set_defaults(func=run_train)


def metavar(kind: str) -> str:
    """What a flag takes, from its field's type: INT, FLOAT, A,B,..., true|false, TEXT."""
    if kind.startswith("bool | str"):
        return "auto|true|false"
    if kind.startswith("bool"):
        return "true|false"
    if kind.startswith("tuple[int"):
        return "INT,INT,..."
    if kind.startswith("tuple[float"):
        return "FLOAT,FLOAT,..."
    if kind.startswith("tuple[str"):
        return "NAME,NAME,..."
    if kind.startswith("int | float"):
        return "N|FRACTION"
    if kind.startswith("int"):
        return "INT"
    if kind.startswith("float"):
        return "FLOAT"
    return "TEXT"


def run_train(args: argparse.Namespace) -> int:
    from ..train import train

    overrides = parse_overrides(args)
    out = Path(args.out)
    saved = out / "config.json"
    if args.resume and not (out / "last.pt").is_file():
        raise ResnetlabError(
            f"nothing to resume in {out}: it holds no checkpoint (last.pt); drop --resume to "
            "start a new run there."
        )
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
    if os.environ.get("RANK", "0") == "0":  # under torchrun, the first process writes it
        _report(config, result, out)
    return 0


def _report(config: TrainConfig, result: Any, out: Path) -> None:
    """Per-class metrics of the best checkpoint on the test split, then the run's report."""
    from ..experiments.predictions import split_predictions
    from ..experiments.report import render_report

    facts = split_predictions(config, result.model, out)
    if facts is not None:
        print(f"{facts['split']} ({facts['checkpoint']}): accuracy "
              f"{100 * facts['accuracy']:.2f}%, macro F1 {facts['macro_f1']:.4f}; per class "
              f"in {out / 'per_class.json'}")  # fmt: skip
    html_path, _ = render_report([out])
    print(f"report: {html_path.resolve()}")


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
