"""Shattered gradients (Balduzzi, Frean, Leary, Lewis, Ma & McWilliams 2017, "The Shattered
Gradients Problem: If resnets are the answer, then what is the question?") at initialisation.

Inputs sweep a line, x(t) = x0 + t·v for t in [-2, 2]; g(t) is the derivative of one output
unit along the sweep (the input gradient projected on v). Its autocorrelation over the sweep
says how much the gradient at one input tells about its neighbours: a shattered gradient looks
like white noise (autocorrelation near 0 at every lag). BatchNorm layers use the statistics of
the sweep itself, held fixed, so that each point's gradient is its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..errors import ResnetlabError
from ..groups import ImageSizeSettings, SeedSettings, SeedsSettings
from ..models.cifar import CifarResNet, PreActResNet
from ..settings import Default, compose, setting
from .inputs import DepthSettings, MlpSettings
from .runner import Figure, Study, Summary, pyplot, save_figure
from .seeded import BAND, compared, seeds_line, spread_row, words

KINDS = ("plain", "resnet", "preact", "mlp-plain", "mlp-resnet")
NOISE_FLOOR = 0.1  # |ρ| of a shattered gradient over a 128-point sweep stays below this
CLAIM = (
    "Balduzzi et al. 2017 (§3-4, Fig. 1-3, published) show that the correlation between the "
    "gradients at nearby inputs decays exponentially with depth in feedforward rectifier nets "
    "(as 2^-L) and only as 1/sqrt(L) in residual nets with BatchNorm."
)


@dataclass
@compose(SeedsSettings, SeedSettings, DepthSettings, ImageSizeSettings, MlpSettings, defaults={
    "seeds": 2, "depths": Default([8, 14, 20, 32, 44, 56, 110], "8 14 20 32 44 56 110"),
    "image_size": Default(32, "32: the conv nets'"), "mlp_width": 200,
})  # fmt: skip
class ShatteredConfig:
    """Settings of one shattered-gradients study (written to config.json); every net is
    initialised, and its sweep drawn, with each of the seeds (the seed groups')."""

    kinds: list[str] = setting(help="kinds of net (default all)", choices=KINDS,
                               factory=lambda: list(KINDS))  # fmt: skip
    points: int = setting(128, "points of the sweep", ">= 16")

    if TYPE_CHECKING:  # added by compose (this block never runs)
        seeds: int = setting()
        seed: int = setting()
        depths: list[int] = setting()
        image_size: int = setting()
        mlp_width: int = setting()


def build(kind: str, depth: int, width: int) -> nn.Module:
    """The net of one kind and depth; MLP depth counts hidden layers (Linear-BN-ReLU)."""
    if kind == "plain":
        return CifarResNet(depth, skip=False)
    if kind == "resnet":
        return CifarResNet(depth)
    if kind == "preact":
        return PreActResNet(depth)
    return MLP(depth, width, skip=kind == "mlp-resnet")


class MLP(nn.Module):
    """1 input, ``depth`` rectifier layers of ``width`` with BatchNorm, 1 output; with ``skip``
    each layer after the first adds its input (Balduzzi et al.'s 1-D nets)."""

    def __init__(self, depth: int, width: int, skip: bool) -> None:
        super().__init__()
        self.skip = skip
        self.first = nn.Linear(1, width)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU())
            for _ in range(depth - 1)
        )
        self.last = nn.Linear(width, 1)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.first(x))
        for layer in self.layers:
            h = h + layer(h) if self.skip else layer(h)
        return self.last(h)


