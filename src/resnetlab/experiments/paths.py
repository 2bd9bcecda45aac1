"""Path lengths in residual nets (Veit, Wilber & Belongie 2016, §4-5): how many paths of each
length a net of n blocks has (binomial: C(n, k) of 2^n go through k residual branches), and how
much gradient the paths of each length carry.

The gradient of paths of length k is measured as in the paper: the forward pass runs the whole
net; in the backward pass k random blocks pass the gradient through their residual branch only
and the others through their shortcut only; the norm of the loss gradient at the input, per
image, averaged over images and draws, is that length's gradient magnitude. Multiplied by the
number of paths of that length it gives each length's share of the total gradient.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..console import Bar
from ..errors import ResnetlabError
from ..groups import ModelSettings, SubsampleSettings
from ..models import create_model
from ..models.inference import optimize_for_inference
from ..settings import Default, compose, setting
from .inputs import BlockDraws, TrainedNet, check_data
from .runner import Figure, Study, Summary, fingerprint, pyplot, save_figure
from .seeded import BAND, draw_band, seeded, seeds_line, seeds_of, spread_row, within, words
from .trained import POST_ACTIVATION, Chain, load_split, load_subject

PLAIN = "path lengths need a residual net. Pass a ResNet, not a plain net."
SHARE = 0.9  # the effective range carries this share of the total gradient
CAPTION = (
    "Veit et al. 2016 §5: share of paths by length, gradient magnitude of paths of each length, "
    "and each length's share of the total gradient"
)
CLAIM = (
    "Veit et al. 2016 (abstract, §4-5, Fig. 6, published): in a 110-layer ResNet (54 blocks) "
    "most of the gradient comes from paths only 10-34 layers deep, far shorter than the "
    "typical path of 27 blocks."
)


@dataclass
@compose(ModelSettings, SubsampleSettings, BlockDraws, only=("model", "eval_size", "draws"),
         defaults={"model": "resnet56",
                   "eval_size": Default(32, "32 test images, one batch")})  # fmt: skip
class PathsConfig(TrainedNet):
    """Settings of one path-length study (written to config.json): the gradient carried by
    paths of each length, on one batch of ``eval_size`` test images."""

    if TYPE_CHECKING:  # added by compose (this block never runs)
        eval_size: int = setting()
        draws: int = setting()


class Routed(nn.Module):
    """A residual block whose backward pass takes its residual branch, its shortcut, or both;
    the forward value is always the block's own."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.route = "both"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b: Any = self.block  # any residual block class: its parts are read by name
        post = isinstance(b, POST_ACTIVATION)
        inner = x if post else b.relu(b.bn1(x))
        if post:
            r = b.bn2(b.conv2(b.relu(b.bn1(b.conv1(x)))))
            if hasattr(b, "conv3"):
                r = b.bn3(b.conv3(b.relu(r)))
        else:
            r = b.conv2(b.relu(b.bn2(b.conv1(inner))))
            if hasattr(b, "conv3"):
                r = b.conv3(b.relu(b.bn3(r)))
        if b.scale is not None:
            r = b.scale(r)
        s = x if b.downsample is None else b.downsample(inner)
        if self.route == "residual":
            s = s.detach()
        elif self.route == "skip":
            r = r.detach()
        out = r + s
        return F.relu(out) if isinstance(b, POST_ACTIVATION) else out


def path_counts(n: int) -> list[float]:
    """The share of the 2^n paths that pass through k residual branches, k = 0..n."""
    return [math.comb(n, k) / 2**n for k in range(n + 1)]


def effective_range(contribution: list[float], share: float = SHARE) -> tuple[int, int]:
    """The shortest interval of lengths [a, b] whose contributions add to ``share`` of all."""
    total = sum(contribution)
    best = (0, len(contribution) - 1)
    for a in range(len(contribution)):
        acc = 0.0
        for b in range(a, len(contribution)):
            acc += contribution[b]
            if acc >= share * total:
                if b - a < best[1] - best[0]:
                    best = (a, b)
                break
    return best


def gradient_by_length(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    draws: int,
    seed: int,
    desc: str,
    progress: bool,
) -> list[float]:
    """Mean per-image input-gradient norm of the paths through k residual branches."""
    chain = Chain(optimize_for_inference(model, channels_last=False, engine="torch"))  # blocks
    if not all(b.skip for b in chain.blocks):
        raise ResnetlabError(PLAIN)
    routed = [Routed(b) for b in chain.blocks]
    n, rng = len(routed), random.Random(seed)
    means = []
    for k in Bar(range(n + 1), desc=desc, disable=not progress, leave=False):
        norms = []
        for _ in range(draws if 0 < k < n else 1):
            chosen = set(rng.sample(range(n), k))
            for i, r in enumerate(routed):
                r.route = "residual" if i in chosen else "skip"
            xb = x.clone().requires_grad_(True)
            loss = F.cross_entropy(chain.forward(xb, routed), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, xb)
            norms.append(grad.flatten(1).norm(dim=1).mean().item())
        means.append(float(np.mean(norms)))
    return means


