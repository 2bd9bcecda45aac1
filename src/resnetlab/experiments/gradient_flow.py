"""Gradient flow through depth, plain vs residual, at initialisation or at a checkpoint.

For every model and seed: ‖∂L/∂x_l‖ at each block's input and the norm of each block's weight
gradients (``analysis.gradients.gradient_profile``), and for CIFAR nets the std of every 3×3
layer's response (He et al. 2015, Fig. 7). Results are averaged over seeds, with min/max.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..analysis.gradients import (
    PLUS_ONE,
    gradient_profile,
    layer_response_stds,
    mlp_batch,
    mlp_stack,
    seed_mlp_gradients,
)
from ..data import open_data
from ..errors import ResnetlabError
from ..groups import BatchSettings, DataSettings, ModelsSettings, SeedSettings, SeedsSettings
from ..models import ModelInfo, create_model, model_info
from ..reports.findings import conv_gradient_finding, response_finding, seed_mlp_finding
from ..settings import Default, compose, setting
from .gradient_flow_plots import plot_profiles, plot_seed_mlp
from .inputs import MlpSettings, check_data
from .runner import Figure, Study, Summary, fingerprint
from .seeded import seeds_of
from .trained import load_subject, normalise

DEFAULT_MODELS = [
    "mlp10", "mlp20", "plain20", "resnet20", "plain56", "resnet56", "plain110", "resnet110",
    "plain18", "resnet18", "plain34", "resnet34",
]  # fmt: skip
MLP_NAME = re.compile(r"^mlp(\d+)$")


@dataclass
@compose(ModelsSettings, SeedSettings, SeedsSettings, BatchSettings, MlpSettings, DataSettings,
         only=("models", "seed", "seeds", "batch_size", "mlp_width", "data"), defaults={
    "models": Default(list(DEFAULT_MODELS), "MLPs, CIFAR 20/56/110, ImageNet 18/34"),
    "seeds": 3, "batch_size": 16,
    "data": Default(None, "random input"),
})  # fmt: skip
class GradientFlowConfig:
    """Settings of one gradient-flow run (written to config.json): the models (registry names
    and mlpN), measured over seeds seed, seed+1, ... on random input or a batch of ``data``."""

    imagenet_size: int = setting(64, "input size for ImageNet nets (small, to stay cheap)", ">= 32")
    mlp_batch: int = setting(32, "batch for the MLP stacks", ">= 1")
    checkpoint: list[str] = setting(
        help="measure at these weights: a weights file or run folder per model, in --models "
        "order (He et al. 2015, Fig. 7 is after training)", factory=list,
    )  # fmt: skip

    if TYPE_CHECKING:  # added by compose (this block never runs)
        models: list[str] = setting()
        seed: int = setting()
        seeds: int = setting()
        batch_size: int = setting()
        mlp_width: int = setting()
        data: str | None = setting()


@dataclass(frozen=True)
class Entry:
    """One network to profile: ``mlp10`` stands for both its plain and residual stacks
    (``info`` None); a registered model carries its ModelInfo."""

    name: str
    group: str
    kind: str
    info: ModelInfo | None = None


def group_label(info: ModelInfo) -> str:
    """``CIFAR 20 layers``, ``CIFAR pre-activation 110 layers``, ``ImageNet 18 layers``, ..."""
    if info.block == "vgg":
        prefix = "VGG"
    else:
        prefix = "CIFAR" if info.cifar_stem else "ImageNet"
        prefix += " pre-activation" if info.preact else ""
    return f"{prefix} {info.depth} layers"


def expand_models(names: list[str]) -> list[Entry]:
    """Registry names plus ``mlpN`` (plain and residual MLP stacks of N blocks)."""
    entries = []
    for name in names:
        match = MLP_NAME.match(name)
        if match:
            depth = int(match.group(1))
            for kind in ("plain", "residual"):
                entries.append(Entry(f"{name}-{kind}", f"MLP {depth} blocks", kind))
            continue
        info = model_info(name)
        kind = "residual" if info.skips else "plain"
        entries.append(Entry(name, group_label(info), kind, info))
    return entries


def _data_batches(spec: str, count: int, seeds: list[int]) -> tuple[dict, str]:
    """For each seed, ``count`` random training images and labels; and the data's description."""
    bundle = open_data(spec)
    train = bundle.train
    if not hasattr(train, "images"):
        raise ResnetlabError(f"{spec} is kept on disk; use a data set held in memory (CIFAR).")
    batches = {}
    for seed in seeds:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        batches[seed] = (train.images[order[:count]], train.labels[order[:count]])
    return batches, bundle.summary()


