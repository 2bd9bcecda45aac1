"""``resnetlab models`` (the registry as a table) and ``resnetlab summary`` (per-stage counts)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ResnetlabError
from ..finetune.options import FinetuneOptions
from ..groups import Checked, InferenceSettings, check_groups
from ..models import create_model, list_models, model_info
from ..models.summary import count_parameters, format_count, summarize
from ..settings import REQUIRED, compose, setting
from .export import ExportSettings, check_shape
from .flags import add_renamed, add_settings, settings_from_args


@dataclass(kw_only=True)
@compose(InferenceSettings, ExportSettings, FinetuneOptions, defaults={"source": REQUIRED},
         only=("source", "num_classes", "example_shape", "head_dropout", "freeze", "bn"))
class SummarySettings(Checked):
    """``resnetlab summary``: the model, a new head and frozen stages, each setting declared in
    the group or command it belongs to."""

    if TYPE_CHECKING:  # added by compose (this block never runs)
        source: str = setting()
        num_classes: int | None = setting()
        example_shape: list[int] | None = setting()
        head_dropout: float = setting()
        freeze: tuple[str, ...] = setting()
        bn: str = setting()

    def __post_init__(self) -> None:
        check_groups(self)
        check_shape(self.example_shape)


@dataclass
class ModelsSettings(Checked):
    """``resnetlab models``: which names to list."""

    pattern: str = setting("*", "shell-style filter, e.g. 'resnet*'")


def print_table(header: list[str], rows: list[list[str]], right: set[int] | None = None) -> None:
    """Print an aligned plain-text table; columns in ``right`` are right-aligned."""
    right = right or set()
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    print(line(header))
    print(line(["-" * w for w in widths]))
    for row in rows:
        print(line(row))


def run_models(namespace: argparse.Namespace) -> int:
    args = settings_from_args(ModelsSettings, namespace)
    names = list_models(args.pattern)
    if not names:
        raise ResnetlabError(f"no model matches {args.pattern!r}; try `resnetlab models` for all.")
    rows = []
    for name in names:
        info = model_info(name)
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            total, _ = count_parameters(create_model(name))
        top = info.published[0] if info.published else None
        published = f"{top.metric} {top.value:g}" if top else "-"
        rows.append(
            [name, info.family, str(info.depth), "yes" if info.skips else "no",
             f"{total:,}", "x".join(map(str, info.input_size)), published]
        )  # fmt: skip
    print_table(
        ["model", "family", "depth", "skips", "params", "input", "published (see summary)"],
        rows,
        right={2, 4},
    )
    return 0


def _summary_model(args: SummarySettings) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """The model to summarise: a registered name, or a fine-tuned run folder / model file
    (its card gives the architecture, head, input size and the stages it kept frozen)."""
    from ..transfer import freeze, replace_head

    source = Path(args.source)
    if source.is_dir() or source.is_file():
        from ..artifact import load_trained

        trained = load_trained(source)
        card, model, prep = trained.card, trained.model, trained.preprocessing
        input_size: tuple[int, ...] = (prep.channels, prep.crop, prep.crop)
        frozen = card.get("training", {}).get("recipe", {}).get("phase2_frozen") or []
        bn = card.get("training", {}).get("options", {}).get("bn", "frozen")
        if frozen and not args.freeze:
            freeze(model, frozen, bn)
    else:
        shape = args.example_shape
        options: dict[str, Any] = {"in_channels": shape[0]} if shape else {}
        model = create_model(args.source, **options)
        created: Any = model.info  # set by create_model
        input_size = created.input_size
    if args.num_classes is not None or args.head_dropout:
        get_head: Any = model.get_head  # every resnetlab model has one
        linears = [m for m in get_head().modules() if isinstance(m, torch.nn.Linear)]
        classes = args.num_classes or linears[-1].out_features
        replace_head(model, classes, dropout=args.head_dropout)
    if args.freeze:
        freeze(model, list(args.freeze), args.bn)
    return model, tuple(args.example_shape) if args.example_shape else input_size


def run_summary(namespace: argparse.Namespace) -> int:
    args = settings_from_args(SummarySettings, namespace)
    model, input_size = _summary_model(args)
    info: Any = model.info  # set by create_model
    rows = summarize(model, input_size)
    if args.source == info.name:
        print(f"{info.name}: {info.description}")
    else:
        from ..artifact import run_summary as card_summary

        print(card_summary(args.source))
    print(f"input {' x '.join(map(str, input_size))}")
    print_table(
        ["stage", "output shape", "params", "trainable", "MACs"],
        [
            [
                r.name,
                " x ".join(map(str, r.output_shape)),
                f"{r.params:,}",
                f"{r.trainable:,}",
                format_count(r.macs),
            ]
            for r in rows
        ],  # fmt: skip
        right={2, 3, 4},
    )
    new_head = args.num_classes is not None or args.head_dropout
    if args.source == info.name and not new_head:  # published figures are for the original head
        for item in info.published:
            print(f"published: {item}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list the registered models")
    add_settings(p, ModelsSettings, positional={"pattern": "PATTERN"}, eager=True)
    p.set_defaults(func=run_models)

    p = subparsers.add_parser("summary", help="per-stage shapes, parameters and MACs of a model")
    add_settings(p, SummarySettings, positional={"source": "RUN_OR_MODEL"}, eager=True)
    add_renamed(p, {"--input-size": "--example-shape C H W (a size in px is --image-size "
                    "elsewhere)"})  # fmt: skip
    p.set_defaults(func=run_summary)
