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
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from ..console import Bar
from ..groups import BatchSettings, SplitSettings, SubsampleSettings
from ..models.inference import optimize_for_inference
from ..settings import Default, compose, setting
from .inputs import BlockDraws, TrainedNets, check_data, nets_inputs, pretrained_for
from .lesion_verdict import (
    lesion_tables,
    net_verdict,
    plot_curves,
    plot_singles,
    summary_over_seeds,
    verdict,
)
from .runner import Figure, Study, Summary
from .seeded import seeded, seeds_of
from .trained import (
    Bypass,
    Chain,
    changes_shape,
    deletable,
    errors_of_variants,
    load_split,
    load_subject,
)


@dataclass
@compose(SplitSettings, SubsampleSettings, BatchSettings, BlockDraws,
         only=("split", "eval_size", "batch_size", "draws"),
         defaults={"eval_size": Default(None, "all"), "batch_size": 500})  # fmt: skip
class LesionConfig(TrainedNets):
    """Settings of one lesion study (written to config.json): the nets' error on ``eval_size``
    images of ``split`` as blocks are deleted or swapped."""

    max_k: int = setting(
        6, "deletions / swaps of k = 1..max-k blocks; 0: single blocks only", ">= 0"
    )

    if TYPE_CHECKING:  # added by compose (this block never runs)
        split: str = setting()
        eval_size: int | None = setting()
        batch_size: int = setting()
        draws: int = setting()


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


def lesion_net(subject: Any, x, y, config: LesionConfig, progress: bool = True,
               seed: int | None = None) -> dict[str, Any]:  # fmt: skip
    """All lesions of one net: the intact error, one row per lesion, and the k curves; the
    random deletions and swaps drawn with ``seed`` (default: the config's)."""
    folded = optimize_for_inference(subject.model, engine="torch")  # Chain reads its blocks
    chain = Chain(folded)
    bypass = [Bypass(b) for b in chain.blocks]
    seed = config.seed if seed is None else seed
    plans = plan_variants(chain.blocks, bypass, config.max_k, config.draws, seed)
    bar = Bar(
        total=len(x), desc=f"lesion {subject.name}", unit="img", disable=not progress, leave=False
    )
    results = errors_of_variants(chain, x, y, [p["variant"] for p in plans], config.batch_size, bar)
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


class Lesion(Study):
    """Every net of the settings on the same images, one net at one seed a measurement (a
    seed draws the image subsample, with ``eval_size``, and the random deletions and swaps;
    the nets stay the same)."""

    settings = LesionConfig
    name = "lesion"
    scale_out = True

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
        self.splits: dict[tuple[str, int | None], Any] = {}

    def inputs(self) -> dict[str, str | None]:
        return nets_inputs(self.subjects, self.config.data)

    def measurements(self) -> list[tuple[str, Any]]:
        c = self.config
        return [(seeded(f"net:{i}", seed, c), (i, seed)) for seed in seeds_of(c)
                for i in range(len(self.subjects))]  # fmt: skip

    def measure(self, spec: Any) -> dict[str, Any]:
        (i, seed), c = spec, self.config
        subject = self.subjects[i]
        key = (repr(subject.normalisation), seed if c.eval_size else None)
        if key not in self.splits:
            self.splits[key] = load_split(c.data, c.split, c.eval_size, seed,
                                          subject.normalisation)  # fmt: skip
        x, y, source = self.splits[key]
        found = lesion_net(subject, x, y, c, self.progress, seed)
        return {**found, "data": f"{source} ({len(y):,} images)"} | (
            {"seed": seed} if c.seeds > 1 else {}
        )

    def summarise(self, records: list[dict[str, Any]]) -> Summary:
        if self.config.seeds > 1:
            return summary_over_seeds(self.config, records)
        nets = [{k: v for k, v in r.items() if k not in ("id", "data")} for r in records]
        data = "\n".join(dict.fromkeys(r["data"] for r in records)) + "\n"
        result = {"nets": nets, "verdict": [net_verdict(n) for n in nets], "summary": verdict(nets)}
        tables = lesion_tables(nets)
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