def _batch(entry: Entry, config: GradientFlowConfig, seed: int, data: dict | None,
           norm: dict | None = None):  # fmt: skip
    """Inputs and targets: random normal (default) or images from ``--data``, standardised
    per channel, or with ``norm`` (a trained net's own normalisation) as that net saw them.

    Data images keep their size for nets with the CIFAR stem and are resized to
    ``imagenet_size`` for the others.
    """
    info = entry.info
    if info is None:
        return mlp_batch(config.mlp_batch, config.mlp_width, seed + 1)
    resized = not info.cifar_stem
    size = config.imagenet_size if resized else info.input_size[1]
    generator = torch.Generator().manual_seed(seed + 1)
    if data is None:
        x = torch.randn(config.batch_size, info.input_size[0], size, size, generator=generator)
        return x, torch.randint(0, info.num_classes, (config.batch_size,), generator=generator)
    images, labels = data[seed]
    if norm is not None and not resized:
        return normalise(images, norm), labels.long().flatten() % info.num_classes
    x = images.float() / 255
    if resized and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return (x - mean) / std, labels.long().flatten() % info.num_classes


def checkpoints(config: GradientFlowConfig) -> list[str]:
    """The ``--checkpoint`` values (a single string from Python is one checkpoint)."""
    given = config.checkpoint
    return [given] if isinstance(given, str) else list(given or [])


def _build(entry: Entry, config: GradientFlowConfig, seed: int, in_channels: int) -> nn.Module:
    torch.manual_seed(seed)
    if entry.info is None:
        match = MLP_NAME.match(entry.name.split("-")[0])
        assert match is not None, "MLP entries are made from matching names"
        depth = int(match.group(1))
        return mlp_stack(depth, config.mlp_width, skip=entry.kind == "residual")
    options = {} if in_channels == 3 else {"in_channels": in_channels}
    return create_model(entry.name, pretrained=False, **options)


def measure(entry: Entry, config: GradientFlowConfig, seed: int, data: dict | None) -> dict:
    """One model at one seed (at its checkpoint, if given, opened by the one loader with the
    normalisation it was trained with): its gradient profile and (CIFAR nets) layer-response
    stds."""
    weights = dict(zip(config.models, checkpoints(config), strict=False)).get(entry.name)
    if weights is None:
        x, y = _batch(entry, config, seed, data)
        model = _build(entry, config, seed, in_channels=x.shape[1] if x.dim() == 4 else 3)
    else:
        folder = Path(weights).is_dir()
        subject = load_subject(weights) if folder else load_subject(
            entry.name, pretrained=str(Path(weights).resolve()))  # fmt: skip
        x, y = _batch(entry, config, seed, data, subject.normalisation)
        model = subject.model
    record = {"model": entry.name, "group": entry.group, "kind": entry.kind, "seed": seed}
    record |= gradient_profile(model, x, y)
    if entry.info is not None and entry.info.cifar_stem:
        record["responses"] = layer_response_stds(model, x)
    return record


def _stats(values: list[list[float]]) -> dict[str, list[float]]:
    array = np.array(values, dtype=float)
    return {
        "mean": array.mean(0).tolist(),
        "std": array.std(0).tolist(),
        "min": array.min(0).tolist(),
        "max": array.max(0).tolist(),
    }


def aggregate(records: list[dict]) -> dict[str, dict]:
    """Per model: block names and mean/std/min/max over seeds of each measured profile."""
    by_model: dict[str, list[dict]] = {}
    for record in records:
        by_model.setdefault(record["model"], []).append(record)
    result = {}
    for name, items in by_model.items():
        first = items[0]
        entry = {
            "group": first["group"],
            "kind": first["kind"],
            "blocks": first["blocks"],
            "seeds": [r["seed"] for r in items],
        }
        for key in ("input_grad_norm", "weight_grad_norm"):
            entry[key] = _stats([r[key] for r in items])
        mean = entry["input_grad_norm"]["mean"]
        entry["first_last_ratio"] = mean[0] / mean[-1] if mean[-1] else float("inf")
        if "responses" in first:
            entry["response_layers"] = first["responses"]["layers"]
            stds = [r["responses"]["std"] for r in items]
            entry["response_std"] = _stats(stds)
            entry["response_sorted"] = _stats([sorted(s, reverse=True) for s in stds])
        result[name] = entry
    return result


