"""The comparison table: parameters, MACs, depth, skips, published accuracy, size and speed.

Counts are computed from the models (built on PyTorch's meta device: no weights, no time);
accuracy and file size are quoted from their published sources. Throughput is opt-in
(``speed``): measured on this machine in ``repeats`` interleaved rounds, reported as the median
and min–max, and flagged wherever that spread is at least the difference it would show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..analysis.gradients import BLOCK_TYPES
from ..errors import ResnetlabError
from ..groups import BatchSettings, Checked, DeviceSettings, ImageSizeSettings, ModelsSettings
from ..models import create_model, model_info
from ..models.registry import ModelInfo
from ..models.summary import count_macs, count_parameters
from ..reports.findings import compare_finding
from ..settings import Default, compose, setting
from .runner import Figure, Study, Summary, pyplot, save_figure
from .speed import MODES, Spread, add_speeds, time_model, unresolved

DEFAULT_MODELS = ["vgg16", "vgg19", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
TV_FILE_SIZE = "torchvision weights metadata (_file_size, IMAGENET1K_V1)"
MIB = 2**20


@dataclass
@compose(ModelsSettings, BatchSettings, ImageSizeSettings, DeviceSettings, defaults={
    "models": Default(list(DEFAULT_MODELS), " ".join(DEFAULT_MODELS)),
    "batch_size": 8, "image_size": 224,
})  # fmt: skip
class CompareConfig(Checked):
    """Settings of one comparison (written to config.json); the batch, image size and device
    are those of the timings."""

    mac_size: int = setting(224, "input px for the MAC counts", ">= 1")
    speed: bool = setting(False, "also time each model (minutes on a CPU)")
    timing_iters: int = setting(3, "timed iterations per repeat", ">= 1")
    timing_warmup: int = setting(1, "untimed iterations before them", ">= 0")
    repeats: int = setting(3, "timing repeats; the spread needs at least 3", ">= 3")

    if TYPE_CHECKING:  # added by compose (this block never runs)
        models: list[str] = setting()
        batch_size: int = setting()
        image_size: int = setting()
        device: str = setting()


def display_name(name: str) -> str:
    """``resnet50`` -> ``ResNet-50``, ``vgg16_bn`` -> ``VGG-16-BN``, ``plain34`` -> ``plain-34``."""
    match = re.match(r"^(resnet|vgg|plain)(\d+)(_bn)?$", name)
    if not match:
        return name
    family = {"resnet": "ResNet", "vgg": "VGG", "plain": "plain"}[match.group(1)]
    return f"{family}-{match.group(2)}" + ("-BN" if match.group(3) else "")


def weighted_depth(model: nn.Module) -> int:
    """Conv and linear layers on the main path (projection shortcuts not counted), as in papers."""
    return sum(
        1
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear) and "downsample" not in name
    )


def count_skips(model: nn.Module) -> int:
    """Blocks that add their input back (one skip connection each)."""
    return sum(1 for m in model.modules() if isinstance(m, BLOCK_TYPES) and m.skip)


def published_top1(info: ModelInfo) -> tuple[float | None, str]:
    """Published ImageNet top-1 accuracy %, preferring torchvision's; from the error if needed."""
    for item in info.published:
        if item.metric == "ImageNet top-1 accuracy %":
            return item.value, item.source
    for item in info.published:
        if item.metric == "ImageNet top-1 error %":
            return round(100 - item.value, 3), f"100 - top-1 error, {item.source}"
    return None, ""


def published_file_size(info: ModelInfo) -> float | None:
    """Size of the published weights file in MiB, from torchvision's metadata."""
    if not info.torchvision_name:
        return None
    try:
        from torchvision.models import get_model_weights

        weights = get_model_weights(info.torchvision_name)
    except (ValueError, KeyError, ImportError):
        return None
    size = (
        weights.IMAGENET1K_V1.meta.get("_file_size") if hasattr(weights, "IMAGENET1K_V1") else None
    )
    return float(size) if size is not None else None


