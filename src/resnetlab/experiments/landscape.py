"""Loss landscapes (Li, Xu, Taylor, Studer & Goldstein 2018, "Visualizing the Loss Landscape of
Neural Nets"): 1-D and 2-D slices of the training loss along filter-normalised random directions,
and the 1-D interpolation between two sets of weights.

Each direction has one Gaussian entry per weight, rescaled filter by filter to the norm of the
matching filter of the weights (a filter: one output unit of a conv or linear layer); biases and
BatchNorm parameters get zero, as in the paper ("ignore biasbn"). The loss is measured on a fixed
subsample of the training split, without augmentation, BatchNorm in eval mode, on the BN-folded
copy of the net. Finished grid points go to ``points.jsonl`` as they are measured, so an
interrupted grid resumes where it stopped.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..artifact import load_trained
from ..console import Bar, say
from ..errors import ResnetlabError
from ..files import atomic_write, write_json, write_text_atomic
from ..models import create_model
from ..models.inference import optimize_for_inference
from ..settings import setting
from ..weights import load_weights
from . import runs
from .trained import load_split, load_subject

CLAIM = (
    "Li et al. 2018 (§5-6, Fig. 5, published) report that skip connections keep the loss surface "
    "of deep nets smooth and nearly convex around the minimiser, while without them it turns "
    "chaotic as depth grows; their 20-layer net without skips is still fairly smooth, the "
    "56- and 110-layer ones are not."
)


@dataclass
class LandscapeConfig:
    """Settings of one landscape study (written to config.json)."""

    model: str = setting("resnet20", "model name or run folder")
    pretrained: str | None = setting(
        None, "weights for a model name: file, URL or tag (e.g. cifar10)"
    )
    data: str = setting("cifar10", "data set name or path")
    train_size: int = setting(
        2000, "training images (a fixed stratified subsample of the training split)", ">= 1"
    )
    normalisation: str = setting(
        "auto", "input normalisation: auto = a run's own, else ImageNet mean/std",
        choices=("auto", "imagenet", "none"),
    )  # fmt: skip
    seed: int = setting(0, "seed of subsamples and draws", ">= 0")
    span: float = setting(1.0, "coordinates in [-span, span]", "> 0")
    points_1d: int = setting(41, "points of the 1-D slice", ">= 3")
    grid: int = setting(21, "points per 2-D axis; 0: no 2-D slice", ">= 0")
    interpolate_from: str | None = setting(
        None, "also interpolate from these weights: init, a run folder or a file"
    )
    interpolation_points: int = setting(25, "points of the interpolation", ">= 2")
    batch: int = setting(500, "evaluation batch", ">= 1")


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
    folded = optimize_for_inference(model)
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


def _load_directions(path: Path, model: nn.Module, seed: int) -> list[dict]:
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    generator = torch.Generator().manual_seed(seed)
    dirs = [filter_normalised_direction(model, generator) for _ in range(2)]
    with atomic_write(path) as handle:
        torch.save(dirs, handle)
    return dirs


def sweep(
    model: nn.Module,
    theta: dict,
    dirs: list[dict],
    points: list[tuple],
    x,
    y,
    batch: int,
    path: Path,
    desc: str,
    progress: bool,
) -> dict[tuple, dict]:
    """Measure every point (a key and its coordinates) not yet in ``path``; returns all."""
    done = {tuple(r["key"]): r for r in runs.read_jsonl(path)}
    todo = [(k, c) for k, c in points if tuple(k) not in done]
    for key, coords in Bar(todo, desc=desc, unit="pt", disable=not progress, leave=False):
        record = {
            "key": list(key),
            "coords": list(coords),
            **evaluate_point(model, theta, dirs, coords, x, y, batch),
        }
        runs.append_jsonl(path, record)
        done[tuple(key)] = record
    return done


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


def _interpolation_start(spec: str, subject: Any, seed: int) -> dict[str, torch.Tensor]:
    if spec == "init":
        torch.manual_seed(seed)
        return create_model(subject.name).state_dict()
    if Path(spec).is_dir():
        return load_trained(spec).model.state_dict()
    if not Path(spec).is_file():
        raise ResnetlabError(
            f"--interpolate-from {spec}: no such file or run folder. Pass init, "
            "a run folder or a weights file."
        )
    return load_weights(spec)


def interpolate(
    model: nn.Module, start: dict, end: dict, alphas: np.ndarray, x, y, batch: int, progress: bool
) -> list[dict]:
    """Loss and error at (1 - α)·start + α·end, parameters and BN statistics alike; a BN
    variance extrapolated below zero (α outside [0, 1]) is clipped to zero."""
    rows = []
    probe = copy.deepcopy(model)
    for alpha in Bar(alphas, desc="interpolation", disable=not progress, leave=False):
        state = {
            k: (1 - alpha) * start[k].float() + alpha * v.float() if v.is_floating_point() else v
            for k, v in end.items()
        }
        for key in [k for k in state if k.endswith("running_var")]:
            state[key] = state[key].clamp_min(0)
        probe.load_state_dict(state)
        rows.append({"alpha": float(alpha), **loss_and_error(probe, x, y, batch)})
    return rows


def plot_1d(line: list[dict], title: str, path: Path, key: str = "coord") -> Path:
    plt = runs.pyplot()
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
    return runs.save_figure(fig, path)


def plot_2d(axis: np.ndarray, loss: np.ndarray, title: str, folder: Path) -> list[Path]:
    plt = runs.pyplot()
    a, b = np.meshgrid(axis, axis, indexing="ij")
    fig, ax = plt.subplots(figsize=(5, 4.4))
    levels = np.linspace(loss.min(), min(loss.max(), loss.min() + 10), 30)
    contour = ax.contour(a, b, loss, levels=levels, cmap="viridis")
    fig.colorbar(contour, ax=ax, label="training loss")
    ax.set_xlabel("direction 1")
    ax.set_ylabel("direction 2")
    ax.set_title(title, fontsize=9)
    paths = [runs.save_figure(fig, folder / "landscape_contour.png")]
    fig = plt.figure(figsize=(5.5, 4.4))
    ax3 = fig.add_subplot(projection="3d")
    ax3.plot_surface(a, b, np.minimum(loss, loss.min() + 10), cmap="viridis", linewidth=0)
    ax3.set_xlabel("direction 1")
    ax3.set_ylabel("direction 2")
    ax3.set_zlabel("loss")
    ax3.set_title(title, fontsize=9)
    paths.append(runs.save_figure(fig, folder / "landscape_surface.png"))
    return paths


def run_landscape(
    config: LandscapeConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    command: str | None = None,
    progress: bool = True,
) -> tuple[Path, dict]:
    """The slices (and interpolation) of one net; returns (run folder, landscape.json)."""
    if config.points_1d < 3 or config.grid == 1 or config.grid < 0 or config.span <= 0:
        raise ResnetlabError("--points-1d must be at least 3, --grid 0 or at least 2, --span > 0.")
    subject = load_subject(config.model, config.pretrained, config.normalisation, config.seed)
    run_dir = runs.new_run_dir("landscape", out, resume=resume)
    runs.start_run(run_dir, config, command)
    say(f"landscape: run folder {run_dir} (after an interruption: --out {run_dir} --resume)")
    x, y, source = load_split(
        config.data, "train", config.train_size, config.seed, subject.normalisation
    )
    write_text_atomic(run_dir / "data.txt", f"{source} ({len(y):,} images, no augmentation)\n")
    model = copy.deepcopy(subject.model).eval()
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    dirs = _load_directions(run_dir / "directions.pt", model, config.seed)
    axis_1d = np.linspace(-config.span, config.span, config.points_1d)
    done = sweep(
        model,
        theta,
        dirs[:1],
        [((i,), (float(a),)) for i, a in enumerate(axis_1d)],
        x,
        y,
        config.batch,
        run_dir / "points_1d.jsonl",
        "1-D slice",
        progress,
    )
    line = [
        {"coord": float(a), **{k: done[(i,)][k] for k in ("loss", "error")}}
        for i, a in enumerate(axis_1d)
    ]
    label = subject.label
    plot_1d(line, f"{label}: 1-D slice, {len(y):,} training images", run_dir / "landscape_1d.png")
    summary = [CLAIM]
    result: dict[str, Any] = {"model": subject.name, "label": label, "line": line}
    if config.grid:
        axis = np.linspace(-config.span, config.span, config.grid)
        keys = [
            ((i, j), (float(a), float(b))) for i, a in enumerate(axis) for j, b in enumerate(axis)
        ]
        grid = sweep(
            model,
            theta,
            dirs,
            keys,
            x,
            y,
            config.batch,
            run_dir / "points_2d.jsonl",
            f"2-D grid {config.grid}x{config.grid}",
            progress,
        )
        loss = np.array(
            [[grid[(i, j)]["loss"] for j in range(len(axis))] for i in range(len(axis))]
        )
        facts = surface_facts(loss, float(axis[1] - axis[0]))
        result["surface"] = facts
        runs.write_csv(
            run_dir / "landscape_2d.csv",
            [
                {"a": r["coords"][0], "b": r["coords"][1], "loss": r["loss"], "error": r["error"]}
                for r in grid.values()
            ],
        )
        plot_2d(axis, loss, f"{label}: loss on {len(y):,} training images", run_dir)
        summary.append(
            f"Measured on {label}: centre loss {facts['centre_loss']:.3f}, mean loss on the grid's "
            f"edge {facts['edge_mean_loss']:.3f}; {100 * facts['nonconvex_fraction']:.0f} % of "
            f"interior grid points have negative curvature along some direction "
            f"({100 * facts['central_nonconvex_fraction']:.0f} % in the central half); "
            f"{facts['local_minima']} local minima on the {config.grid}×{config.grid} grid."
        )
    if config.interpolate_from:
        start = _interpolation_start(config.interpolate_from, subject, config.seed)
        alphas = np.linspace(-0.25, 1.25, config.interpolation_points)
        rows = interpolate(
            subject.model, start, subject.model.state_dict(), alphas, x, y, config.batch, progress
        )
        result["interpolation"] = rows
        runs.write_csv(run_dir / "interpolation.csv", rows)
        plot_1d(
            rows,
            f"{label}: from {config.interpolate_from} (α=0) to these weights (α=1)",
            run_dir / "interpolation.png",
            key="alpha",
        )
        bumps = sum(
            1
            for a, b, c in zip(rows, rows[1:], rows[2:], strict=False)
            if b["loss"] > max(a["loss"], c["loss"]) and 0 <= b["alpha"] <= 1
        )
        summary.append(
            f"Interpolation from {config.interpolate_from}: the loss has {bumps} "
            "local maxima between α=0 and α=1."
        )
    summary.append(
        "Relation: the paper compares nets of one depth with and without skips; read "
        "this run next to its twin's (same directions seed, same images)."
    )
    result["summary"] = summary
    runs.write_csv(run_dir / "landscape_1d.csv", line)
    write_json(run_dir / "landscape.json", result)
    runs.finish_run(run_dir)
    return run_dir, result
