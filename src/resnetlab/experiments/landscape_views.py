"""The loss landscape's figures (Li et al. 2018): the shape of a 2-D slice in numbers, the
slices drawn, and the result over several seeds of directions (each figure's mean with its 95 %
interval, the 1-D slice drawn with its min-max band)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .runner import Figure, pyplot, save_figure
from .seeded import BAND, draw_band, seeds_line, spread_row, within, words


def surface_facts(loss: np.ndarray, step: float) -> dict[str, Any]:
    """Shape figures of a 2-D loss grid: the fraction of interior points with negative
    curvature along some direction (finite-difference Hessian), on the whole grid and on its
    central half (the far flanks saturate and bend down in any net), and the local minima."""
    fxx = (loss[2:, 1:-1] - 2 * loss[1:-1, 1:-1] + loss[:-2, 1:-1]) / step**2
    fyy = (loss[1:-1, 2:] - 2 * loss[1:-1, 1:-1] + loss[1:-1, :-2]) / step**2
    fxy = (loss[2:, 2:] - loss[2:, :-2] - loss[:-2, 2:] + loss[:-2, :-2]) / (4 * step**2)
    lowest = (fxx + fyy) / 2 - np.sqrt(((fxx - fyy) / 2) ** 2 + fxy**2)
    padded = np.pad(loss, 1, constant_values=np.inf)
    neighbours = np.stack(
        [
            padded[1 + di : 1 + di + loss.shape[0], 1 + dj : 1 + dj + loss.shape[1]]
            for di in (-1, 0, 1)
            for dj in (-1, 0, 1)
            if di or dj
        ]
    )
    minima = int((loss < neighbours.min(0)).sum())
    c = loss.shape[0] // 2
    inner = lowest[c // 2 : lowest.shape[0] - c // 2, c // 2 : lowest.shape[1] - c // 2]
    return {
        "nonconvex_fraction": float((lowest < 0).mean()),
        "central_nonconvex_fraction": float((inner < 0).mean()),
        "local_minima": minima,
        "centre_loss": float(loss[c, c]),
        "max_loss": float(loss.max()),
        "edge_mean_loss": float(
            np.mean([loss[0].mean(), loss[-1].mean(), loss[:, 0].mean(), loss[:, -1].mean()])
        ),
    }


def plot_1d(line: list[dict], title: str, path: Path, key: str = "coord") -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    xs = [r[key] for r in line]
    ax.plot(xs, [r["loss"] for r in line], "b-", label="loss")
    ax.set_xlabel("α" if key == "alpha" else "step along the direction (filter-normalised)")
    ax.set_ylabel("training loss (cross-entropy)", color="b")
    twin = ax.twinx()
    twin.plot(xs, [100 * r["error"] for r in line], "r--", label="error")
    twin.set_ylabel("training error (%)", color="r")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_2d(axis: np.ndarray, loss: np.ndarray, title: str, path: Path, surface: bool) -> Path:
    """The 2-D slice as contours, or as a surface (loss clipped at min + 10)."""
    plt = pyplot()
    a, b = np.meshgrid(axis, axis, indexing="ij")
    if surface:
        fig = plt.figure(figsize=(5.5, 4.4))
        ax = fig.add_subplot(projection="3d")
        ax.plot_surface(a, b, np.minimum(loss, loss.min() + 10), cmap="viridis", linewidth=0)
        ax.set_zlabel("loss")
    else:
        fig, ax = plt.subplots(figsize=(5, 4.4))
        levels = np.linspace(loss.min(), min(loss.max(), loss.min() + 10), 30)
        contour = ax.contour(a, b, loss, levels=levels, cmap="viridis")
        fig.colorbar(contour, ax=ax, label="training loss")
    ax.set_xlabel("direction 1")
    ax.set_ylabel("direction 2")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


CAPTION_1D = (
    "Training loss along one filter-normalised random direction (Li et al. 2018), BN in eval "
    "mode, no augmentation."
)
CAPTION_CONTOUR = "Training loss on a 2-D slice along two filter-normalised directions."
CAPTION_SURFACE = "The same 2-D slice as a surface (loss clipped at min + 10)."
CAPTION_INTERPOLATION = "Loss and error on the line between two sets of weights."


FACTS = ("centre_loss", "edge_mean_loss", "nonconvex_fraction", "central_nonconvex_fraction",
         "local_minima")  # fmt: skip


def rise(line: list[dict[str, Any]]) -> float:
    """How far the loss of a 1-D slice climbs from its centre to its ends (their mean)."""
    return (line[0]["loss"] + line[-1]["loss"]) / 2 - line[len(line) // 2]["loss"]


def seed_lines(rises: list[float], surfaces: list[dict[str, Any]], grid: int) -> list[str]:
    """The 1-D and 2-D figures over the seeds in words, and whether the central half of the
    2-D slices bends down, decided on the 95 % interval of its non-convex share."""
    lines = [f"1-D slices: the loss rises by {words(rises, 1.0, '', 3)} from the centre to the "
             "ends (±span)."]  # fmt: skip
    if not surfaces:
        return lines
    v = {k: [s[k] for s in surfaces] for k in FACTS}
    central, check = v["central_nonconvex_fraction"], within(v["central_nonconvex_fraction"], 0.0)
    text = (f"2-D slices ({grid}×{grid}): centre loss {words(v['centre_loss'], 1.0, '', 3)}, "
            f"mean loss on the edge {words(v['edge_mean_loss'], 1.0, '', 3)}; interior points "
            f"with negative curvature along some direction {words(v['nonconvex_fraction'])}, "
            f"in the central half {words(central)}; local minima "
            f"{words(v['local_minima'], 1.0, '', 1)}: ")  # fmt: skip
    low = check["spread"]["lo"]
    if check["holds"]:
        text += "no seed finds negative curvature in the central half"
    elif low is not None and low > 0:
        text += "the central half bends down (the 95 % interval of its share excludes 0)"
    else:
        text += "these seeds cannot tell whether the central half bends down (the interval of "
        text += "its share includes 0)"
    if check["disagree"]:
        text += f"; the seeds disagree: {sum(x <= 0 for x in central)} of {len(central)} find none"
    return lines + [text + "."]


def plot_1d_over_seeds(axis: np.ndarray, lines: list[list[dict[str, Any]]], title: str,
                       path: Path) -> Path:  # fmt: skip
    """The 1-D slice's loss and error, means over the seeds with min-max bands."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    draw_band(ax, axis, [[r["loss"] for r in line] for line in lines], color="b", label="loss")
    ax.set_xlabel("step along the direction (filter-normalised)")
    ax.set_ylabel("training loss (cross-entropy), mean over seeds", color="b")
    twin = ax.twinx()
    draw_band(twin, axis, [[r["error"] for r in line] for line in lines], 100.0, color="r",
              linestyle="--", label="error")  # fmt: skip
    twin.set_ylabel("training error (%)", color="r")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def over_seeds(config: Any, label: str, n: int, line_axis: np.ndarray, axis: np.ndarray,
               by_kind: dict[str, list[dict]]) -> tuple[dict, list[str], dict, list]:  # fmt: skip
    """The landscape's result over several seeds of directions: its part of the result (the
    mean 1-D slice and surface figures, every seed's own, their spread), its summary lines,
    tables and figures (the 2-D slices drawn are the first seed's)."""
    seeds = sorted({r["seed"] for r in by_kind["1d"]})
    lines = [[{"coord": float(a), "loss": r["loss"], "error": r["error"], "seed": s}
              for a, r in zip(line_axis, [r for r in by_kind["1d"] if r["seed"] == s],
                              strict=True)] for s in seeds]  # fmt: skip
    mean = [{"coord": float(a), "loss": float(np.mean([ln[i]["loss"] for ln in lines])),
             "error": float(np.mean([ln[i]["error"] for ln in lines]))}
            for i, a in enumerate(line_axis)]  # fmt: skip
    rows = [spread_row({"quantity": f"loss at {a:+.4g}"}, [ln[i]["loss"] for ln in lines])
            for i, a in enumerate(line_axis)]  # fmt: skip
    rises = [rise(ln) for ln in lines]
    rows.append(spread_row({"quantity": "1-D rise, centre to ends"}, rises))
    part: dict[str, Any] = {"line": mean, "lines": lines, "seeds": len(seeds)}
    tables: dict[str, list[dict[str, Any]]] = {"landscape_1d.csv": [r for ln in lines for r in ln]}
    title = f"{label}: 1-D slices, {len(seeds)} seeds, {n:,} training images"
    figures = [Figure("landscape_1d.png", f"{CAPTION_1D} Mean over {len(seeds)} seeds of "
                      f"directions; {BAND}.", lambda p: plot_1d_over_seeds(line_axis, lines,
                                                                           title, p))]  # fmt: skip
    surfaces: list[dict[str, Any]] = []
    if config.grid:
        step = float(axis[1] - axis[0])
        grids = {s: [r for r in by_kind["2d"] if r["seed"] == s] for s in seeds}
        losses = {s: np.array([r["loss"] for r in g]).reshape(config.grid, config.grid)
                  for s, g in grids.items()}  # fmt: skip
        surfaces = [surface_facts(losses[s], step) | {"seed": s} for s in seeds]
        part |= {"surface": {k: float(np.mean([f[k] for f in surfaces])) for k in FACTS},
                 "surfaces": surfaces}  # fmt: skip
        rows += [spread_row({"quantity": k}, [f[k] for f in surfaces]) for k in FACTS]
        tables["landscape_2d.csv"] = [{"a": r["coords"][0], "b": r["coords"][1], "loss": r["loss"],
                                       "error": r["error"], "seed": r["seed"]}
                                      for r in by_kind["2d"]]  # fmt: skip
        first, name = losses[seeds[0]], f"{label}: loss, seed {seeds[0]}'s directions"
        figures += [
            Figure("landscape_contour.png", f"{CAPTION_CONTOUR} The first seed's directions.",
                   lambda p: plot_2d(axis, first, name, p, surface=False)),
            Figure("landscape_surface.png", f"{CAPTION_SURFACE} The first seed's directions.",
                   lambda p: plot_2d(axis, first, name, p, surface=True)),
        ]  # fmt: skip
    part["over_seeds"] = tables["landscape_seeds.csv"] = rows
    summary = [seeds_line(config, "draws its own pair of filter-normalised directions (the "
                                  "training images stay the first seed's)")]  # fmt: skip
    return part, summary + seed_lines(rises, surfaces, config.grid), tables, figures