def counting_model(name: str) -> nn.Module:
    """The model on the meta device (shapes only, nothing initialised); on CPU if it refuses."""
    try:
        with torch.device("meta"):
            return create_model(name)
    except (NotImplementedError, RuntimeError):
        return create_model(name)


def model_row(name: str, config: CompareConfig) -> dict:
    """One line of the table: counted, never timed (see :func:`measure_speeds`)."""
    info = model_info(name)
    model = counting_model(name)
    params, _ = count_parameters(model)
    channels = info.input_size[0]
    macs = sum(count_macs(model, (channels, config.mac_size, config.mac_size)).values())
    top1, source = published_top1(info)
    skips = count_skips(model)
    row = {
        "model": name,
        "params": params,
        "macs": macs,
        "depth": weighted_depth(model),
        "skips": skips,
        "top1": top1,
        "top1_source": source,
        "file_mib": published_file_size(info),
        "fp32_mib": round(params * 4 / MIB, 2),
    }
    return row


def speed_findings(rows: list[dict], config: CompareConfig) -> list[str]:
    """Sentences on the measured speed, each with its spread: each ResNet against the largest
    VGG, and every pair whose measured order contradicts its counted MACs."""
    timed = [r for r in rows if "train_img_s" in r]
    if len(timed) < 2:
        return []

    def spread(r: dict) -> Spread:
        return Spread(r["train_img_s"], r["train_img_s_min"], r["train_img_s_max"])

    def figure(r: dict) -> str:
        low, high = r["train_img_s_min"], r["train_img_s_max"]
        return f"{r['train_img_s']:.3g} img/s ({low:.3g}–{high:.3g})"

    def verdict(a: dict, b: dict) -> str:
        sa, sb = spread(a), spread(b)
        diff, width = abs(sa.median - sb.median), max(sa.width, sb.width)
        if unresolved(sa, sb):
            return (
                f" Not resolved: the spread over repeats ({width:.3g} img/s) is at least the "
                f"difference ({diff:.3g} img/s), so this order is noise, not a finding."
            )
        return f" The difference ({diff:.3g} img/s) exceeds the spread ({width:.3g} img/s)."

    where = (f"Measured here ({timed[0]['speed_device']}, batch {config.batch_size}, "
             f"{config.image_size} px, fp32, median of {timed[0]['repeats']} repeats, min–max "
             "in brackets)")  # fmt: skip
    findings = []
    vggs = [r for r in timed if r["model"].startswith("vgg")]
    if vggs:
        vgg = max(vggs, key=lambda r: r["params"])
        for res in (r for r in timed if r["skips"] > 0):
            ratio = res["train_img_s"] / vgg["train_img_s"]
            findings.append(
                f"{where}: {display_name(res['model'])} trains at {figure(res)}, "
                f"{display_name(vgg['model'])} at {figure(vgg)} ({ratio:.2f}×)." + verdict(res, vgg)
            )
    for i, a in enumerate(timed):
        for b in timed[i + 1:]:
            fast, slow = (a, b) if a["train_img_s"] > b["train_img_s"] else (b, a)
            if fast["macs"] > slow["macs"]:
                findings.append(
                    f"{display_name(fast['model'])} trained faster than "
                    f"{display_name(slow['model'])} ({figure(fast)} against {figure(slow)}) "
                    f"although it needs {fast['macs'] / slow['macs']:.2f}× the MACs."
                    + verdict(fast, slow)
                )
    return findings


