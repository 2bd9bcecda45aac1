"""The lesion study's results in words and figures (Veit et al. 2016, §4): the paper's claim,
each net's single-block figures and the verdict, for one seed and over several (means with 95 %
intervals, the verdict decided on the intervals)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .runner import Figure, Summary, pyplot, save_figure
from .seeded import BAND, compared, draw_band, seeds_line, spread_row, within, words

CLAIM = (
    "Veit et al. 2016 (§4.1-4.2, Fig. 3-5, published) report that deleting a single block of a "
    "110-layer CIFAR-10 ResNet leaves the test error nearly unchanged except at the downsampling "
    "blocks, that deleting a layer of a plain net (VGG) sends it to chance, and that the error "
    "of a ResNet grows smoothly with the number of blocks deleted or reordered."
)
SMALL = 0.05  # "barely changes": at most 5 points of test error


def net_verdict(net: dict[str, Any]) -> dict[str, Any]:
    """Single-block figures of one net, in points of test error."""
    inner = [r["increase"] for r in net["singles"] if r["deletable"] and not r["downsampling"]]
    down = [r["increase"] for r in net["singles"] if r["deletable"] and r["downsampling"]]
    blocked = [r["block"] for r in net["singles"] if not r["deletable"]]
    facts = {
        "net": net["name"],
        "skips": net["skips"],
        "intact_error": net["intact_error"],
        "inner_max": max(inner, default=None),
        "inner_min": min(inner, default=None),
        "inner_median": float(np.median(inner)) if inner else None,
        "down_max": max(down, default=None),
        "not_deletable": blocked,
    }
    return facts


def _pts(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}"


def verdict(nets: list[dict[str, Any]]) -> list[str]:
    """What the paper claims, what was measured for each net, and how they relate."""
    lines = [CLAIM]
    facts = [net_verdict(n) for n in nets]
    for f, n in zip(facts, nets, strict=True):
        text = (
            f"{n['label']}: intact error {100 * f['intact_error']:.2f} %; deleting one "
            f"non-downsampling block changes it by {_pts(f['inner_min'])} to "
            f"{_pts(f['inner_max'])} points (median {_pts(f['inner_median'])})"
        )
        if f["down_max"] is not None:
            text += f"; a downsampling block by up to {_pts(f['down_max'])}"
        if f["not_deletable"]:
            text += f"; not deletable (shape changes): {', '.join(f['not_deletable'])}"
        lines.append(text + ".")
    res = [f for f in facts if f["skips"] and f["inner_max"] is not None]
    plain = [f for f in facts if not f["skips"] and f["inner_min"] is not None]
    for r in res:
        ok = r["inner_max"] <= SMALL
        lines.append(
            f"ResNet claim on {r['net']}: deleting one non-downsampling block raises the error by "
            f"at most {100 * r['inner_max']:.1f} points: "
            + (
                f"holds (at most {100 * SMALL:.0f} points)."
                if ok
                else f"does not hold as stated (more than {100 * SMALL:.0f} points)."
            )
        )
        for p in plain:
            lines.append(
                f"{r['net']} against {p['net']}: the most harmful single deletion of {r['net']} "
                f"costs {100 * r['inner_max']:.1f} points, the least harmful of {p['net']} "
                f"{100 * p['inner_min']:.1f} points: "
                + (
                    "the plain net depends on every block far more."
                    if p["inner_min"] > r["inner_max"]
                    else "the separation the paper reports does not show here."
                )
            )
    return lines


def _singles_axes(ax: Any, title: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("deleted block (red: downsampling)")
    ax.set_ylabel("test error (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)


def _curves_axes(ax: Any, title: str, top: int, ylabel: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("k")
    ax.set_xticks(range(top + 1))
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)


def plot_singles(nets: list[dict[str, Any]], path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(nets), figsize=(4.6 * len(nets), 3.6), squeeze=False)
    for ax, net in zip(axes[0], nets, strict=True):
        xs = [r["index"] for r in net["singles"]]
        errs = [100 * r["error"] if r["error"] is not None else np.nan for r in net["singles"]]
        colours = ["tab:red" if r["downsampling"] else "tab:blue" for r in net["singles"]]
        ax.bar(xs, errs, color=colours)
        for r in net["singles"]:
            if not r["deletable"]:
                ax.text(r["index"], 2, "n/a", rotation=90, ha="center", fontsize=7)
        ax.axhline(
            100 * net["intact_error"], color="k", linestyle="--", linewidth=1, label="intact"
        )
        _singles_axes(ax, net["label"])
    fig.tight_layout()
    return save_figure(fig, path)


def plot_curves(nets: list[dict[str, Any]], path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, kind, title in zip(
        axes, ("delete", "swap"), ("k random blocks deleted", "k random pairs swapped"), strict=True
    ):
        for net in nets:
            pts = [(0, 100 * net["intact_error"], 0.0)] + [
                (c["k"], 100 * c["mean"], 100 * c["std"]) for c in net["curves"][kind]
            ]
            k, mean, std = (np.array(v) for v in zip(*pts, strict=True))
            ax.errorbar(k, mean, yerr=std, marker="o", capsize=3, label=net["label"])
        _curves_axes(ax, title, int(k.max()), "test error (%), mean ± std over draws")
    fig.tight_layout()
    return save_figure(fig, path)


def lesion_tables(nets: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each block's single deletion, each k's errors and every draw, one row each (with the
    net's seed, over several seeds)."""

    def seed(n: dict[str, Any]) -> dict[str, Any]:
        return {"seed": n["seed"]} if "seed" in n else {}

    return {
        "lesion_single.csv": [{**r, **seed(n)} for n in nets for r in n["singles"]],
        "lesion_k.csv": [{"net": n["name"], **seed(n), "kind": kind, **c} for n in nets
                         for kind in ("delete", "swap") for c in n["curves"][kind]],
        "lesion_draws.csv": [{**d, **seed(n)} for n in nets for d in n["draws"]],
    }  # fmt: skip


