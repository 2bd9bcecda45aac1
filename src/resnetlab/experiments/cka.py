"""Representation similarity of trained nets: layer-by-layer linear CKA (Kornblith et al. 2019)
between two nets, or a net and itself, by minibatch with the unbiased HSIC estimator (Nguyen,
Raghu & Kornblith 2021), on a fixed, shuffled sample of one split.

Each batch is one measurement: its HSIC of every pair of layers of both nets (one forward per
net, one matrix product) is journaled, so a run resumes at the next batch and the sums, hence
the CKA matrices, are the same as in one go. Nets are evaluated on their BN-folded copies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..analysis.cka import (
    MIN_BATCH,
    CkaAccumulator,
    LayerGrams,
    batch_hsic,
    call_order,
    check_layers,
    default_layers,
    even_batches,
    pack,
    stage_of,
    unpack,
)
from ..data import open_data
from ..data.synthetic import subsample
from ..errors import ResnetlabError
from ..groups import BatchSettings, ModelsSettings, SplitSettings, SubsampleSettings
from ..models.inference import optimize_for_inference
from ..settings import Default, compose, setting
from .cka_findings import block_finding, correspondence_finding, stage_match_finding, stage_rows
from .inputs import TrainedNets, check_data, nets_inputs, pretrained_for
from .runner import Figure, Study, Summary, pyplot, save_figure
from .trained import Subject, load_subject, normalise


@dataclass
@compose(ModelsSettings, SplitSettings, SubsampleSettings, BatchSettings,
         only=("models", "split", "eval_size", "batch_size"), defaults={
    "models": Default([], "none: name A and B, or A alone (or twice) for a net with itself"),
    "eval_size": Default(None, "all, shuffled"), "batch_size": 256,
})  # fmt: skip
class CkaConfig(TrainedNets):
    """Settings of one CKA study (written to config.json): one or two nets compared on a
    shuffled sample of ``eval_size`` images of ``split``."""

    layers: list[str] = setting(
        help="module names to compare, each used in the nets that have it (default: the stem, "
        "every block, the pooled features and the head)", factory=list,
    )  # fmt: skip

    if TYPE_CHECKING:  # added by compose (this block never runs)
        split: str = setting()
        eval_size: int | None = setting()
        batch_size: int = setting()


def input_channels(model: nn.Module) -> int:
    """The channels a net's first convolution takes."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ResnetlabError(f"{type(model).__name__} has no convolution to feed images to.")
    return conv.in_channels


def layers_of(subject: Subject, wanted: list[str], example: torch.Tensor) -> list[str]:
    """The layers compared in ``subject``: ``wanted`` where it has them, else the defaults."""
    if not wanted:
        return default_layers(subject.model, example)
    modules = dict(subject.model.named_modules())
    names = [n for n in wanted if n in modules]
    if not names:
        raise ResnetlabError(
            f"{subject.label} has none of the layers {', '.join(wanted)}; see its module names "
            f"with `resnetlab summary {subject.name}`."
        )
    check_layers(subject.model, names, call_order(subject.model, example))
    return names


def plot_matrix(ax: Any, matrix: np.ndarray, rows: list[str], cols: list[str]) -> Any:
    """One CKA heatmap: rows bottom to top, columns left to right, stages marked."""
    image = ax.imshow(matrix, origin="lower", vmin=0, vmax=1, cmap="magma", aspect="auto",
                      interpolation="nearest")  # fmt: skip
    for axis, names, lines in ((ax.xaxis, cols, ax.axvline), (ax.yaxis, rows, ax.axhline)):
        starts = [i for i, s in enumerate(names) if i == 0 or s != names[i - 1]]
        middles = [(a + b - 1) / 2 for a, b in zip(starts, [*starts[1:], len(names)], strict=True)]
        axis.set_ticks(middles, [names[i] for i in starts], fontsize=7)
        for i in starts[1:]:
            lines(i - 0.5, color="white", linewidth=0.4, alpha=0.6)
    ax.tick_params(axis="x", labelrotation=45)
    return image