def derived_claims(rows: list[dict], config: CompareConfig) -> list[str]:
    """Sentences computed from the table: each ResNet against the largest VGG in it."""
    vggs = [r for r in rows if r["model"].startswith("vgg")]
    resnets = [r for r in rows if r["skips"] > 0]
    if not vggs or not resnets:
        return []
    vgg = max(vggs, key=lambda r: r["params"])
    v = display_name(vgg["model"])
    claims = []
    for res in resnets:
        r = display_name(res["model"])
        ratio = vgg["params"] / res["params"]
        words = f"{ratio:.1f}× fewer" if ratio >= 1 else f"{1 / ratio:.1f}× more"
        mac_ratio = vgg["macs"] / res["macs"]
        macs = f"{mac_ratio:.1f}× fewer" if mac_ratio >= 1 else f"{1 / mac_ratio:.1f}× more"
        claim = f"{r} has {words} parameters than {v} ({res['params'] / 1e6:.2f}M vs "
        claim += f"{vgg['params'] / 1e6:.2f}M) and {macs} multiply-accumulates"
        if res["top1"] is not None and vgg["top1"] is not None:
            better = "higher" if res["top1"] > vgg["top1"] else "lower"
            claim += f", with {better} published top-1 ({res['top1']:.2f} vs {vgg['top1']:.2f} %)"
        claims.append(claim + ".")
    return claims


COLUMNS = [
    ("model", "model", lambda r: display_name(r["model"])),
    ("params", "params (M)", lambda r: f"{r['params'] / 1e6:.2f}"),
    ("macs", "GMACs", lambda r: f"{r['macs'] / 1e9:.3f}"),
    ("depth", "depth", lambda r: str(r["depth"])),
    ("skips", "skips", lambda r: f"yes ({r['skips']})" if r["skips"] else "no"),
    ("top1", "top-1 % [pub.]", lambda r: "-" if r["top1"] is None else f"{r['top1']:.2f}"),
    ("file_mib", "file MiB [pub.]", lambda r: "-" if r["file_mib"] is None else f"{r['file_mib']:.1f}"),  # noqa: E501
    ("fp32_mib", "fp32 MiB", lambda r: f"{r['fp32_mib']:.1f}"),
    ("forward_img_s", "fwd img/s (min–max)", lambda r: speed_cell(r, "forward")),
    ("train_img_s", "train img/s (min–max)", lambda r: speed_cell(r, "train")),
]  # fmt: skip
UNRESOLVED = "~"


def speed_cell(row: dict, mode: str) -> str:
    """``median (min–max)``, marked when the spread does not resolve it from another model."""
    cell = f"{row[f'{mode}_img_s']:.3g} ({row[f'{mode}_img_s_min']:.3g}–"
    cell += f"{row[f'{mode}_img_s_max']:.3g})"
    return cell + (f" {UNRESOLVED}" if row.get(f"{mode}_unresolved") else "")


