"""``resnetlab export RUN_OR_MODEL --format onnx|torchscript --out PATH``, checked numerically."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..errors import ResnetlabError
from ..export import FORMATS, export_model
from ..models import create_model, list_models
from ..weights.io import load_checkpoint


def build_model(
    source: str,
    model_name: str | None,
    pretrained: str | None,
    num_classes: int | None,
    in_channels: int | None,
) -> torch.nn.Module:
    """A model from a registered name (optionally with a weights tag) or from a checkpoint file."""
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
    meta = load_checkpoint(path).get("metadata") or {}
    name = model_name or (meta.get("model") if isinstance(meta, dict) else None)
    if not name:
        raise ResnetlabError(f"{path} does not say which model it holds; pass --model NAME.")
    return create_model(name, num_classes=num_classes, pretrained=path, **options)


def is_fine_tuned(source: str) -> bool:
    """A fine-tuning run folder, or a model file with its model card beside it."""
    path = Path(source)
    return path.is_dir() or (path.is_file() and (path.parent / "model_card.json").is_file())


def run_export(args: argparse.Namespace) -> int:
    if args.out.is_dir():
        suffix = {"onnx": ".onnx"}.get(args.format, ".pt")
        raise ResnetlabError(
            f"--out {args.out} is a folder; give the file to write, e.g. "
            f"{args.out / ('model' + suffix)}."
        )
    if is_fine_tuned(args.source):
        from ..finetune.card import export_input_size

        model, size = export_input_size(args.source)
    else:
        in_channels = args.input_size[0] if args.input_size else None
        model = build_model(args.source, args.model, args.pretrained, args.num_classes, in_channels)
        size = model.info.input_size
    size = tuple(args.input_size) if args.input_size else size
    example = torch.randn(args.batch, *size)
    report = export_model(model, args.out, args.format, example, tolerance=args.tolerance)
    print(report)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export a model to ONNX or TorchScript, checked")
    p.add_argument(
        "source", metavar="RUN_OR_MODEL",
        help="model name, checkpoint file, or fine-tuning run folder (its card gives the input)",
    )  # fmt: skip
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--out", type=Path, required=True, help="output file")
    p.add_argument("--model", help="architecture of a checkpoint that does not name it")
    p.add_argument("--pretrained", help="weights tag for a model name, e.g. imagenet")
    p.add_argument("--num-classes", type=int, help="classifier outputs (default: the weights')")
    p.add_argument(
        "--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
        help="example input size; default: the model's own",
    )  # fmt: skip
    p.add_argument("--batch", type=int, default=1, help="example batch size (default 1)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |diff| vs eager")
    p.set_defaults(func=run_export)