def sweep_gradient(
    model: nn.Module, x0: torch.Tensor, v: torch.Tensor, t: torch.Tensor
) -> np.ndarray:
    """g(t) = ∂f(x0 + t·v)/∂t for output unit 0, BatchNorm frozen at the sweep's statistics."""
    x = x0.unsqueeze(0) + t.view(-1, *[1] * x0.dim()) * v.unsqueeze(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative: one pass sets the statistics of this batch
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    x.requires_grad_(True)
    out = model(x)[:, 0].sum()
    (grad,) = torch.autograd.grad(out, x)
    return (grad.flatten(1) @ v.flatten()).numpy().astype(np.float64)


def autocorrelation(g: np.ndarray, max_lag: int) -> np.ndarray:
    """Normalised autocorrelation of a sequence at lags 0..max_lag (1 at lag 0)."""
    g = g - g.mean()
    var = float((g * g).mean())
    if var == 0:
        return np.ones(max_lag + 1)
    return np.array([float((g[: len(g) - k] * g[k:]).mean()) / var for k in range(max_lag + 1)])


def fit_decay(depths: list[int], rho: list[float], floor: float = 0.0) -> dict[str, Any]:
    """Least-squares fits of ρ against depth: exponential (log ρ = a + b·L) and power law
    (log ρ = a + b·log L), with the R² of each, on the depths where ρ is above ``floor`` (below
    it the autocorrelation of a finite sweep is noise, and so would the fit be)."""
    keep = [i for i, v in enumerate(rho) if v > max(floor, 1e-6)]
    L = np.asarray([depths[i] for i in keep], dtype=float)
    r = np.log(np.asarray([rho[i] for i in keep]))
    out: dict[str, Any] = {"depths_fitted": [depths[i] for i in keep]}
    for name, xs in (("exponential", L), ("power", np.log(L))):
        if len(L) < 2:
            out[name] = None
            continue
        slope, intercept = np.polyfit(xs, r, 1)
        pred = intercept + slope * xs
        ss = float(((r - r.mean()) ** 2).sum())
        out[name] = {
            "slope": float(slope),
            "intercept": float(intercept),
            "r2": 1 - float(((r - pred) ** 2).sum()) / ss if ss else 1.0,
        }
    return out


def measure(kind: str, depth: int, config: ShatteredConfig, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = build(kind, depth, config.mlp_width)
    gen = torch.Generator().manual_seed(seed + 1)
    shape = (1,) if kind.startswith("mlp") else (3, config.image_size, config.image_size)
    x0 = torch.zeros(shape) if kind.startswith("mlp") else torch.randn(shape, generator=gen)
    v = torch.ones(shape) if kind.startswith("mlp") else torch.randn(shape, generator=gen)
    v = v / v.norm() * (1.0 if kind.startswith("mlp") else float(np.sqrt(v.numel())))
    t = torch.linspace(-2, 2, config.points)
    g = sweep_gradient(model, x0, v, t)
    rho = autocorrelation(g, min(16, config.points // 4))
    return {
        "kind": kind,
        "depth": depth,
        "seed": seed,
        "rho1": float(rho[1]),
        "autocorrelation": rho.tolist(),
        "gradient": g.tolist(),
    }


def plot(rows: list[dict], fits: dict, path: Path, config: ShatteredConfig) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    colours = plt.get_cmap("tab10")
    for i, kind in enumerate(config.kinds):
        mine = [r for r in rows if r["kind"] == kind and r["seed"] == config.seed]
        depths = sorted({r["depth"] for r in rows if r["kind"] == kind})
        means = [
            float(np.mean([r["rho1"] for r in rows if r["kind"] == kind and r["depth"] == d]))
            for d in depths
        ]
        axes[0].plot(depths, means, "o-", color=colours(i), label=kind)
        if config.seeds > 1:
            runs = [[r["rho1"] for r in rows if r["kind"] == kind and r["depth"] == d]
                    for d in depths]  # fmt: skip
            axes[0].fill_between(depths, [min(v) for v in runs], [max(v) for v in runs],
                                 color=colours(i), alpha=0.2, linewidth=0)  # fmt: skip
        deepest = max(mine, key=lambda r: r["depth"])
        g = np.asarray(deepest["gradient"])
        axes[1].plot(
            np.linspace(-2, 2, len(g)),
            g / (np.abs(g).max() or 1),
            color=colours(i),
            linewidth=0.8,
            label=f"{kind}, depth {deepest['depth']}",
        )
        axes[2].plot(deepest["autocorrelation"], color=colours(i), label=kind)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("depth (layers)")
    axes[0].set_ylabel("lag-1 autocorrelation of g(t), mean over seeds")
    axes[1].set_xlabel("t (input sweep)")
    axes[1].set_ylabel("g(t), scaled to max 1")
    axes[2].set_xlabel("lag (sweep steps)")
    axes[2].set_ylabel("autocorrelation, deepest net")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Shattered gradients at initialisation", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def decay_summary(rows: list[dict], c: ShatteredConfig) -> tuple[list[dict], dict, list[str]]:
    """The lag-1 autocorrelation per kind and depth (mean over seeds), its decay fits, and the
    summary lines that compare them with the paper."""
    fits: dict[str, Any] = {}
    table: list[dict[str, Any]] = []
    summary = [CLAIM]
    if c.seeds > 1:
        summary.append(seeds_line(c, "initialises every net and draws its sweep"))

    def per_seed(kind: str, depth: int) -> list[float]:
        return [r["rho1"] for r in rows if r["kind"] == kind and r["depth"] == depth]

    for kind in c.kinds:
        depths = sorted(c.depths)
        rho = [float(np.mean(per_seed(kind, d))) for d in depths]
        fits[kind] = fit_decay(depths, rho, NOISE_FLOOR)
        table += [{"kind": kind, "depth": d, "rho1": v} for d, v in zip(depths, rho, strict=True)]
        e, p = fits[kind]["exponential"], fits[kind]["power"]
        text = f"{kind}: lag-1 autocorrelation {rho[0]:.3f} at depth {depths[0]} to {rho[-1]:.3f} "
        text += f"at {depths[-1]}"
        if c.seeds > 1:
            text += f" ({words(per_seed(kind, depths[-1]), 1.0, '', 3)})"
        below = [d for d, v in zip(depths, rho, strict=True) if v <= NOISE_FLOOR]
        if below:
            text += f"; at the noise floor (ρ ≤ {NOISE_FLOOR}) from depth {below[0]}"
        if e is None:
            summary.append(text + "; too few depths above the floor to fit a decay.")
            continue
        better = "exponential" if e["r2"] >= p["r2"] else "power law"
        fitted = fits[kind]["depths_fitted"]
        summary.append(
            text + f"; fits on depths {fitted[0]}-{fitted[-1]} above the floor: exponential "
            f"slope {e['slope']:.4f}/layer (R² {e['r2']:.2f}), power exponent {p['slope']:.2f} "
            f"(R² {p['r2']:.2f}); better fit: {better}."
        )
    plain = [t["rho1"] for t in table if t["kind"] == "plain"]
    res = [t["rho1"] for t in table if t["kind"] == "resnet"]
    if plain and res and c.seeds > 1:
        deepest = max(c.depths)
        shows, gap = compared(per_seed("resnet", deepest), per_seed("plain", deepest), 1.0, "", 3)
        summary.append(
            f"At depth {deepest} the plain net's lag-1 autocorrelation is "
            f"{words(per_seed('plain', deepest), 1.0, '', 3)}, the ResNet's "
            f"{words(per_seed('resnet', deepest), 1.0, '', 3)}; ResNet minus plain, {gap}: "
            + ("the plain net's gradient is the more shattered, as the paper predicts."
               if shows else "the effect the paper predicts does not show here.")
        )  # fmt: skip
    elif plain and res:
        shows = plain[-1] < res[-1]
        summary.append(
            f"At depth {max(c.depths)} the plain net's lag-1 autocorrelation is "
            f"{plain[-1]:.3f}, the ResNet's {res[-1]:.3f}: "
            + (
                "the plain net's gradient is the more shattered, as the paper predicts."
                if shows
                else "the effect the paper predicts does not show here."
            )
        )
    return table, fits, summary


class Shattered(Study):
    """Every kind × depth × seed, one a measurement."""

    settings = ShatteredConfig
    name = "shattered"
    scale_out = True

    def check(self) -> None:
        conv = [d for d in self.config.depths if d < 8 or (d - 2) % 6]
        if conv and any(not k.startswith("mlp") for k in self.config.kinds):
            raise ResnetlabError(f"CIFAR nets have 6n+2 layers (8, 14, 20, ...), not {conv[0]}.")

    def measurements(self) -> list[tuple[str, Any]]:
        c = self.config
        jobs = [(k, d, c.seed + s) for k in c.kinds for d in c.depths for s in range(c.seeds)]
        return [(f"{k}:{d}:{s}", (k, d, s)) for k, d, s in jobs]

    def measure(self, spec: Any) -> dict[str, Any]:
        kind, depth, seed = spec
        return measure(kind, depth, self.config, seed)

    def summarise(self, records: list[dict[str, Any]]) -> Summary:
        c, rows = self.config, [{k: v for k, v in r.items() if k != "id"} for r in records]
        table, fits, summary = decay_summary(rows, c)
        caption = ("Balduzzi et al. 2017: lag-1 autocorrelation of the input gradient along a 1-D "
                   "input sweep against depth, the gradient of the deepest nets, and its "
                   "autocorrelation.")  # fmt: skip
        if c.seeds > 1:
            caption += f" Left: means over {c.seeds} seeds; {BAND}; right: the first seed's."
        figure = Figure("shattered.png", caption, lambda p: plot(rows, fits, p, c))
        result: dict[str, Any] = {"rho1": table, "fits": fits, "summary": summary}
        tables = {"shattered.csv": table}
        if c.seeds > 1:
            spreads = [spread_row({"kind": t["kind"], "depth": t["depth"]},
                                  [r["rho1"] for r in rows if (r["kind"], r["depth"]) ==
                                   (t["kind"], t["depth"])]) for t in table]  # fmt: skip
            result = {**result, "seeds": c.seeds, "over_seeds": spreads}
            tables["shattered_seeds.csv"] = spreads
        return Summary(result, tables, figures=[figure])


run_shattered = Shattered.run
