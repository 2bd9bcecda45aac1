"""``resnetlab export RUN_OR_MODEL --format onnx|torchscript|hub --out PATH``, checked
numerically; ONNX and TorchScript files carry the model's classes and preprocessing, and
``--with-preprocessing`` puts normalisation and softmax into the graph."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..artifact import Calibrated, export_input_size, load_trained
from ..errors import ResnetlabError
from ..export import FORMATS, INPUT_KINDS, SUFFIXES, Preprocessed, export_model
from ..groups import (
    BatchSettings,
    Checked,
    InferenceSettings,
    ModelSettings,
    RunFolderSettings,
    check_groups,
)
from ..hub_export import deploy_metadata, export_hub, run_essentials
from ..settings import REQUIRED, Default, compose, setting
from .flags import add_renamed, add_settings, settings_from_args

HUB = "hub"


@dataclass(kw_only=True)
@compose(InferenceSettings, ModelSettings, BatchSettings, RunFolderSettings,
         exclude=("tta", "top_k", "engine", "model_options", "resume", "progress"),
         defaults={"source": REQUIRED, "out_dir": REQUIRED, "batch_size": 1,
                   "model": Default(None, "the one the checkpoint names")})  # fmt: skip
class ExportSettings(Checked):
    """``resnetlab export``: the format and the example input; the rest from the groups."""

    format: str = setting(help="ONNX, TorchScript, or a Hub folder", choices=(*FORMATS, HUB))
    num_classes: int | None = setting(None, "classifier outputs (default: the weights')", ">= 1")
    example_shape: list[int] | None = setting(
        None, "shape of the example input, C H W (default: the model's own input)", ">= 1"
    )
    tolerance: float = setting(1e-4, "largest |difference| allowed from the eager model", ">= 0")
    with_preprocessing: str | None = setting(
        None, "graph takes RGB images at the input size (uint8 0-255, the flag alone, or float "
        "[0, 1]) and gives probabilities: normalisation, temperature and softmax inside",
        choices=INPUT_KINDS, const="uint8",
    )  # fmt: skip
    license: str | None = setting(
        None, "licence of the weights for the card and metadata (default: the starting "
        "weights' where recorded, else 'unknown')",
    )  # fmt: skip

    if TYPE_CHECKING:  # added by compose (this block never runs)
        source: str = setting()
        model: str | None = setting()
        pretrained: str | None = setting()
        batch_size: int = setting()
        out_dir: str = setting()

    def __post_init__(self) -> None:
        check_groups(self)
        check_shape(self.example_shape)


def check_shape(shape: list[int] | None) -> None:
    """An example input's shape is three numbers, C H W."""
    if shape is not None and len(shape) != 3:
        raise ResnetlabError(
            f"--example-shape takes three numbers, C H W (e.g. 3 224 224), got {shape}."
        )


def run_export(args: argparse.Namespace) -> int:
    settings = settings_from_args(ExportSettings, args)
    _export(settings)
    return 0


def _export(args: ExportSettings) -> None:
    """The export the settings ask for, checked numerically (``--out`` is ``args.out_dir``)."""
    out = Path(args.out_dir)
    if args.format == HUB:
        folder = export_hub(args.source, out, licence=args.license)
        print(f"hub -> {folder}: model.safetensors, config.json, README.md, model_card.json")
        return
    if out.is_dir():
        raise ResnetlabError(
            f"--out {out} is a folder; give the file to write, e.g. "
            f"{out / ('model' + SUFFIXES[args.format])}."
        )
    in_channels = args.example_shape[0] if args.example_shape else None
    trained = load_trained(args.source, args.pretrained, model_name=args.model,
                           num_classes=args.num_classes, in_channels=in_channels)  # fmt: skip
    size: tuple[int, ...]
    model, size = export_input_size(trained)
    name = trained.run.resolve().name if trained.run is not None else args.source
    essentials = run_essentials(trained.card, name, args.license)
    size = tuple(args.example_shape) if args.example_shape else size
    if args.with_preprocessing:
        model = _preprocessed(model, essentials, args.with_preprocessing)
        size = (3, *size[1:])
        dtype = torch.uint8 if args.with_preprocessing == "uint8" else torch.float32
        example = torch.zeros(args.batch_size, *size, dtype=dtype)
        scale = "0-255" if dtype == torch.uint8 else "[0, 1]"
        io = f"input: RGB NCHW {args.with_preprocessing} {scale}; output: probabilities"
    else:
        example = torch.randn(args.batch_size, *size)
        scaled = " over the temperature" if "temperature" in essentials else ""
        io = f"input: normalised float32 NCHW; output: logits{scaled}"
    metadata = deploy_metadata(essentials, size, io)
    report = export_model(model, out, args.format, example, tolerance=args.tolerance,
                          metadata=metadata)  # fmt: skip
    print(report)


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
    add_settings(p, ExportSettings, positional={"source": "RUN_OR_MODEL"},
                 required=("format", "out_dir"), eager=True)  # fmt: skip
    add_renamed(p, {"--batch": "--batch-size (images per batch, as in every command)",
                    "--input-size": "--example-shape C H W (a size in px is --image-size "
                    "elsewhere)"})  # fmt: skip
    p.set_defaults(func=run_export)
