"""Lesion study of trained nets (Veit, Wilber & Belongie 2016, "Residual Networks Behave Like
Ensembles of Relatively Shallow Networks", §4): test error after deleting single blocks, after
deleting k random blocks, and after swapping k random pairs of blocks of the same shape.

A residual block is deleted by removing its residual branch and keeping its shortcut; a plain
block is replaced by the identity where its input and output shapes agree (not in downsampling
blocks, which are reported as not deletable). Every net is evaluated on its BN-folded copy.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..console import Bar
from ..models.inference import optimize_for_inference
from ..settings import setting
from .inputs import TrainedNets, check_data, pretrained_for
from .runner import Figure, Study, Summary, fingerprint, pyplot, save_figure
from .trained import (
    Bypass,
    Chain,
    changes_shape,
    deletable,
    errors_of_variants,
    load_split,
    load_subject,
)

CLAIM = (
    "Veit et al. 2016 (§4.1-4.2, Fig. 3-5, published) report that deleting a single block of a "
    "110-layer CIFAR-10 ResNet leaves the test error nearly unchanged except at the downsampling "
    "blocks, that deleting a layer of a plain net (VGG) sends it to chance, and that the error "
    "of a ResNet grows smoothly with the number of blocks deleted or reordered."
)
SMALL = 0.05  # "barely changes": at most 5 points of test error


@dataclass
class LesionConfig(TrainedNets):
    """Settings of one lesion study (written to config.json)."""

    split: str = setting("test", "split to evaluate on")
    eval_size: int | None = setting(
        None, "stratified subsample (default: whole split)", ">= 1"
    )
    max_k: int = setting(
        6, "deletions / swaps of k = 1..max-k blocks; 0: single blocks only", ">= 0"
    )
    draws: int = setting(4, "random draws per k", ">= 1")
    batch: int = setting(500, "evaluation batch", ">= 1")


def _pretrained_for(config: LesionConfig) -> list[str | None]:
    return pretrained_for(config.models, config.pretrained)


def plan_variants(
    blocks: Sequence[nn.Module], bypass: Sequence[nn.Module], max_k: int, draws: int, seed: int
) -> list[dict[str, Any]]:
    """Every lesion to evaluate: singles, k random deletions, k random swaps of same-shape
    blocks; each entry has its kind, k, the blocks concerned and the full list of blocks."""
    rng = random.Random(seed)
    plans = []
    for i, block in enumerate(blocks):
        if deletable(block):
            variant = list(blocks)
            variant[i] = bypass[i]
            plans.append({"kind": "single", "k": 1, "blocks": [i], "variant": variant})
    inner = [i for i, b in enumerate(blocks) if not changes_shape(b)]
    for k in range(1, min(max_k, len(inner)) + 1):
        for draw in range(draws):
            chosen = sorted(rng.sample(inner, k))
            variant = [bypass[i] if i in chosen else b for i, b in enumerate(blocks)]
            plans.append(
                {"kind": "delete", "k": k, "draw": draw, "blocks": chosen, "variant": variant}
            )
    groups: dict[int, list[int]] = {}
    for i in inner:  # blocks of one stage after its first share one shape
        groups.setdefault(id(_stage_of(blocks, i)), []).append(i)
    pairs_max = sum(len(g) // 2 for g in groups.values())
    for k in range(1, min(max_k, pairs_max) + 1):
        for draw in range(draws):
            variant, swapped = list(blocks), []
            pool = {key: list(g) for key, g in groups.items()}
            for _ in range(k):
                key = rng.choice([key for key, g in pool.items() if len(g) >= 2])
                a, b = rng.sample(pool[key], 2)
                pool[key] = [i for i in pool[key] if i not in (a, b)]
                variant[a], variant[b] = blocks[b], blocks[a]
                swapped.append([a, b])
            plans.append(
                {"kind": "swap", "k": k, "draw": draw, "blocks": swapped, "variant": variant}
            )
    return plans


def _stage_of(blocks: Sequence[nn.Module], i: int) -> nn.Module:
    """The first block of the stage holding block ``i`` (stages start at a shape change)."""
    while i > 0 and not changes_shape(blocks[i]):
        i -= 1
    return blocks[i]


def lesion_net(subject: Any, x, y, config: LesionConfig, progress: bool = True) -> dict[str, Any]:
    """All lesions of one net: the intact error, one row per lesion, and the k curves."""
    folded = optimize_for_inference(subject.model, engine="torch")  # Chain reads its blocks
    chain = Chain(folded)
    bypass = [Bypass(b) for b in chain.blocks]
    plans = plan_variants(chain.blocks, bypass, config.max_k, config.draws, config.seed)
    bar = Bar(
        total=len(x), desc=f"lesion {subject.name}", unit="img", disable=not progress, leave=False
    )
    results = errors_of_variants(chain, x, y, [p["variant"] for p in plans], config.batch, bar)
    bar.close()
    base = results[0]
    rows = []
    for i, (name, block) in enumerate(zip(chain.names, chain.blocks, strict=True)):
        plan = next(
            (
                p
                for p, r in zip(plans, results[1:], strict=True)
                if p["kind"] == "single" and p["blocks"] == [i]
            ),
            None,
        )
        result = results[1 + plans.index(plan)] if plan is not None else None
        rows.append(
            {
                "net": subject.name,
                "block": name,
                "index": i,
                "downsampling": changes_shape(block),
                "deletable": plan is not None,
                "error": None if result is None else result["error"],
                "increase": None if result is None else result["error"] - base["error"],
            }
        )
    curves: dict[str, list[dict[str, Any]]] = {"delete": [], "swap": []}
    for kind in curves:
        for k in sorted({p["k"] for p in plans if p["kind"] == kind}):
            errs = [
                r["error"]
                for p, r in zip(plans, results[1:], strict=True)
                if p["kind"] == kind and p["k"] == k
            ]
            curves[kind].append(
                {
                    "k": k,
                    "mean": float(np.mean(errs)),
                    "std": float(np.std(errs)),
                    "min": min(errs),
                    "max": max(errs),
                    "draws": len(errs),
                }
            )
    draws = [
        {
            "net": subject.name,
            "kind": p["kind"],
            "k": p["k"],
            "blocks": str(p["blocks"]),
            "error": r["error"],
        }
        for p, r in zip(plans, results[1:], strict=True)
        if p["kind"] != "single"
    ]
    skips = any(b.skip for b in chain.blocks)
    return {
        "name": subject.name,
        "label": subject.label,
        "skips": skips,
        "weights": subject.weights,
        "intact_error": base["error"],
        "intact_loss": base["loss"],
        "singles": rows,
        "curves": curves,
        "draws": draws,
        "evaluations": len(plans) + 1,
    }


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
        ax.set_title(net["label"], fontsize=9)
        ax.set_xlabel("deleted block (red: downsampling)")
        ax.set_ylabel("test error (%)")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=7)
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
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("k")
        ax.set_xticks(range(int(k.max()) + 1))
        ax.set_ylabel("test error (%), mean ± std over draws")
        ax.set_ylim(0, 100)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


class Lesion(Study):
    """Every net of the settings on the same images, one net a measurement."""

    settings = LesionConfig
    name = "lesion"

    def check(self) -> None:
        c = self.config
        check_data(c.data)
        pretrained = _pretrained_for(c)
        self.subjects = [
            load_subject(m, p, c.normalisation, c.seed)
            for m, p in zip(c.models, pretrained, strict=True)
        ]
        for subject in self.subjects:
            Chain(subject.model)  # a net without blocks to delete is refused here
        self.splits: dict[str, Any] = {}

    def inputs(self) -> dict[str, str | None]:
        found = {f"weights {i + 1}": fingerprint(s.weights) for i, s in enumerate(self.subjects)}
        return found | {"data": fingerprint(self.config.data, content=False)}

    def measurements(self) -> list[tuple[str, Any]]:
        return [(f"net:{i}", s) for i, s in enumerate(self.subjects)]

    def measure(self, spec: Any) -> dict[str, Any]:
        c, key = self.config, repr(spec.normalisation)
        if key not in self.splits:
            self.splits[key] = load_split(c.data, c.split, c.eval_size, c.seed, spec.normalisation)
        x, y, source = self.splits[key]
        return {**lesion_net(spec, x, y, c, self.progress), "data": f"{source} ({len(y):,} images)"}

    def summarise(self, records: list[dict[str, Any]]) -> Summary:
        nets = [{k: v for k, v in r.items() if k not in ("id", "data")} for r in records]
        data = "\n".join(dict.fromkeys(r["data"] for r in records)) + "\n"
        result = {"nets": nets, "verdict": [net_verdict(n) for n in nets], "summary": verdict(nets)}
        tables = {
            "lesion_single.csv": [r for n in nets for r in n["singles"]],
            "lesion_k.csv": [{"net": n["name"], "kind": kind, **c} for n in nets
                             for kind in ("delete", "swap") for c in n["curves"][kind]],
            "lesion_draws.csv": [d for n in nets for d in n["draws"]],
        }  # fmt: skip
        figures = [
            Figure("lesion_single.png", "Test error after deleting one block (Veit et al. 2016): "
                   "residual branch removed, shortcut kept; plain blocks replaced by the identity "
                   "(n/a: shape changes).", lambda p: plot_singles(nets, p)),
            Figure("lesion_k.png", "Test error after deleting k random blocks and swapping k "
                   "random pairs of same-shape blocks, mean ± std over draws.",
                   lambda p: plot_curves(nets, p)),
        ]  # fmt: skip
        return Summary(result, tables, {"data.txt": data}, figures)


run_lesion = Lesion.run