def summary_lines(seed_rows: list[dict], profiles: dict[str, dict]) -> list[str]:
    """Findings in words, every number computed from the results."""
    lines = []
    by_depth = {(r["depth"], r["kind"]): r["grad_norm"] for r in seed_rows}
    for depth in sorted({r["depth"] for r in seed_rows}):
        plain, res = by_depth[(depth, "plain")], by_depth[(depth, "residual")]
        lines.append(
            f"Seed MLP, {depth} blocks: first layer's weight-gradient norm plain {plain:.4g}, "
            f"residual {res:.4g} (residual/plain {res / plain:.3g}×)."
        )
    groups: dict[str, dict[str, dict]] = {}
    for name, profile in profiles.items():
        groups.setdefault(profile["group"], {})[name] = profile
    for group, members in groups.items():
        ordered = sorted(members.items(), key=lambda item: item[1]["kind"])
        parts = [f"{name} {p['first_last_ratio']:.3g}" for name, p in ordered]
        lines.append(
            f"{group}: ‖∂L/∂x_l‖ first block / last block (mean over seeds; 1 = flat): "
            + ", ".join(parts)
            + "."
        )
    return lines


def findings(seed_rows: list[dict], profiles: dict[str, dict], at: str) -> list[dict]:
    """The seed MLP, the conv nets' input gradients and their layer responses, each set
    against the lesson's or the paper's claim (``reports.findings``)."""
    pairs: dict[str, dict[str, tuple[str, dict]]] = {}
    for name, profile in profiles.items():
        if not profile["group"].startswith("MLP"):
            pairs.setdefault(profile["group"], {})[profile["kind"]] = (name, profile)
    both = [g for g in pairs.values() if {"plain", "residual"} <= set(g)]
    both.sort(key=lambda g: len(g["plain"][1]["blocks"]))
    ratios = [(g["plain"][0], g["residual"][0], g["plain"][1]["first_last_ratio"],
               g["residual"][1]["first_last_ratio"]) for g in both]  # fmt: skip
    responses = [(g["plain"][0], g["residual"][0], g["plain"][1]["response_std"]["mean"],
                  g["residual"][1]["response_std"]["mean"])
                 for g in both if "response_std" in g["plain"][1]]  # fmt: skip
    found = [seed_mlp_finding(seed_rows), conv_gradient_finding(ratios, at),
             response_finding(responses, at == "at initialisation")]  # fmt: skip
    return [f for f in found if f is not None]


def _csv_rows(profiles: dict[str, dict]) -> list[dict]:
    rows = []
    for name, p in profiles.items():
        for i, block in enumerate(p["blocks"]):
            row = {
                "model": name,
                "kind": p["kind"],
                "group": p["group"],
                "index": i + 1,
                "block": block,
            }
            for key in ("input_grad_norm", "weight_grad_norm"):
                for stat in ("mean", "std", "min", "max"):
                    row[f"{key}_{stat}"] = p[key][stat][i]
            rows.append(row)
    return rows


