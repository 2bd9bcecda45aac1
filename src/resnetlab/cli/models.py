"""``resnetlab models`` (the registry as a table) and ``resnetlab summary`` (per-stage counts)."""

from __future__ import annotations

import argparse

import torch

from ..errors import ResnetlabError
from ..models import create_model, list_models, model_info
from ..models.summary import count_parameters, format_count, summarize


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


def run_models(args: argparse.Namespace) -> int:
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


def run_summary(args: argparse.Namespace) -> int:
    options = {}
    if args.num_classes is not None:
        options["num_classes"] = args.num_classes
    if args.input_size is not None:
        options["in_channels"] = args.input_size[0]
    model = create_model(args.name, **options)
    info = model.info
    input_size = tuple(args.input_size) if args.input_size else info.input_size
    rows = summarize(model, input_size)
    print(f"{info.name}: {info.description}")
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
    for item in info.published:
        print(f"published: {item}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list the registered models")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'resnet*'")
    p.set_defaults(func=run_models)

    p = subparsers.add_parser("summary", help="per-stage shapes, parameters and MACs of a model")
    p.add_argument("name", help="model name (see `resnetlab models`)")
    p.add_argument(
        "--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
        help="input size; default: the model's own (3 224 224 or 3 32 32)",
    )  # fmt: skip
    p.add_argument("--num-classes", type=int, help="classifier outputs")
    p.set_defaults(func=run_summary)
