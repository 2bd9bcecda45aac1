"""The Hessian of trained nets' loss, residual against plain (Li et al. 2018; Ghorbani, Krishnan
& Xiao 2019; Yao, Gholami, Keutzer & Mahoney 2020, PyHessian): top eigenvalues, trace and
eigenvalue density of the mean cross-entropy over a fixed sample of images.

Per net one Lanczos run (full reorthogonalisation, at least ``--steps`` steps) gives the top
eigenvalues, stopped at ``--tol``, and the density by stochastic Lanczos quadrature; the trace
is Hutchinson's estimate deflated by that run's basis. Model in eval mode, as PyHessian does.
Each net is one measurement of the study runner, so an interrupted study resumes at the next.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..analysis.hessian import (
    LossHessian,
    eigenvalue_density,
    hutchinson_trace,
    lanczos,
    top_eigenvalues,
)
from ..errors import ResnetlabError
from ..groups import BatchSettings, SplitSettings, SubsampleSettings
from ..settings import Default, compose, setting
from .hessian_findings import findings, growth
from .inputs import TrainedNets, check_data, nets_inputs, pretrained_for
from .runner import Figure, Study, Summary, pyplot, save_figure
from .trained import Subject, load_split, load_subject

GRID = 1500  # points of each density curve
FLOOR = 1e-7  # the density plot's lowest value (log scale)


@dataclass
@compose(SplitSettings, SubsampleSettings, BatchSettings,
         only=("split", "eval_size", "batch_size"), defaults={
    "split": "train", "eval_size": 1000,
    "batch_size": Default(250, "250: the chunks of the gradient graph"),
})  # fmt: skip
class HessianConfig(TrainedNets):
    """Settings of one Hessian study (written to config.json): the Hessian of the mean loss over
    ``eval_size`` images of ``split``, its gradient graph built ``batch_size`` images at a time."""

    eigenvalues: int = setting(3, "top eigenvalues per net", ">= 1")
    tol: float = setting(
        1e-3,
        "relative tolerance: each top eigenvalue's error bound, and the trace's standard "
        "error, against the value",
        "(0, 1)",
    )
    probes: int = setting(100, "Hutchinson probes of the trace, at most", ">= 2")
    steps: int = setting(80, "Lanczos steps at least: the density's quadrature nodes", ">= 1")
    max_steps: int = setting(
        300, "Lanczos steps at most (the top eigenvalues stop at --tol)", ">= 1"
    )
    density_runs: int = setting(1, "Lanczos runs averaged in the density (PyHessian's n_v)", ">= 1")
    cache: bool = setting(
        True,
        "keep each chunk's gradient graph between products (faster; memory grows with "
        "--eval-size, about 5 MB per 32×32 image for ResNet-20)",
    )

    if TYPE_CHECKING:  # added by compose (this block never runs)
        split: str = setting()
        eval_size: int = setting()
        batch_size: int = setting()


def describe(subject: Subject) -> dict[str, Any]:
    """The facts of a net the findings sort by: its depth and whether it has skips."""
    info = getattr(subject.model, "info", None)
    skips = bool(
        getattr(info, "skips", any(getattr(m, "skip", False) for m in subject.model.modules()))
    )
    return {
        "name": subject.name,
        "label": subject.label,
        "skips": skips,
        "depth": getattr(info, "depth", None),
        "trained": subject.weights is not None,
    }


def measure_net(
    subject: Subject, x: torch.Tensor, y: torch.Tensor, config: HessianConfig
) -> dict[str, Any]:
    """Top eigenvalues, trace and density quadrature of one net on (x, y)."""
    c = config
    started = time.perf_counter()
    hessian = LossHessian(
        subject.model, x, y, batch=c.batch_size, cache=c.cache, channels_last=True
    )
    eig = top_eigenvalues(
        hessian,
        hessian.dim,
        c.eigenvalues,
        tol=c.tol,
        max_steps=c.max_steps,
        seed=c.seed,
        min_steps=c.steps,
    )
    eig_s, eig_products = time.perf_counter() - started, hessian.products
    trace = hutchinson_trace(
        hessian, hessian.dim, probes=c.probes, tol=c.tol, seed=c.seed + 1, deflate=eig.run
    )
    trace_s = time.perf_counter() - started - eig_s
    runs = [eig.run] + [
        lanczos(
            hessian, hessian.dim, c.steps, generator=torch.Generator().manual_seed(c.seed + 1 + r)
        )
        for r in range(1, c.density_runs)
    ]
    quadrature = [run.quadrature() for run in runs]
    hessian.release()
    return {
        **describe(subject),
        "parameters": hessian.dim,
        "images": len(y),
        "loss": hessian.loss,
        "eigenvalues": eig.values,
        "bounds": eig.bounds,
        "converged": eig.converged,
        "converged_at": eig.run.converged_at,
        "lanczos_steps": eig.run.steps,
        "trace": trace.mean,
        "trace_se": trace.se,
        "trace_exact_part": trace.exact,
        "probes": trace.probes,
        "nodes": [[float(v) for v in n] for n, _ in quadrature],
        "weights": [[float(v) for v in w] for _, w in quadrature],
        "products": hessian.products,
        "eigenvalue_products": eig_products,
        "seconds": {
            "eigenvalues": eig_s,
            "trace": trace_s,
            "total": time.perf_counter() - started,
        },
    }


def _colour(nets: list[dict[str, Any]], net: dict[str, Any]) -> Any:
    """One colour per depth (so a depth's residual and plain net share it)."""
    depths = sorted({n["depth"] or 0 for n in nets})
    return pyplot().get_cmap("viridis")(
        depths.index(net["depth"] or 0) / max(1, len(depths) - 1) * 0.85
    )


def plot_density(nets: list[dict[str, Any]], path: Path) -> Path:
    """Every net's density on one log axis: residual solid, plain dashed, a colour per depth."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for net in nets:
        grid, values = eigenvalue_density(net["nodes"], net["weights"], points=GRID)
        ax.semilogy(
            grid,
            np.maximum(values, FLOOR),
            "-" if net["skips"] else "--",
            color=_colour(nets, net),
            label=net["label"],
            linewidth=1.2,
        )
    ax.set_ylim(FLOOR, None)
    ax.set_xlabel("eigenvalue of the Hessian")
    ax.set_ylabel("density (log scale)")
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_depth(nets: list[dict[str, Any]], path: Path) -> Path:
    """Top eigenvalue and trace (± standard error) against depth, one line per kind of net."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for skips, kind in ((True, "residual"), (False, "plain")):
        rows = sorted(
            (n for n in nets if n["skips"] == skips and n["depth"]), key=lambda n: n["depth"]
        )
        if not rows:
            continue
        depths = [n["depth"] for n in rows]
        style = "o-" if skips else "s--"
        axes[0].plot(depths, [n["eigenvalues"][0] for n in rows], style, label=kind)
        axes[1].errorbar(
            depths,
            [n["trace"] for n in rows],
            yerr=[n["trace_se"] for n in rows],
            fmt=style,
            capsize=3,
            label=kind,
        )
    for ax, what in zip(axes, ("top eigenvalue λ1", "trace ± standard error"), strict=True):
        ax.set_xlabel("depth (layers)")
        ax.set_ylabel(what)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def line(net: dict[str, Any]) -> str:
    """A net's summary line."""
    n, tops = net, ", ".join(f"{v:.4g}" for v in net["eigenvalues"])
    within = (
        f"within --tol by Lanczos step {n['converged_at']}"
        if n["converged"]
        else f"NOT within --tol after {n['lanczos_steps']} Lanczos steps"
    )
    return (
        f"{n['label']}: top eigenvalues {tops} ({within}); trace {n['trace']:.4g} ± "
        f"{n['trace_se']:.2g} ({n['probes']} probes); loss {n['loss']:.4f}; "
        f"{n['seconds']['total']:.0f} s"
    )


def table(net: dict[str, Any]) -> dict[str, Any]:
    """A net's row of ``hessian.csv``."""
    return {
        "net": net["label"],
        "skips": net["skips"],
        "depth": net["depth"],
        "parameters": net["parameters"],
        "images": net["images"],
        "loss": round(net["loss"], 5),
        "top eigenvalues": ", ".join(f"{v:.5g}" for v in net["eigenvalues"]),
        "largest bound": f"{max(net['bounds']):.2g}",
        "converged": net["converged"],
        "lanczos steps": net["lanczos_steps"],
        "trace": f"{net['trace']:.5g}",
        "trace se": f"{net['trace_se']:.3g}",
        "probes": net["probes"],
        "products": net["products"],
        "seconds": round(net["seconds"]["total"], 1),
    }


class HessianStudy(Study):
    """Every net of the settings on the same images, one net a measurement."""

    settings = HessianConfig
    name = "hessian"

    def check(self) -> None:
        c = self.config
        if c.seeds > 1:  # the data group brings --seeds; one hessian run is one seed today
            raise ResnetlabError("hessian takes one seed per run; run it again with --seed K.")
        if c.max_steps < c.steps:
            raise ResnetlabError(
                f"--max-steps {c.max_steps} is below --steps {c.steps}. Raise --max-steps."
            )
        if c.eigenvalues > c.max_steps:
            raise ResnetlabError(
                f"--eigenvalues {c.eigenvalues} needs --max-steps {c.eigenvalues} at least."
            )
        check_data(c.data)
        self.subjects = [
            load_subject(m, p, c.normalisation, c.seed)
            for m, p in zip(c.models, pretrained_for(c.models, c.pretrained), strict=True)
        ]
        self.splits: dict[str, Any] = {}

    def inputs(self) -> dict[str, str | None]:
        return nets_inputs(self.subjects, self.config.data)

    def measurements(self) -> list[tuple[str, Any]]:
        return [(f"net:{i}", s) for i, s in enumerate(self.subjects)]

    def measure(self, spec: Any) -> dict[str, Any]:
        c, key = self.config, repr(spec.normalisation)
        if key not in self.splits:
            self.splits[key] = load_split(c.data, c.split, c.eval_size, c.seed, spec.normalisation)
        x, y, source = self.splits[key]
        return {**measure_net(spec, x, y, c), "data": f"{source} ({len(y):,} images)"}

    def summarise(self, records: list[dict[str, Any]]) -> Summary:
        nets = [{k: v for k, v in r.items() if k not in ("id", "data")} for r in records]
        found = findings(nets)
        summary = [line(n) for n in nets]
        result = {
            "nets": nets,
            "growth": growth(nets),
            "findings": found,
            "verdict": [f["verdict"] for f in found],
            "summary": summary,
        }
        tables = {
            "hessian.csv": [table(n) for n in nets],
            "hessian_eigenvalues.csv": [
                {"net": n["label"], "rank": i + 1, "eigenvalue": v, "error bound": b}
                for n in nets
                for i, (v, b) in enumerate(zip(n["eigenvalues"], n["bounds"], strict=True))
            ],
        }
        figures = [Figure("hessian_density.png", CAPTION_DENSITY, lambda p: plot_density(nets, p))]
        if any(n["depth"] for n in nets):
            figures.append(
                Figure("hessian_depth.png", CAPTION_DEPTH, lambda p: plot_depth(nets, p))
            )
        data = "\n".join(dict.fromkeys(r["data"] for r in records)) + "\n"
        return Summary(result, tables, {"data.txt": data}, figures)


CAPTION_DENSITY = (
    "Eigenvalue density of the Hessian by stochastic Lanczos quadrature (Ghorbani et al. 2019, "
    "as PyHessian's density): the Ritz values of each Lanczos run weighted by the squared first "
    "entries of T's eigenvectors, each broadened by a Gaussian of variance 1e-5·max(1, range); "
    "residual nets solid, plain nets dashed, one colour per depth."
)
CAPTION_DEPTH = (
    "Top eigenvalue and trace (Hutchinson, ± standard error) of the Hessian against depth, "
    "residual and plain nets."
)


run_hessian = HessianStudy.run