def plot_cka(panels: list[tuple[np.ndarray, list[str], list[str], str, str, str]], path: Path,
             title: str) -> Path:  # fmt: skip
    """Heatmaps side by side, each (matrix, row stages, column stages, ylabel, xlabel, title)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels) + 0.8, 4.8), squeeze=False)
    image = None
    for ax, (matrix, rows, cols, ylabel, xlabel, name) in zip(axes[0], panels, strict=True):
        image = plot_matrix(ax, matrix, rows, cols)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_title(name, fontsize=9)
    fig.colorbar(image, ax=list(axes[0]), label="linear CKA", shrink=0.85)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def matrix_rows(matrix: torch.Tensor, rows: list[str], cols: list[str]) -> list[dict[str, Any]]:
    """A CKA matrix as CSV rows: the row layer, then one column per layer."""
    return [{"layer": name, **{c: round(float(v), 6) for c, v in zip(cols, line, strict=True)}}
            for name, line in zip(rows, matrix, strict=True)]  # fmt: skip


class Cka(Study):
    """Minibatch CKA of two nets (or one with itself) on one split, a batch a measurement."""

    settings = CkaConfig
    name = "cka"

    def check(self) -> None:
        c = self.config
        if c.seeds > 1:  # the data group brings --seeds; one cka run is one seed today
            raise ResnetlabError("cka takes one seed per run; run it again with --seed K.")
        if not 1 <= len(c.models) <= 2:
            raise ResnetlabError(
                f"cka compares one or two nets, got {len(c.models)}. Name A and B, or A alone "
                "for a net with itself."
            )
        for flag, value, per in (("--batch-size", c.batch_size, " a batch"),
                                 ("--eval-size", c.eval_size, "")):  # fmt: skip
            if value is not None and value < MIN_BATCH:
                raise ResnetlabError(
                    f"{flag} {value}: the unbiased HSIC needs at least {MIN_BATCH} images{per}. "
                    f"Use {MIN_BATCH} or more."
                )
        check_data(c.data)
        specs = list(zip(c.models, pretrained_for(c.models, c.pretrained), strict=True))
        self.same = len(specs) == 1 or specs[0] == specs[1]
        self.subjects = [load_subject(m, p, c.normalisation, c.seed)
                         for m, p in specs[: 1 if self.same else 2]]  # fmt: skip
        channels = [input_channels(s.model) for s in self.subjects]
        if len(set(channels)) > 1:
            raise ResnetlabError(
                f"{self.subjects[0].label} takes {channels[0]}-channel images and "
                f"{self.subjects[1].label} {channels[1]}-channel ones; compare nets that read "
                "the same images."
            )
        bundle = open_data(c.data, seed=c.seed)
        part = getattr(bundle, c.split)
        if part is None or not hasattr(part, "images"):
            raise ResnetlabError(
                f"{c.data} has no in-memory {c.split} split. Pass a CIFAR-style data set or "
                "another --split."
            )
        if bundle.in_channels != channels[0]:
            raise ResnetlabError(
                f"{c.data} has {bundle.in_channels}-channel images, the nets take {channels[0]}; "
                "pass data the nets were made for."
            )
        part = subsample(part, c.eval_size, c.seed)
        self.batches = even_batches(len(part), c.batch_size)
        order = torch.randperm(len(part), generator=torch.Generator().manual_seed(c.seed))
        self.images = part.images[order]  # shuffled: every batch a sample of all classes
        self.source = f"{bundle.description}; {part.source}"
        self.layers = [layers_of(s, c.layers, normalise(self.images[:1], s.normalisation))
                       for s in self.subjects]  # fmt: skip
        missing = [n for n in c.layers if not any(n in names for names in self.layers)]
        if missing:
            raise ResnetlabError(f"no net has the layers {', '.join(missing)}.")

    def inputs(self) -> dict[str, str | None]:
        return nets_inputs(self.subjects, self.config.data)

    def prepare(self) -> None:
        self.nets = [LayerGrams(optimize_for_inference(s.model, engine="torch"), names)
                     for s, names in zip(self.subjects, self.layers, strict=True)]  # fmt: skip

    def measurements(self) -> list[tuple[str, Any]]:
        return [(f"batch:{i}", (start, stop)) for i, (start, stop) in enumerate(self.batches)]

    def measure(self, spec: Any) -> dict[str, Any]:
        start, stop = spec
        x = self.images[start:stop]
        inputs = [normalise(x, s.normalisation) for s in self.subjects]
        hsic = batch_hsic(list(zip(self.nets, inputs, strict=True)))
        return {"images": stop - start, "hsic": pack(hsic)}

    def summarise(self, records: list[dict[str, Any]]) -> Summary:
        sizes = [len(names) for names in self.layers]
        accumulator = CkaAccumulator(sum(sizes))
        for r in records:
            accumulator.add(unpack(r["hsic"], sum(sizes)), r["images"])
        a = list(range(sizes[0]))
        b = a if self.same else list(range(sizes[0], sum(sizes)))
        names_a, names_b = self.layers[0], self.layers[-1]
        cka = accumulator.cka(a, b)
        selfs = [accumulator.cka(a, a), accumulator.cka(b, b)]
        subjects = self.subjects * (2 if self.same else 1)
        stages = [[stage_of(n, s.model) for n in names]
                  for s, names in zip(subjects, (names_a, names_b), strict=True)]  # fmt: skip
        nets: list[dict[str, Any]] = [
            {"name": s.name, "label": s.label, "weights": s.weights, "layers": names,
             "parameters": sum(p.numel() for p in s.model.parameters())}
            for s, names in zip(self.subjects, self.layers, strict=True)
        ]  # fmt: skip
        labels = [str(nets[0]["label"]), str(nets[-1]["label"])]
        findings = []
        if not self.same and names_a == names_b:
            findings.append(correspondence_finding(cka, names_a, stages[0], labels))
        elif not self.same and set(stages[0]) == set(stages[1]):
            findings.append(stage_match_finding(cka, [names_a, names_b], stages, labels))
        findings.append(block_finding(selfs[: len(nets)], nets, self.same))
        n = accumulator.images
        what = (f"{n:,} images in {accumulator.batches} batches of at most "
                f"{self.config.batch_size}")  # fmt: skip
        result = {
            "nets": nets, "same": self.same, "images": n, "batches": accumulator.batches,
            "layers_a": names_a, "layers_b": names_b, "cka": cka.tolist(),
            "self_a": selfs[0].tolist(), "self_b": selfs[1].tolist(), "findings": findings,
            "verdict": [f["verdict"] for f in findings],
            "summary": [f"Linear CKA (minibatch, unbiased HSIC) of {labels[0]} against "
                        f"{labels[1]} on {what}."],
        }  # fmt: skip
        tables = {"cka.csv": matrix_rows(cka, names_a, names_b),
                  "cka_stages.csv": stage_rows(cka, stages, names_a == names_b)}  # fmt: skip
        title = f"{self.source}: {what}"
        panels = [(cka.numpy(), stages[0], stages[1], f"{labels[0]} layers",
                   f"{labels[1]} layers", f"{labels[0]} vs {labels[1]}")]  # fmt: skip
        figures = [Figure("cka.png", CAPTION, lambda p: plot_cka(panels, p, title))]
        if not self.same:
            tables |= {"cka_self_a.csv": matrix_rows(selfs[0], names_a, names_a),
                       "cka_self_b.csv": matrix_rows(selfs[1], names_b, names_b)}  # fmt: skip
            own = [(m.numpy(), st, st, f"{lab} layers", f"{lab} layers", f"{lab} with itself")
                   for m, st, lab in zip(selfs, stages, labels, strict=True)]  # fmt: skip
            figures.append(Figure("cka_self.png", CAPTION_SELF, lambda p: plot_cka(own, p, title)))
        return Summary(result, tables, {"data.txt": f"{self.source} ({what})\n"}, figures)


CAPTION = (
    "Linear CKA between every layer of the first net (rows, bottom to top) and every layer of "
    "the second (columns), minibatch estimate with the unbiased HSIC (Nguyen et al. 2021); "
    "1 is the same representation up to rotation and scale. Ticks mark where stages begin."
)
CAPTION_SELF = (
    "Each net with itself: a bright square off the diagonal is a block of layers with nearly "
    "the same representation (the block structure of Nguyen et al. 2021)."
)


run_cka = Cka.run