def _by_net(records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The records of each net, seed by seed (records come seed by seed, the nets in order)."""
    nets: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        nets.setdefault(r["id"].split(":")[1], []).append(r)
    return list(nets.values())


def _column(facts: list[dict[str, Any]], key: str) -> list[float]:
    return [f[key] for f in facts if f[key] is not None]


def verdict_over_seeds(config: Any, runs: list[list[dict[str, Any]]]) -> list[str]:
    """The claim, each net's figures over the seeds, and the verdict decided on the 95 %
    intervals: a ResNet's worst single deletion within ``SMALL`` (its interval's upper end),
    and a plain net's mildest deletion above it (the interval of the difference above 0)."""
    varies = "draws its own random deletions and swaps"
    varies += " and its own test subsample" if config.eval_size else " on the same images"
    lines = [CLAIM, seeds_line(config, varies) + " The nets stay the same."]
    facts = [[net_verdict(r) for r in net] for net in runs]
    for f, net in zip(facts, runs, strict=True):
        inner_min, inner_max = _column(f, "inner_min"), _column(f, "inner_max")
        text = f"{net[0]['label']}: intact error {words(_column(f, 'intact_error'), digits=2)}"
        if inner_max:
            text += (f"; deleting one non-downsampling block changes it by "
                     f"{_pts(float(np.mean(inner_min)))} to {_pts(float(np.mean(inner_max)))} "
                     f"points (means; the largest change "
                     f"{words(inner_max, unit=' points')})")  # fmt: skip
        if down := _column(f, "down_max"):
            text += f"; a downsampling block by up to {words(down, unit=' points')}"
        lines.append(text + ".")
    res = [f for f in facts if f[0]["skips"] and _column(f, "inner_max")]
    plain = [f for f in facts if not f[0]["skips"] and _column(f, "inner_min")]
    for r in res:
        name, worst = r[0]["net"], _column(r, "inner_max")
        check = within(worst, SMALL)
        text = (f"ResNet claim on {name}: deleting one non-downsampling block raises the error by "
                f"at most {words(worst, unit=' points')}: ")  # fmt: skip
        limit = f"{100 * SMALL:.0f} points"
        text += (f"holds (the 95 % interval stays within {limit})" if check["holds"] else
                 f"does not hold as stated (the 95 % interval reaches above {limit})")  # fmt: skip
        if check["disagree"]:
            over = sum(v > SMALL for v in worst)
            text += f"; the seeds disagree: {over} of {len(worst)} exceed {100 * SMALL:.0f} points"
        lines.append(text + ".")
        for p in plain:
            separated, gap = compared(_column(p, "inner_min"), worst)
            lines.append(
                f"{name} against {p[0]['net']}: the least harmful single deletion of "
                f"{p[0]['net']} minus the most harmful of {name}, {gap}: "
                + ("the plain net depends on every block far more." if separated else
                   "the separation the paper reports does not show here.")
            )  # fmt: skip
    return lines


