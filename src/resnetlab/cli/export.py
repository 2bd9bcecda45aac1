"""``resnetlab export RUN_OR_MODEL --format onnx|torchscript|hub --out PATH``, checked
numerically; ONNX and TorchScript files carry the model's classes and preprocessing, and
``--with-preprocessing`` puts normalisation and softmax into the graph."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..artifact import Calibrated, export_input_size, load_trained
from ..errors import ResnetlabError
from ..export import FORMATS, INPUT_KINDS, SUFFIXES, Preprocessed, export_model
from ..hub_export import deploy_metadata, export_hub, run_essentials

HUB = "hub"


def run_export(args: argparse.Namespace) -> int:
    if args.format == HUB:
        out = export_hub(args.source, args.out, licence=args.license)
        print(f"hub -> {out}: model.safetensors, config.json, README.md, model_card.json")
        return 0
    if args.out.is_dir():
        raise ResnetlabError(
            f"--out {args.out} is a folder; give the file to write, e.g. "
            f"{args.out / ('model' + SUFFIXES[args.format])}."
        )
    in_channels = args.input_size[0] if args.input_size else None
    trained = load_trained(args.source, args.pretrained, model_name=args.model,
                           num_classes=args.num_classes, in_channels=in_channels)  # fmt: skip
    model, size = export_input_size(trained)
    name = trained.run.resolve().name if trained.run is not None else args.source
    essentials = run_essentials(trained.card, name, args.license)
    size = tuple(args.input_size) if args.input_size else size
    if args.with_preprocessing:
        model = _preprocessed(model, essentials, args.with_preprocessing)
        size = (3, *size[1:])
        dtype = torch.uint8 if args.with_preprocessing == "uint8" else torch.float32
        example = torch.zeros(args.batch, *size, dtype=dtype)
        scale = "0-255" if dtype == torch.uint8 else "[0, 1]"
        io = f"input: RGB NCHW {args.with_preprocessing} {scale}; output: probabilities"
    else:
        example = torch.randn(args.batch, *size)
        scaled = " over the temperature" if "temperature" in essentials else ""
        io = f"input: normalised float32 NCHW; output: logits{scaled}"
    metadata = deploy_metadata(essentials, size, io)
    report = export_model(model, args.out, args.format, example, tolerance=args.tolerance,
                          metadata=metadata)  # fmt: skip
    print(report)
    return 0


def _preprocessed(model: torch.nn.Module, essentials: dict, kind: str) -> Preprocessed:
    prep = essentials.get("preprocessing")
    if not prep:
        raise ResnetlabError(
            "--with-preprocessing needs the model's normalisation: export a fine-tuning run, "
            "or a model with weights (--pretrained) that record their mean and std."
        )
    if prep.get("pixel_mean") is not None:
        raise ResnetlabError(
            "--with-preprocessing puts a channel mean/std into the graph, but this model "
            "subtracts a per-pixel mean; export it without --with-preprocessing."
        )
    if isinstance(model, Calibrated):  # the temperature goes inside Preprocessed
        model = model.model
    return Preprocessed(
        model.eval(), prep["mean"], prep["std"], temperature=essentials.get("temperature", 1.0),
        input_kind=kind, grey=bool(prep.get("grey")),
    ).eval()  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export a model to ONNX or TorchScript (checked), or a run to a Hub folder"
    )
    p.add_argument(
        "source", metavar="RUN_OR_MODEL",
        help="run folder (train or finetune), Hub folder, hf-hub: id, model name or weights file",
    )  # fmt: skip
    p.add_argument("--format", choices=(*FORMATS, HUB), required=True)
    p.add_argument("--out", type=Path, required=True, help="output file (hub: a folder)")
    p.add_argument("--model", help="architecture of a checkpoint that does not name it")
    p.add_argument("--pretrained", help="weights tag for a model name, e.g. imagenet")
    p.add_argument("--num-classes", type=int, help="classifier outputs (default: the weights')")
    p.add_argument(
        "--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
        help="example input size; default: the model's own",
    )  # fmt: skip
    p.add_argument("--batch", type=int, default=1, help="example batch size (default 1)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |diff| vs eager")
    p.add_argument(
        "--with-preprocessing", nargs="?", const="uint8", choices=INPUT_KINDS,
        help="graph takes RGB images at the input size (uint8 0-255, default, or float [0, 1]) "
        "and gives probabilities: normalisation, temperature and softmax inside",
    )  # fmt: skip
    p.add_argument(
        "--license", help="licence of the weights for the card and metadata (default: the "
        "starting weights' where recorded, else 'unknown')",
    )  # fmt: skip
    p.set_defaults(func=run_export)
