"""Receptive fields of a registered model: per layer and stage, checked against input gradients.

Also the stacked-3×3 arithmetic (Simonyan & Zisserman 2014, §2.3) and, optionally, the
effective receptive field at initialisation (Luo et al. 2016) as a heat map.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..analysis.receptive_field import (
    effective_receptive_field,
    measured_receptive_field,
    receptive_field_table,
    stacked_3x3,
    stage_summary,
)
from ..errors import ResnetlabError
from ..groups import ImageSizeSettings, ModelSettings, SeedSettings
from ..models import create_model, model_info
from ..settings import Default, compose, setting
from .runner import Figure, Study, Summary, pyplot, save_figure


@dataclass
@compose(ModelSettings, ImageSizeSettings, SeedSettings, only=("model", "image_size", "seed"),
         defaults={"model": "resnet50", "image_size": Default(None, "the model's")})  # fmt: skip
class ReceptiveFieldConfig:
    """Settings of one receptive-field run (written to config.json); the seed is that of the
    random inputs."""

    measure: bool = setting(True, "the gradient-measured check")
    erf: bool = setting(True, "the effective receptive field at initialisation")
    erf_samples: int = setting(4, "random inputs averaged for the effective field", ">= 1")
    max_stack: int = setting(3, "stacked 3x3 convs from 2 up to k", ">= 2")
    channels: int | None = setting(None, "C for the weight counts (default: per C²)", ">= 1")

    if TYPE_CHECKING:  # added by compose (this block never runs)
        model: str = setting()
        image_size: int | None = setting()
        seed: int = setting()


def measure_final(model, rf: int, jump: int, layer: str) -> tuple[int, int]:
    """(measured field, input size used): grow the input until the field fits inside it."""
    size = rf + 2 * jump
    for _ in range(4):
        try:
            return measured_receptive_field(model, size, layer), size
        except ResnetlabError:
            size = int(size * 1.5)
    raise ResnetlabError(f"could not fit the field of {layer} in a {size}-px input.")


def format_layers(table: list[dict]) -> str:
    """The per-layer table as aligned text."""
    header = ("layer", "stage", "type", "kernel", "stride", "jump", "RF", "out")
    lines = [header] + [
        (
            r["name"],
            r["stage"],
            r["kind"],
            str(r["kernel"]),
            str(r["stride"]),
            str(r["jump"]),
            str(r["rf"]),
            str(r["out_size"]),
        )
        for r in table
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(
            c.ljust(w) if i < 3 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    ]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def format_stacked(rows: list[dict]) -> str:
    """k stacked 3×3 convs against one large conv, one line per k."""
    lines = []
    for r in rows:
        unit = "C²" if r["per"] == "C^2" else f"weights ({r['per']})"
        stacked = f"{r['stacked_weights']:,}" if r["per"] != "C^2" else f"{r['stacked_weights']}"
        single = f"{r['single_weights']:,}" if r["per"] != "C^2" else f"{r['single_weights']}"
        lines.append(
            f"{r['convs']} stacked 3×3 = one {r['rf']}×{r['rf']}: {stacked} vs {single} {unit} "
            f"({1 - r['weights_ratio']:.0%} fewer), {r['relus_stacked']} ReLUs vs 1"
        )
    return "\n".join(lines)


def plot_growth(table: list[dict], name: str, input_size: int, path: Path) -> Path:
    """Receptive field after each layer, coloured by stage, with the input size marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    stages = list(dict.fromkeys(r["stage"] for r in table))
    cmap = plt.get_cmap("tab10")
    for i, stage in enumerate(stages):
        points = [(k + 1, r["rf"]) for k, r in enumerate(table) if r["stage"] == stage]
        ax.plot(
            *zip(*points, strict=True),
            marker="o",
            markersize=3,
            color=cmap(i % 10),
            label=stage or "(model)",
        )
    ax.axhline(
        input_size, color="grey", linestyle="--", linewidth=1, label=f"input {input_size} px"
    )
    ax.set_xlabel("conv/pool layer on the main path (forward order)")
    ax.set_ylabel("theoretical receptive field (px)")
    ax.set_title(f"{name}: r_out = r_in + (k-1)·j_in, j_out = j_in·s", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return save_figure(fig, path)


def plot_erf(erf: np.ndarray, name: str, final: dict, samples: int, path: Path) -> Path:
    """The effective receptive field as a heat map, with the theoretical field drawn as a box."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    image = ax.imshow(erf, cmap="magma", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="|∂y_centre/∂x| (scaled to max 1)")
    size, rf, layer = erf.shape[0], final["rf"], final["name"]
    centre = final["start"] + (final["out_size"] // 2) * final["jump"]
    half = rf / 2
    ax.add_patch(
        plt.Rectangle(
            (centre - half, centre - half),
            rf,
            rf,
            fill=False,
            edgecolor="limegreen",
            linewidth=1.5,
            label=f"theoretical RF {rf} px",
        )
    )
    low, high = min(-0.5, centre - half - 2), max(size - 0.5, centre + half + 2)
    ax.set_xlim(low, high)
    ax.set_ylim(high, low)
    ax.set_xlabel("input x (px)")
    ax.set_ylabel("input y (px)")
    ax.set_title(
        f"{name} at init: effective receptive field of the\ncentre output "
        f"of {layer} (mean of {samples} random inputs)",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


class ReceptiveField(Study):
    """The theoretical fields (in the summary) and their gradient check (the one measurement)."""

    settings = ReceptiveFieldConfig
    name = "receptive-field"
    scale_out = True

    def check(self) -> None:
        info = model_info(self.config.model)
        self.size = self.config.image_size or info.input_size[1]

    def prefix(self) -> str:
        return f"receptive-field-{self.config.model}"

    def prepare(self) -> None:
        self.model = create_model(self.config.model)
        self.table = [r.as_dict() for r in receptive_field_table(self.model, self.size)]

    def measurements(self) -> list[tuple[str, Any]]:
        return [("measured", self.table[-1])] if self.config.measure else []

    def measure(self, spec: Any) -> dict[str, Any]:
        measured, used = measure_final(self.model, spec["rf"], spec["jump"], spec["name"])
        return {"layer": spec["name"], "rf": measured, "input_size": used,
                "agrees": measured == spec["rf"]}  # fmt: skip

    def summarise(self, records: list[dict[str, Any]]) -> Summary:
        c, size, table, final = self.config, self.size, self.table, self.table[-1]
        stages = stage_summary(receptive_field_table(self.model, size))
        stacked = [stacked_3x3(k, c.channels) for k in range(2, c.max_stack + 1)]
        result: dict[str, Any] = {"model": c.model, "input_size": size, "layers": table,
                                  "stages": stages, "stacked_3x3": stacked, "final": final}
        lines = [f"{c.model}: theoretical receptive field after {final['name']} = "
                 f"{final['rf']} px (jump {final['jump']})"]  # fmt: skip
        for record in records:
            result["measured"] = {k: v for k, v in record.items() if k != "id"}
            verdict = "agrees" if record["agrees"] else "DISAGREES"
            lines.append(f"measured from input gradients ({record['input_size']}-px input): "
                         f"{record['rf']} px, {verdict}")  # fmt: skip
        result["summary"] = lines + format_stacked(stacked).splitlines()
        tables = {"receptive_field.csv": table, "stages.csv": stages, "stacked_3x3.csv": stacked}
        figures = [Figure("receptive_field.png", "Theoretical receptive field after each "
                          "conv/pool layer on the main path.",
                          lambda p: plot_growth(table, c.model, size, p))]  # fmt: skip
        if c.erf:
            figures.append(Figure(
                "effective_receptive_field.png", "Effective receptive field (Luo et al. 2016): "
                "input-gradient magnitude of the centre output at initialisation; the box is the "
                "theoretical field.",
                lambda p: plot_erf(effective_receptive_field(
                    self.model, size, final["name"], c.erf_samples, c.seed).numpy(),
                    c.model, final, c.erf_samples, p),
            ))  # fmt: skip
        return Summary(result, tables, figures=figures)


run_receptive_field = ReceptiveField.run