def seed_rows(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """``lesion_seeds.csv``: each net's intact error, each block's single-deletion increase and
    each k's mean error over the draws, with mean, sd and 95 % interval over the seeds."""
    rows = []
    for net in runs:
        name = net[0]["name"]
        rows.append(spread_row({"net": name, "quantity": "intact error"},
                               [r["intact_error"] for r in net]))  # fmt: skip
        for i, block in enumerate(net[0]["singles"]):
            if block["deletable"]:
                rows.append(
                    spread_row(
                        {"net": name, "quantity": f"increase, {block['block']} deleted"},
                        [r["singles"][i]["increase"] for r in net],
                    )
                )
        for kind in ("delete", "swap"):
            for j, point in enumerate(net[0]["curves"][kind]):
                rows.append(spread_row({"net": name, "quantity": f"error, {kind} k={point['k']}"},
                                       [r["curves"][kind][j]["mean"] for r in net]))  # fmt: skip
    return rows


def plot_singles_over_seeds(runs: list[list[dict[str, Any]]], path: Path) -> Path:
    """Each block's test error once deleted, mean over the seeds, with min-max error bars."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(4.6 * len(runs), 3.6), squeeze=False)
    for ax, net in zip(axes[0], runs, strict=True):
        first = net[0]
        for i, row in enumerate(first["singles"]):
            if not row["deletable"]:
                ax.text(row["index"], 2, "n/a", rotation=90, ha="center", fontsize=7)
                continue
            errs = 100 * np.array([r["singles"][i]["error"] for r in net])
            ax.bar(row["index"], errs.mean(), color="tab:red" if row["downsampling"] else
                   "tab:blue", yerr=[[errs.mean() - errs.min()], [errs.max() - errs.mean()]],
                   capsize=2)  # fmt: skip
        intact = 100 * np.mean([r["intact_error"] for r in net])
        ax.axhline(intact, color="k", linestyle="--", linewidth=1, label="intact (mean)")
        _singles_axes(ax, f"{first['label']}, {len(net)} seeds")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_curves_over_seeds(runs: list[list[dict[str, Any]]], path: Path) -> Path:
    """Test error against k, the mean over seeds of each seed's mean over its draws, with the
    min-max band over the seeds."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, kind, title in zip(
        axes, ("delete", "swap"), ("k random blocks deleted", "k random pairs swapped"), strict=True
    ):
        top = 1
        for net in runs:
            ks = [0] + [c["k"] for c in net[0]["curves"][kind]]
            values = [[r["intact_error"]] + [c["mean"] for c in r["curves"][kind]] for r in net]
            draw_band(ax, ks, values, 100.0, marker="o", label=net[0]["label"])
            top = max(top, *ks)
        _curves_axes(ax, title, top, "test error (%), mean over seeds")
    fig.tight_layout()
    return save_figure(fig, path)


def summary_over_seeds(config: Any, records: list[dict[str, Any]]) -> Summary:
    """The lesion result over several seeds: every seed's nets (as one seed gives them, with
    their seed), the spread of each figure over the seeds, and the verdict on the intervals."""
    runs = [[{k: v for k, v in r.items() if k not in ("id", "data")} for r in net]
            for net in _by_net(records)]  # fmt: skip
    nets = [r for net in runs for r in net]
    data = "\n".join(dict.fromkeys(r["data"] for r in records)) + "\n"
    result = {"nets": nets, "verdict": [net_verdict(n) | {"seed": n["seed"]} for n in nets],
              "seeds": config.seeds, "over_seeds": seed_rows(runs),
              "summary": verdict_over_seeds(config, runs)}  # fmt: skip
    tables = lesion_tables(nets) | {"lesion_seeds.csv": result["over_seeds"]}
    figures = [
        Figure("lesion_single.png", "Test error after deleting one block (Veit et al. 2016), "
               f"mean over {config.seeds} seeds; error bars span the lowest to the highest "
               "seed's error. Residual branch removed, shortcut kept; plain blocks replaced by "
               "the identity (n/a: shape changes).", lambda p: plot_singles_over_seeds(runs, p)),
        Figure("lesion_k.png", "Test error after deleting k random blocks and swapping k random "
               f"pairs of same-shape blocks: the mean over {config.seeds} seeds of each seed's "
               f"mean over its draws; {BAND}.", lambda p: plot_curves_over_seeds(runs, p)),
    ]  # fmt: skip
    return Summary(result, tables, {"data.txt": data}, figures)
