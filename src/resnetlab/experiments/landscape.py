"""Loss landscapes (Li, Xu, Taylor, Studer & Goldstein 2018, "Visualizing the Loss Landscape of
Neural Nets"): 1-D and 2-D slices of the training loss along filter-normalised random directions,
and the 1-D interpolation between two sets of weights.

Each direction has one Gaussian entry per weight, rescaled filter by filter to the norm of the
matching filter of the weights (a filter: one output unit of a conv or linear layer); biases and
BatchNorm parameters get zero, as in the paper ("ignore biasbn"). The loss is measured on a fixed
subsample of the training split, without augmentation, BatchNorm in eval mode, on the BN-folded
copy of the net (on ONNX Runtime where ``optimize_for_inference`` picks it and the subsample is
large enough to repay an export per point). Every point is one measurement of the study runner,
journaled as it is taken, so an interrupted grid resumes where it stopped.
"""

from __future__ import annotations

import copy
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ResnetlabError
from ..files import atomic_write
from ..groups import BatchSettings, SubsampleSettings
from ..models import create_model
from ..models.inference import optimize_for_inference
from ..settings import compose, setting
from .inputs import TrainedNet, check_data
from .landscape_views import (
    CAPTION_1D,
    CAPTION_CONTOUR,
    CAPTION_INTERPOLATION,
    CAPTION_SURFACE,
    over_seeds,
    plot_1d,
    plot_2d,
    surface_facts,
)
from .runner import Figure, Study, Summary, fingerprint
from .seeded import seeded, seeds_of
from .trained import Subject, load_split, load_subject, run_weights

CLAIM = (
    "Li et al. 2018 (§5-6, Fig. 5, published) report that skip connections keep the loss surface "
    "of deep nets smooth and nearly convex around the minimiser, while without them it turns "
    "chaotic as depth grows; their 20-layer net without skips is still fairly smooth, the "
    "56- and 110-layer ones are not."
)


MAX_GRID = 101  # points per 2-D axis: 10,201 evaluations, minutes to an hour on a CPU
# Each point is a new net: ORT needs an export per point (uncached; 0.3-1.3 s for ResNet-20/56).
# From this many images ORT's faster forward repays it (docs/BENCHMARKS.md); below, torch.
ORT_MIN_IMAGES = 1000
RECORD_BYTES = 1024  # a measured point held in memory, about


@dataclass
@compose(SubsampleSettings, BatchSettings, only=("train_size", "batch_size"),
         defaults={"train_size": 2000, "batch_size": 500})  # fmt: skip
class LandscapeConfig(TrainedNet):
    """Settings of one landscape study (written to config.json): the loss on ``train_size``
    training images around the net's weights."""

    span: float = setting(1.0, "coordinates in [-span, span]", "> 0")
    points_1d: int = setting(41, "points of the 1-D slice", ">= 3")
    grid: int = setting(21, f"points per 2-D axis (at most {MAX_GRID}); 0: no 2-D slice", ">= 0")
    interpolate_from: str | None = setting(
        None, "also interpolate from these weights: init, a run folder or a file"
    )
    interpolation_points: int = setting(25, "points of the interpolation", ">= 2")

    if TYPE_CHECKING:  # added by compose (this block never runs)
        train_size: int = setting()
        batch_size: int = setting()