def study(name: str, model: nn.Module, x, y, config: PathsConfig, progress: bool,
          seed: int | None = None) -> dict:  # fmt: skip
    """The gradient of each path length of one net, its share of the total and its effective
    range; the k blocks drawn with ``seed`` (default: the config's)."""
    seed = config.seed if seed is None else seed
    grads = gradient_by_length(model, x, y, config.draws, seed, f"paths {name}", progress)
    n = len(grads) - 1
    counts = path_counts(n)
    contribution = [c * g for c, g in zip(counts, grads, strict=True)]
    a, b = effective_range(contribution)
    per_block = 2 if not hasattr(Chain(model).blocks[0], "conv3") else 3
    peak = int(np.argmax(contribution))
    return {
        "net": name,
        "blocks": n,
        "layers_per_block": per_block,
        "gradient": grads,
        "path_share": counts,
        "contribution": contribution,
        "range": [a, b],
        "peak": peak,
        "typical": n / 2,
    }


def plot(results: list[dict], path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    n = results[0]["blocks"]
    axes[0].bar(range(n + 1), results[0]["path_share"], color="grey")
    axes[0].set_title(f"share of paths through k of {n} residual branches", fontsize=9)
    for r in results:
        axes[1].semilogy(range(n + 1), r["gradient"], "o-", markersize=3, label=r["net"])
        total = sum(r["contribution"])
        axes[2].plot(
            range(n + 1),
            [c / total for c in r["contribution"]],
            "o-",
            markersize=3,
            label=f"{r['net']}: {SHARE:.0%} in k={r['range'][0]}-{r['range'][1]}",
        )
    axes[1].set_title("input-gradient norm of paths of length k", fontsize=9)
    axes[2].set_title("share of the total gradient by path length", fontsize=9)
    return _finish(fig, axes, path)


class Paths(Study):
    """The trained net (``model``/``pretrained``) and an untrained one of its architecture, one
    net at one seed a measurement (a seed draws the test images, the k blocks of each draw and
    the untrained net's initialisation)."""

    settings = PathsConfig
    name = "paths"
    scale_out = True

    def check(self) -> None:
        c = self.config
        check_data(c.data)
        self.subject = load_subject(c.model, c.pretrained, c.normalisation, c.seed)
        if not all(b.skip for b in Chain(self.subject.model).blocks):
            raise ResnetlabError(PLAIN)

    def inputs(self) -> dict[str, str | None]:
        data = fingerprint(self.config.data, content=False)
        return {"weights": fingerprint(self.subject.weights), "data": data}

    def prepare(self) -> None:
        c, norm = self.config, self.subject.normalisation
        self.images = {seed: load_split(c.data, "test", c.eval_size, seed, norm)
                       for seed in seeds_of(c)}  # fmt: skip
        self.x, self.y, self.source = self.images[c.seed]

    def measurements(self) -> list[tuple[str, Any]]:
        c = self.config
        return [(seeded(kind, seed, c), (kind, seed)) for seed in seeds_of(c)
                for kind in ("trained", "untrained")]  # fmt: skip

    def measure(self, spec: Any) -> dict[str, Any]:
        (kind, seed), c, subject = spec, self.config, self.subject
        x, y, _ = self.images[seed]
        tag = {"seed": seed} if c.seeds > 1 else {}
        if kind == "trained":
            return study(subject.label, subject.model, x, y, c, self.progress, seed) | tag
        torch.manual_seed(seed)
        untrained = create_model(subject.name).eval()
        name = f"{subject.name} untrained (seed {seed})"
        return study(name, untrained, x, y, c, self.progress, seed) | tag

    def summarise(self, records: list[dict[str, Any]]) -> Summary:
        if self.config.seeds > 1:
            return self.over_seeds(records)
        results = [{k: v for k, v in r.items() if k != "id"} for r in records]
        summary = [CLAIM]
        for r in results:
            a, b = r["range"]
            lay = r["layers_per_block"]
            summary.append(
                f"{r['net']}: {r['blocks']} blocks, typical path {r['typical']:.1f} blocks; "
                f"{SHARE:.0%} of the gradient comes from paths through {a}-{b} residual branches "
                f"({a * lay}-{b * lay} layers), most at {r['peak']}: "
                + (
                    "shorter than the typical path, as the paper reports."
                    if b < r["typical"]
                    else "not shorter than the typical path; the paper's effect does not show here."
                )
            )
        rows = length_rows(results)
        figure = Figure("paths.png", CAPTION + ".", lambda p: plot(results, p))
        data = {"data.txt": f"{self.source} ({len(self.y):,} images)\n"}
        return Summary({"nets": results, "summary": summary}, {"paths.csv": rows}, data, [figure])

    def over_seeds(self, records: list[dict[str, Any]]) -> Summary:
        """Every seed's nets, each figure's spread over the seeds and the verdict on the
        interval of the effective range's upper end."""
        c = self.config
        results = [{k: v for k, v in r.items() if k != "id"} for r in records]
        runs = {
            kind: [
                r
                for r, rec in zip(results, records, strict=True)
                if rec["id"].split(":")[0] == kind
            ]
            for kind in ("trained", "untrained")
        }
        labels = {"trained": self.subject.label, "untrained": f"{self.subject.name} untrained"}
        summary = [CLAIM, seeds_line(c, "draws its own test images, blocks and untrained net")]
        summary += [range_verdict(labels[k], nets) for k, nets in runs.items()]
        rows = length_rows(results)
        spreads = [row for kind, nets in runs.items() for row in seed_rows(labels[kind], nets)]
        figure = Figure("paths.png", f"{CAPTION}: means over {c.seeds} seeds; {BAND}.",
                        lambda p: plot_over_seeds(labels, runs, p))  # fmt: skip
        sources = "\n".join(f"seed {seed}: {source} ({len(y):,} images)"
                            for seed, (_, y, source) in self.images.items())  # fmt: skip
        result = {"nets": results, "seeds": c.seeds, "over_seeds": spreads, "summary": summary}
        return Summary(result, {"paths.csv": rows, "paths_seeds.csv": spreads},
                       {"data.txt": sources + "\n"}, [figure])  # fmt: skip


def _finish(fig: Any, axes: Any, path: Path) -> Path:
    """The path-length axes of both plots labelled, gridded and given legends; saved."""
    for ax in axes:
        ax.set_xlabel("path length k (residual branches)")
        ax.grid(True, alpha=0.3)
    for ax in axes[1:]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def length_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``paths.csv``: each net's share of paths, gradient and contribution at every length k
    (with its seed, over several seeds)."""
    return [{"net": r["net"], **({"seed": r["seed"]} if "seed" in r else {}), "k": k,
             "path_share": r["path_share"][k], "gradient": r["gradient"][k],
             "contribution": r["contribution"][k]}
            for r in results for k in range(r["blocks"] + 1)]  # fmt: skip


def _share(r: dict[str, Any]) -> list[float]:
    total = sum(r["contribution"])
    return [c / total for c in r["contribution"]]


def range_verdict(label: str, nets: list[dict[str, Any]]) -> str:
    """One net over the seeds: where the gradient comes from, and whether that range ends below
    the typical path length, decided on the 95 % interval of its upper end."""
    starts, ends = [r["range"][0] for r in nets], [r["range"][1] for r in nets]
    typical, lay = nets[0]["typical"], nets[0]["layers_per_block"]
    check = within(ends, typical, strict=True)
    text = (f"{label}: {nets[0]['blocks']} blocks, typical path {typical:.1f} blocks; "
            f"{SHARE:.0%} of the gradient comes from paths through {words(starts, 1.0, '', 1)} "
            f"to {words(ends, 1.0, '', 1)} residual branches (×{lay} layers), most at "
            f"{words([r['peak'] for r in nets], 1.0, '', 1)}: ")  # fmt: skip
    text += ("shorter than the typical path, as the paper reports (the 95 % interval of the "
             "range's end lies below it)" if check["holds"] else "not shown shorter than the "
             "typical path (the 95 % interval of the range's end reaches it)")  # fmt: skip
    if check["disagree"]:
        text += (f"; the seeds disagree: {sum(e >= typical for e in ends)} of {len(ends)} reach "
                 "the typical path")  # fmt: skip
    return text + "."


def seed_rows(label: str, nets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``paths_seeds.csv`` of one net: its effective range and peak, and each length's share of
    the gradient, with mean, sd and 95 % interval over the seeds."""
    rows = [spread_row({"net": label, "quantity": q}, [f(r) for r in nets]) for q, f in
            (("range start", lambda r: r["range"][0]), ("range end", lambda r: r["range"][1]),
             ("peak", lambda r: r["peak"]))]  # fmt: skip
    shares = [_share(r) for r in nets]
    rows += [spread_row({"net": label, "quantity": f"gradient share, k={k}"},
                        [s[k] for s in shares]) for k in range(len(shares[0]))]  # fmt: skip
    return rows


def plot_over_seeds(labels: dict[str, str], runs: dict[str, list[dict]], path: Path) -> Path:
    """``plot``'s three panels, the gradient and its shares as means with min-max bands."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    first = next(iter(runs.values()))[0]
    n = first["blocks"]
    axes[0].bar(range(n + 1), first["path_share"], color="grey")
    axes[0].set_title(f"share of paths through k of {n} residual branches", fontsize=9)
    for kind, nets in runs.items():
        draw_band(axes[1], range(n + 1), [r["gradient"] for r in nets], marker="o", markersize=3,
                  label=labels[kind])  # fmt: skip
        draw_band(axes[2], range(n + 1), [_share(r) for r in nets], marker="o", markersize=3,
                  label=labels[kind])  # fmt: skip
    axes[1].set_yscale("log")
    axes[1].set_title("input-gradient norm of paths of length k, mean over seeds", fontsize=9)
    axes[2].set_title("share of the total gradient by path length, mean over seeds", fontsize=9)
    return _finish(fig, axes, path)


run_paths = Paths.run