def format_table(rows: list[dict], config: CompareConfig) -> str:
    """Plain aligned text with the sources and settings under it."""
    columns = [c for c in COLUMNS if all(c[0] in r for r in rows)]
    cells = [[c[1] for c in columns]] + [[c[2](r) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(
        f"GMACs: multiply-accumulates of one {config.mac_size}×{config.mac_size} image "
        "(Conv2d/Linear, counted with forward hooks)."
    )
    lines.append("depth: conv + linear layers on the main path; skips: blocks with an addition.")
    for source in sorted({r["top1_source"] for r in rows if r["top1_source"]}):
        lines.append(f"top-1 % [pub.]: published, {source}.")
    lines.append(f"file MiB [pub.]: {TV_FILE_SIZE}; fp32 MiB: parameters × 4 bytes (computed).")
    if config.speed and rows and "speed_device" in rows[0]:
        lines.append(
            f"img/s: measured on this machine ({rows[0]['speed_device']}), batch "
            f"{config.batch_size}, {config.image_size}×{config.image_size}, fp32; median "
            f"(min–max) of {rows[0]['repeats']} repeats, models interleaved, each "
            f"{config.timing_iters} timed iteration(s) after {config.timing_warmup} warm-up; "
            "train = forward + backward + SGD step."
        )
        flagged = [display_name(r["model"]) for r in rows
                   if r.get("forward_unresolved") or r.get("train_unresolved")]  # fmt: skip
        if flagged:
            lines.append(
                f"{UNRESOLVED}: the spread over repeats is at least the difference to another "
                f"model's median, so that order is not resolved ({', '.join(flagged)})."
            )
    return "\n".join(lines)


def plot_compare(rows: list[dict], path: Path) -> Path | None:
    """Published top-1 against parameters and against MACs (log x), one point per model."""
    rows = [r for r in rows if r["top1"] is not None]
    if not rows:
        return None
    plt = pyplot()
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    colours = {True: "tab:blue", False: "tab:red"}
    for ax, key, label in (
        (axes[0], "params", "parameters (millions)"),
        (axes[1], "macs", "multiply-accumulates at 224 px (G)"),
    ):
        scale = 1e6 if key == "params" else 1e9
        lo, hi = (f(r[key] for r in rows) / scale for f in (min, max))
        lo, hi = lo / 1.5, hi * 1.5
        for r in rows:
            ax.scatter(r[key] / scale, r["top1"], color=colours[r["skips"] > 0], s=30)
            ax.annotate(
                display_name(r["model"]),
                (r[key] / scale, r["top1"]),
                fontsize=8,
                xytext=(4, 3),
                textcoords="offset points",
            )
        ax.set_xscale("log")
        ax.set_xticks([t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500) if lo <= t <= hi])
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel("published ImageNet top-1 (%)")
        ax.grid(True, alpha=0.3)
    handles = [
        plt.Line2D([], [], color=c, marker="o", linestyle="", label=t)
        for c, t in ((colours[True], "with skips"), (colours[False], "no skips"))
    ]
    axes[0].legend(handles=handles, fontsize=8)
    fig.suptitle("Accuracy (published) against size and compute (counted)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


class Compare(Study):
    """One row per model (counted and published), then, with ``speed``, every timing: each
    repeat of each model and mode, models interleaved round by round, one a measurement."""

    settings = CompareConfig
    name = "compare"

    def check(self) -> None:
        if not self.config.models:
            raise ResnetlabError("no models to compare. Name at least one, e.g. resnet50.")
        for name in self.config.models:
            model_info(name)  # unknown names fail before any work
        self.timed: dict[str, nn.Module] = {}

    def measurements(self) -> list[tuple[str, Any]]:
        c = self.config
        plan: list[tuple[str, Any]] = [(f"row:{m}", ("row", m, "", 0)) for m in c.models]
        if c.speed:
            plan += [(f"speed:{r}:{m}:{mode}", ("speed", m, mode, r))
                     for r in range(c.repeats) for m in c.models for mode in MODES]  # fmt: skip
        return plan

    def measure(self, spec: Any) -> dict[str, Any]:
        kind, name, mode, repeat = spec
        if kind == "row":
            return model_row(name, self.config)
        if name not in self.timed:
            self.timed[name] = create_model(name)
        timing = time_model(self.timed[name], mode, self.config)
        return {"model": name, "mode": mode, "repeat": repeat, **timing}

    def summarise(self, records: list[dict[str, Any]]) -> Summary:
        c = self.config
        rows = [{k: v for k, v in r.items() if k != "id"} for r in records if "params" in r]
        if c.speed:
            rows = add_speeds(rows, [r for r in records if "img_s" in r])
        claims = derived_claims(rows, c) + speed_findings(rows, c)
        names = {r["model"]: display_name(r["model"]) for r in rows}
        found = [f for f in [compare_finding(rows, names)] if f is not None]
        result = {"rows": rows, "claims": claims, "findings": found, "summary": claims}
        figure = Figure("compare.png", "Published ImageNet top-1 against counted parameters and "
                        "multiply-accumulates.", lambda p: plot_compare(rows, p))  # fmt: skip
        texts = {"compare.txt": format_table(rows, c) + "\n"}
        return Summary(result, {"compare.csv": rows}, texts, [figure])


run_compare = Compare.run
