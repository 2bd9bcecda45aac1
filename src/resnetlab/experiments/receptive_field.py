"""Receptive fields of a registered model: per layer and stage, checked against input gradients.

Also the stacked-3×3 arithmetic (Simonyan & Zisserman 2014, §2.3) and, optionally, the
effective receptive field at initialisation (Luo et al. 2016) as a heat map.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..analysis.receptive_field import (
    effective_receptive_field,
    measured_receptive_field,
    receptive_field_table,
    stacked_3x3,
    stage_summary,
)
from ..errors import ResnetlabError
from ..files import write_json
from ..models import create_model, model_info
from ..settings import setting
from . import runs


@dataclass
class ReceptiveFieldConfig:
    """Settings of one receptive-field run (written to config.json)."""

    model: str = setting("resnet50", "registered model name, e.g. vgg16 or resnet50")
    input_size: int | None = setting(None, "input size in px (default: the model's)", ">= 8")
    measure: bool = setting(True, "the gradient-measured check")
    erf: bool = setting(True, "the effective receptive field at initialisation")
    erf_samples: int = setting(4, "random inputs averaged for the effective field", ">= 1")
    max_stack: int = setting(3, "stacked 3x3 convs from 2 up to k", ">= 2")
    channels: int | None = setting(None, "C for the weight counts (default: per C²)", ">= 1")
    seed: int = setting(0, "seed of the random inputs", ">= 0")


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
    plt = runs.pyplot()
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
    return runs.save_figure(fig, path)


def plot_erf(erf: np.ndarray, name: str, final: dict, samples: int, path: Path) -> Path:
    """The effective receptive field as a heat map, with the theoretical field drawn as a box."""
    plt = runs.pyplot()
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
    return runs.save_figure(fig, path)


def run_receptive_field(
    config: ReceptiveFieldConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    command: str | None = None,
) -> tuple[Path, dict]:
    """Compute, check and plot the receptive fields; returns (run folder, results)."""
    info = model_info(config.model)
    size = config.input_size or info.input_size[1]
    if size < 8:
        raise ResnetlabError(f"--input-size must be at least 8 px, got {size}.")
    model = create_model(config.model)
    table = [r.as_dict() for r in receptive_field_table(model, size)]
    stages = stage_summary(receptive_field_table(model, size))
    if config.max_stack < 2:
        raise ResnetlabError(f"--max-stack must be at least 2, got {config.max_stack}.")
    stacked = [stacked_3x3(k, config.channels) for k in range(2, config.max_stack + 1)]
    run_dir = runs.new_run_dir(f"receptive-field-{config.model}", out, resume=resume)
    runs.start_run(run_dir, config, command)
    final = table[-1]
    result: dict = {
        "model": config.model,
        "input_size": size,
        "layers": table,
        "stages": stages,
        "stacked_3x3": stacked,
        "final": final,
    }
    lines = [
        f"{config.model}: theoretical receptive field after {final['name']} = "
        f"{final['rf']} px (jump {final['jump']})"
    ]
    if config.measure:
        measured, used = measure_final(model, final["rf"], final["jump"], final["name"])
        result["measured"] = {
            "layer": final["name"],
            "rf": measured,
            "input_size": used,
            "agrees": measured == final["rf"],
        }
        verdict = "agrees" if measured == final["rf"] else "DISAGREES"
        lines.append(f"measured from input gradients ({used}-px input): {measured} px, {verdict}")
    lines += [s for s in format_stacked(stacked).splitlines()]
    result["summary"] = lines
    write_json(run_dir / "receptive_field.json", result)
    runs.write_csv(run_dir / "receptive_field.csv", table)
    runs.write_csv(run_dir / "stages.csv", stages)
    runs.write_csv(run_dir / "stacked_3x3.csv", stacked)
    plot_growth(table, config.model, size, run_dir / "receptive_field.png")
    if config.erf:
        erf = effective_receptive_field(model, size, final["name"], config.erf_samples, config.seed)
        plot_erf(
            erf.numpy(),
            config.model,
            final,
            config.erf_samples,
            run_dir / "effective_receptive_field.png",
        )
    runs.finish_run(run_dir)
    return run_dir, result
