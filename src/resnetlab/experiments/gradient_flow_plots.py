"""The gradient-flow study's figures: a profile per depth (plain against residual, mean line
and min–max band over seeds) and the seed MLP's first-layer gradient against depth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from ..analysis.gradients import PLUS_ONE
from ..figures import pyplot, save_figure

COLOURS = {"plain": "tab:red", "residual": "tab:blue"}


def _band(ax, stats: dict, colour: str, label: str) -> None:
    x = np.arange(1, len(stats["mean"]) + 1)
    ax.plot(x, stats["mean"], color=colour, label=label, marker="o", markersize=2.5)
    ax.fill_between(x, stats["min"], stats["max"], color=colour, alpha=0.2, linewidth=0)


def plot_profiles(profiles: dict[str, dict], key: str, ylabel: str, title: str, path: Path,
                  xlabel: str = "block / layer index l (1 = nearest the input)"):  # fmt: skip
    """One panel per depth, plain vs residual, mean line and min–max band over seeds, log y."""
    plt = pyplot()
    groups: dict[str, list[dict]] = {}
    for name, profile in profiles.items():
        if key in profile:
            groups.setdefault(profile["group"], []).append(profile | {"name": name})
    if not groups:
        return None
    cols = min(3, len(groups))
    rows = -(-len(groups) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax, (group, items) in zip(axes.flat, groups.items(), strict=False):
        for profile in sorted(items, key=lambda p: p["kind"]):
            _band(
                ax, profile[key], COLOURS[profile["kind"]], f"{profile['name']} ({profile['kind']})"
            )
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(group, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(groups) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_seed_mlp(seed_rows: list[dict], path: Path) -> Path:
    """First-layer gradient norm against depth, plain vs residual (log y)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for kind in ("plain", "residual"):
        rows = [r for r in seed_rows if r["kind"] == kind]
        ax.plot(
            [r["depth"] for r in rows],
            [r["grad_norm"] for r in rows],
            marker="o",
            color=COLOURS[kind],
            label=kind,
        )
    ax.set_yscale("log")
    ax.set_xlabel("depth (Linear-ReLU-Linear blocks)")
    ax.set_ylabel("‖∂L/∂W‖ of the first layer")
    ax.set_title("Seed MLP: first-layer gradient norm\n" + PLUS_ONE, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