def filter_normalised_direction(
    model: nn.Module, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """One random direction per parameter: Gaussian, each filter scaled to the weights' filter
    norm; zero for parameters of one dimension (biases, BatchNorm)."""
    direction = {}
    for name, p in model.named_parameters():
        if p.dim() <= 1:
            direction[name] = torch.zeros_like(p)
            continue
        d = torch.randn(p.shape, generator=generator, dtype=p.dtype)
        d_norm = d.flatten(1).norm(dim=1).view(-1, *[1] * (p.dim() - 1))
        w_norm = p.detach().flatten(1).norm(dim=1).view(-1, *[1] * (p.dim() - 1))
        direction[name] = d * w_norm / (d_norm + 1e-10)
    return direction


@torch.inference_mode()
def loss_and_error(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> dict:
    """Mean cross-entropy and error of the BN-folded copy of ``model`` on (x, y)."""
    engine = "auto" if len(x) >= ORT_MIN_IMAGES else "torch"
    folded = optimize_for_inference(model, engine=engine, cache=False)
    loss, wrong = 0.0, 0
    for start in range(0, len(x), batch):
        out = folded(x[start : start + batch])
        yb = y[start : start + batch]
        loss += float(F.cross_entropy(out, yb, reduction="sum"))
        wrong += int((out.argmax(1) != yb).sum())
    return {"loss": loss / len(x), "error": wrong / len(x)}


def evaluate_point(
    model: nn.Module,
    theta: dict,
    dirs: list[dict],
    coords: tuple[float, ...],
    x: torch.Tensor,
    y: torch.Tensor,
    batch: int,
) -> dict:
    """Loss and error at θ + Σ coords_i · d_i (the model's weights are overwritten)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            value = theta[name].clone()
            for c, d in zip(coords, dirs, strict=True):
                value += c * d[name]
            p.copy_(value)
    return loss_and_error(model, x, y, batch)


def directions_file(seed: int, config: LandscapeConfig) -> str:
    """Where a seed's directions are kept: ``directions.pt`` in a one-seed run, else one file
    per seed."""
    return "directions.pt" if config.seeds == 1 else f"directions-seed{seed}.pt"


def _load_directions(path: Path, model: nn.Module, seed: int) -> list[dict]:
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    generator = torch.Generator().manual_seed(seed)
    dirs = [filter_normalised_direction(model, generator) for _ in range(2)]
    with atomic_write(path) as handle:
        torch.save(dirs, handle)
    return dirs


def interpolation_path(spec: str) -> Path:
    """The weights file ``--interpolate-from`` names (a file, or a run folder's weights)."""
    path = run_weights(Path(spec)) if Path(spec).is_dir() else Path(spec)
    if not path.is_file():
        raise ResnetlabError(
            f"--interpolate-from {spec}: no such file or run folder. Pass init, "
            "a run folder or a weights file."
        )
    return path


def interpolation_start(spec: str, subject: Subject, seed: int) -> dict[str, torch.Tensor]:
    """The weights at α = 0: ``init`` (the architecture at ``seed``), a run folder or a file,
    read as tensors only and checked against the net's own keys and shapes."""
    if spec == "init":
        torch.manual_seed(seed)
        return create_model(subject.name).state_dict()
    path = interpolation_path(spec)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError):
        raise ResnetlabError(
            f"--interpolate-from {spec}: refused, it does not load as tensors only (a pickle "
            "that would run code, or not a weights file). Pass a state dict or a checkpoint."
        ) from None
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    own = subject.model.state_dict()
    if not isinstance(state, dict) or {k: tuple(v.shape) for k, v in own.items()} != {
        k: tuple(getattr(v, "shape", ())) for k, v in state.items()
    }:
        raise ResnetlabError(
            f"--interpolate-from {spec}: its weights do not match {subject.name}'s layers. "
            f"Pass weights of the same architecture."
        )
    return state


def interpolate_at(
    model: nn.Module, start: dict, end: dict, alpha: float, x: torch.Tensor, y: torch.Tensor,
    batch: int,
) -> dict:  # fmt: skip
    """Loss and error at (1 - α)·start + α·end, parameters and BN statistics alike; a BN
    variance extrapolated below zero (α outside [0, 1]) is clipped to zero."""
    state = {
        k: (1 - alpha) * start[k].float() + alpha * v.float() if v.is_floating_point() else v
        for k, v in end.items()
    }
    for key in [k for k in state if k.endswith("running_var")]:
        state[key] = state[key].clamp_min(0)
    model.load_state_dict(state)
    return loss_and_error(model, x, y, batch)


def _seconds_per_point(subject: Subject, images: int, batch: int) -> float:
    """One evaluation of the BN-folded net on ``images`` random inputs, timed here."""
    info = getattr(subject.model, "info", None)
    shape = tuple(info.input_size) if info is not None else (3, 32, 32)
    n = min(images, 32)
    x = torch.randn(n, *shape)
    started = time.perf_counter()
    loss_and_error(subject.model, x, torch.zeros(n, dtype=torch.long), batch)
    return (time.perf_counter() - started) * images / n


class Landscape(Study):
    """The 1-D slice, the 2-D grid and the interpolation of one net, one point a measurement;
    each seed draws its own pair of directions (the training images stay the first seed's,
    and the interpolation, which has no random part, is measured once)."""

    settings = LandscapeConfig
    name = "landscape"
    scale_out = True

    def check(self) -> None:
        c = self.config
        if c.grid == 1:
            raise ResnetlabError("--grid must be 0 (no 2-D slice) or at least 2.")
        check_data(c.data)
        self.subject = load_subject(c.model, c.pretrained, c.normalisation, c.seed)
        if c.grid > MAX_GRID:
            points = c.grid**2
            seconds = points * _seconds_per_point(self.subject, c.train_size, c.batch_size)
            raise ResnetlabError(
                f"--grid {c.grid} is {points:,} loss evaluations of {c.train_size:,} images: "
                f"about {points * RECORD_BYTES / 2**30:,.1f} GiB of results and "
                f"{seconds / 3600:,.1f} hours here. Use --grid {MAX_GRID} or less (the paper: 51)."
            )
        self.start: dict[str, torch.Tensor] | None = None
        if c.interpolate_from:
            self.start = interpolation_start(c.interpolate_from, self.subject, c.seed)

    def inputs(self) -> dict[str, str | None]:
        c = self.config
        start = c.interpolate_from
        return {
            "weights": fingerprint(self.subject.weights),
            "data": fingerprint(c.data, content=False),
            "interpolate_from": fingerprint(
                interpolation_path(start) if start and start != "init" else start
            ),
        }

    def prepare(self) -> None:
        c = self.config
        self.x, self.y, self.source = load_split(
            c.data, "train", c.train_size, c.seed, self.subject.normalisation
        )
        self.model = copy.deepcopy(self.subject.model).eval()
        self.theta = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        self.dirs = {seed: _load_directions(self.folder / directions_file(seed, c), self.model,
                                            seed) for seed in seeds_of(c)}  # fmt: skip

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = self.config
        return (
            np.linspace(-c.span, c.span, c.points_1d),
            np.linspace(-c.span, c.span, c.grid),
            np.linspace(-0.25, 1.25, c.interpolation_points),
        )

    def measurements(self) -> list[tuple[str, Any]]:
        c, (line, axis, alphas) = self.config, self.axes()
        plan: list[tuple[str, Any]] = []
        for seed in seeds_of(c):
            plan += [(seeded(f"1d:{i}", seed, c), ("1d", (float(a),), seed))
                     for i, a in enumerate(line)]  # fmt: skip
            plan += [
                (seeded(f"2d:{i},{j}", seed, c), ("2d", (float(a), float(b)), seed))
                for i, a in enumerate(axis)
                for j, b in enumerate(axis)
            ]
        if self.start is not None:
            plan += [(f"interpolation:{k}", ("alpha", float(a), None))
                     for k, a in enumerate(alphas)]  # fmt: skip
        return plan

    def measure(self, spec: Any) -> dict[str, Any]:
        kind, where, seed = spec
        c = self.config
        if kind == "alpha":
            assert self.start is not None
            end = self.subject.model.state_dict()
            found = interpolate_at(self.model, self.start, end, where, self.x, self.y, c.batch_size)
            return {"alpha": where, **found}
        dirs = self.dirs[seed][: len(where)]
        found = evaluate_point(self.model, self.theta, dirs, where, self.x, self.y, c.batch_size)
        return {"coords": list(where), **found} | ({"seed": seed} if c.seeds > 1 else {})

    def summarise(self, records: list[dict[str, Any]]) -> Summary:
        c, label, n = self.config, self.subject.label, len(self.y)
        line_axis, axis, _ = self.axes()
        by_kind: dict[str, list[dict]] = {"1d": [], "2d": [], "interpolation": []}
        for r in records:
            by_kind[r["id"].split(":")[0]].append(r)
        result: dict[str, Any] = {"model": self.subject.name, "label": label}
        summary = [CLAIM]
        if c.seeds > 1:
            part, lines, tables, figures = over_seeds(c, label, n, line_axis, axis, by_kind)
            result |= part
            summary += lines
        else:
            line = [{"coord": float(a), "loss": r["loss"], "error": r["error"]}
                    for a, r in zip(line_axis, by_kind["1d"], strict=True)]  # fmt: skip
            result["line"] = line
            figures = [Figure("landscape_1d.png", CAPTION_1D, lambda p: plot_1d(
                line, f"{label}: 1-D slice, {n:,} training images", p))]  # fmt: skip
            tables = {"landscape_1d.csv": line}
        if c.grid and c.seeds == 1:
            loss = np.array([r["loss"] for r in by_kind["2d"]]).reshape(c.grid, c.grid)
            facts = result["surface"] = surface_facts(loss, float(axis[1] - axis[0]))
            tables["landscape_2d.csv"] = [
                {"a": r["coords"][0], "b": r["coords"][1], "loss": r["loss"], "error": r["error"]}
                for r in by_kind["2d"]
            ]
            title = f"{label}: loss on {n:,} training images"
            figures += [
                Figure("landscape_contour.png", CAPTION_CONTOUR,
                       lambda p: plot_2d(axis, loss, title, p, surface=False)),
                Figure("landscape_surface.png", CAPTION_SURFACE,
                       lambda p: plot_2d(axis, loss, title, p, surface=True)),
            ]  # fmt: skip
            summary.append(
                f"Measured on {label}: centre loss {facts['centre_loss']:.3f}, mean loss on the "
                f"grid's edge {facts['edge_mean_loss']:.3f}; "
                f"{100 * facts['nonconvex_fraction']:.0f} % of interior grid points have negative "
                f"curvature along some direction ({100 * facts['central_nonconvex_fraction']:.0f} "
                f"% in the central half); {facts['local_minima']} local minima on the "
                f"{c.grid}×{c.grid} grid."
            )
        if by_kind["interpolation"]:
            rows = [{k: r[k] for k in ("alpha", "loss", "error")} for r in by_kind["interpolation"]]
            result["interpolation"] = tables["interpolation.csv"] = rows
            title = f"{label}: from {c.interpolate_from} (α=0) to these weights (α=1)"
            figures.append(Figure("interpolation.png", CAPTION_INTERPOLATION,
                                  lambda p: plot_1d(rows, title, p, key="alpha")))  # fmt: skip
            bumps = sum(
                1
                for a, b, d in zip(rows, rows[1:], rows[2:], strict=False)
                if b["loss"] > max(a["loss"], d["loss"]) and 0 <= b["alpha"] <= 1
            )
            summary.append(
                f"Interpolation from {c.interpolate_from}: the loss has {bumps} "
                "local maxima between α=0 and α=1."
            )
        summary.append(
            "Relation: the paper compares nets of one depth with and without skips; read "
            "this run next to its twin's (same directions seed, same images)."
        )
        result["summary"] = summary
        text = {"data.txt": f"{self.source} ({n:,} images, no augmentation)\n"}
        return Summary(result, tables, text, figures)


run_landscape = Landscape.run