class GradientFlow(Study):
    """Every model at every seed, one a measurement (journaled in ``profiles.jsonl``)."""

    settings = GradientFlowConfig
    name = "gradient-flow"
    scale_out = True
    journal = "profiles.jsonl"

    def check(self) -> None:
        c = self.config
        self.entries = expand_models(c.models)
        weights, names = checkpoints(c), list(dict.fromkeys(c.models))
        if weights and len(weights) != len(names):
            raise ResnetlabError(
                f"--checkpoint needs exactly one model per weights file: {len(weights)} for "
                f"{len(names)} models. Pass --models NAME [NAME ...] in the same order."
            )
        if any(MLP_NAME.match(n) for n in names) and weights:
            raise ResnetlabError("--checkpoint is for registered models, not mlpN. Drop mlpN.")
        if c.data:
            check_data(c.data)
        self.seeds = seeds_of(c)

    def inputs(self) -> dict[str, str | None]:
        weights = checkpoints(self.config)
        return {"checkpoint": fingerprint(weights[0]) if len(weights) == 1 else
                ",".join(str(fingerprint(w)) for w in weights) or None,
                "data": fingerprint(self.config.data, content=False)}  # fmt: skip

    def prepare(self) -> None:
        self.data, self.description = None, ""
        if self.config.data:
            self.data, self.description = _data_batches(self.config.data, self.config.batch_size,
                                                        self.seeds)  # fmt: skip

    def measurements(self) -> list[tuple[str, Any]]:
        return [(f"{e.name}:{s}", (e, s)) for e in self.entries for s in self.seeds]

    def measure(self, spec: Any) -> dict[str, Any]:
        entry, seed = spec
        return measure(entry, self.config, seed, self.data)

    def summarise(self, records: list[dict[str, Any]]) -> Summary:
        c, profiles = self.config, aggregate(records)
        seed_rows = seed_mlp_gradients((10, 20), c.mlp_width, c.mlp_batch, c.seed)
        weights = checkpoints(c)
        at = (f"at {Path(weights[0]).name}" if len(weights) == 1 else
              "at the given checkpoints" if weights else "at initialisation")  # fmt: skip
        result = {"seed_mlp": seed_rows, "profiles": profiles,
                  "findings": findings(seed_rows, profiles, at),
                  "summary": summary_lines(seed_rows, profiles)}  # fmt: skip
        tables = {"seed_mlp.csv": seed_rows, "gradient_flow.csv": _csv_rows(profiles)}
        n = f"{len(self.seeds)} seed{'s' if len(self.seeds) > 1 else ''}, line = mean, band = "
        n += "min–max"
        note = "" if weights else "; at initialisation BN's running statistics are identity"
        figures = [
            Figure("seed_mlp.png", CAPTIONS["seed_mlp.png"],
                   lambda p: plot_seed_mlp(seed_rows, p)),
            Figure("gradient_flow_inputs.png", CAPTIONS["gradient_flow_inputs.png"],
                   lambda p: plot_profiles(profiles, "input_grad_norm", "‖∂L/∂x_l‖ (whole batch)",
                   f"Gradient w.r.t. each block's input, {at} ({n})\n{PLUS_ONE}", p)),
            Figure("gradient_flow_weights.png", CAPTIONS["gradient_flow_weights.png"],
                   lambda p: plot_profiles(profiles, "weight_grad_norm",
                   "‖∂L/∂W‖ of the block's weights",
                   f"Weight-gradient norm per block, {at} ({n})\n{PLUS_ONE}", p)),
            Figure("layer_responses.png", CAPTIONS["layer_responses.png"],
                   lambda p: plot_profiles(profiles, "response_std", "std of response (eval mode)",
                   f"Std of each 3×3 layer's response after BN, before addition/ReLU, {at}\n"
                   f"(He et al. 2015, Fig. 7 top; eval mode{note})", p)),
            Figure("layer_responses_sorted.png", CAPTIONS["layer_responses_sorted.png"],
                   lambda p: plot_profiles(profiles, "response_sorted",
                   "std of response (eval mode)", f"The same stds sorted in descending order, "
                   f"{at}\n(He et al. 2015, Fig. 7 bottom; eval mode{note})", p,
                   xlabel="rank of the layer's std (1 = largest)")),
        ]  # fmt: skip
        texts = {"data.txt": f"{self.description}\n  spec: {c.data}\n"} if c.data else {}
        return Summary(result, tables, texts, figures)


CAPTIONS = {
    "gradient_flow_inputs.png": "Norm of the loss gradient at each block's input, plain (red) vs "
    "residual (blue), log scale; line = mean over seeds, band = min to max. A curve rising "
    "towards block 1 is a gradient growing towards the input (exploding, as BatchNorm plain nets "
    "do at initialisation), a falling one a vanishing gradient; the findings say which. "
    + PLUS_ONE,
    "gradient_flow_weights.png": "Norm of each block's weight gradient, plain vs residual, log "
    "scale. " + PLUS_ONE,
    "layer_responses.png": "Std of each 3×3 layer's response after BN and before the addition or "
    "ReLU, in eval mode. He et al. 2015, Fig. 7 measures trained nets; at initialisation the "
    "ResNet's responses grow block by block as each branch adds to the stream (see the findings).",
    "layer_responses_sorted.png": "The layer responses' stds sorted from largest to smallest, "
    "plain vs residual (He et al. 2015, Fig. 7 bottom): where one curve lies below the other "
    "at every rank, that net's responses are the smaller ones whatever the layer order.",
    "seed_mlp.png": "First layer's weight-gradient norm of the Linear-ReLU-Linear stacks against "
    "depth, plain vs residual. " + PLUS_ONE,
}


run_gradient_flow = GradientFlow.run
