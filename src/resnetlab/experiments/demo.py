"""``resnetlab demo``: the classic experiments, small enough for a laptop CPU, in one report.

It runs the comparison table, the gradient-flow check (the seed's 10/20-block MLPs and conv
nets at initialisation) and a short degradation run on synthetic shapes made on the spot,
each into a sub-folder, then renders them as one report. Nothing is downloaded unless
``data`` names a data set to fetch. With CIFAR-10 data and CIFAR-10 ResNet weights in the
weights cache (``$RESNETLAB_HOME/weights``), a fourth part studies a trained net: a lesion on a
test subsample and a 1-D loss landscape; without them the report says what it left out.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..console import say
from ..download import resnetlab_home
from ..files import write_json
from ..settings import setting
from . import runs
from .compare import DEFAULT_MODELS as COMPARE_MODELS
from .compare import CompareConfig, run_compare
from .degradation import DegradationConfig, run_degradation
from .gradient_flow import GradientFlowConfig, run_gradient_flow
from .landscape import LandscapeConfig, run_landscape
from .lesion import LesionConfig, run_lesion

DEMO_BUDGET = 300  # iterations per net in the demo's degradation run
QUICK_BUDGET = 4
TRAINED_MODELS = ("resnet20", "resnet32", "resnet44", "resnet56")  # CIFAR-10 weights looked for
WEIGHT_SUFFIXES = (".th", ".pt", ".pth", ".safetensors")


@dataclass
class DemoConfig:
    """Settings of one demo (written to config.json); the parts' settings follow from them."""

    data: str = setting(
        "synthetic", "synthetic (no download), cifar10 (downloads) or a local path such as the "
        "CIFAR-10 JPEG archive",
    )  # fmt: skip
    budget: int | None = setting(
        None, "iterations per net in the degradation run (default: the demo's short one)",
        ">= 1",
    )  # fmt: skip
    seed: int = setting(0, "seed of data split, init and order", ">= 0")
    quick: bool = setting(False, "tiny settings (a smoke test)")
    speed: bool = setting(False, "also time each model in the table")


def compare_config(config: DemoConfig) -> CompareConfig:
    models = ["vgg11", "resnet18"] if config.quick else list(COMPARE_MODELS)
    return CompareConfig(models=models, speed=config.speed, batch=2, iters=2, warmup=1)


def gradient_flow_config(config: DemoConfig) -> GradientFlowConfig:
    models = ["mlp10", "mlp20", "plain20", "resnet20"]
    if not config.quick:
        models += ["plain56", "resnet56"]
    return GradientFlowConfig(models=models, seeds=1 if config.quick else 2, seed=config.seed,
                              batch=4 if config.quick else 8)  # fmt: skip


def degradation_config(config: DemoConfig) -> DegradationConfig:
    """Plain vs ResNet at 8 and 20 layers, batch 64 (the recipe's lr); synthetic 16 px shapes
    by default, else the real data as stored with val/test subsampled to 1,000 images each."""
    budget = config.budget or (QUICK_BUDGET if config.quick else DEMO_BUDGET)
    synthetic = config.data == "synthetic"
    return DegradationConfig(
        data=config.data,
        family="cifar",
        depths=[8, 14] if config.quick else [8, 20],
        budget=budget,
        seed=config.seed,
        batch_size=16 if config.quick else 64,
        input_size=16 if synthetic else None,
        train_size=(200 if config.quick else 3000) if synthetic else None,
        eval_size=None if synthetic else 1000,
        eval_every=max(1, budget // 10),
    )


def cached_cifar_weights() -> tuple[str, Path] | None:
    """The first CIFAR-10 ResNet weights file in the weights cache, e.g. ``resnet20-<hash>.th``."""
    folder = resnetlab_home() / "weights"
    for model in TRAINED_MODELS:
        for path in sorted(folder.glob(f"{model}-*")) if folder.is_dir() else []:
            if path.suffix in WEIGHT_SUFFIXES:
                return model, path
    return None


def _is_cifar10(data: str) -> bool:
    return data == "cifar10" or "cifar10" in Path(data).name and "100" not in Path(data).name


def trained_part(config: DemoConfig, run_dir: Path, common: dict) -> tuple[list[Path], str]:
    """Lesion (1,000 test images) and 1-D landscape (500 training images) of a cached CIFAR-10
    ResNet; or no folders and the reason it was left out."""
    found = cached_cifar_weights()
    if found is None:
        return [], (
            "Left out: the trained-network studies (lesion, loss landscape). No CIFAR-10 ResNet "
            f"weights in {resnetlab_home() / 'weights'}; put e.g. resnet20-12fca82f.th there, or "
            "run 'resnetlab lesion resnet20 --pretrained cifar10' once named weights are served."
        )
    if not _is_cifar10(config.data):
        return [], (
            f"Left out: the trained-network studies; weights {found[1].name} are cached but the "
            "demo's data is not CIFAR-10. Run the demo with --data cifar10 (or the JPEG copy)."
        )
    model, path = found
    small = 200 if config.quick else 1000
    lesion = LesionConfig(models=[model], pretrained=[str(path)], data=config.data,
                          eval_size=small, max_k=1 if config.quick else 3, draws=2)  # fmt: skip
    lesion_dir, _ = run_lesion(lesion, run_dir / "lesion", **common)
    points = 7 if config.quick else 21
    land = LandscapeConfig(model=model, pretrained=str(path), data=config.data,
                           train_size=small // 2, points_1d=points, grid=0)  # fmt: skip
    land_dir, _ = run_landscape(land, run_dir / "landscape", **common)
    return [lesion_dir, land_dir], (
        f"Trained networks: {model} from {path.name}, lesion on {small:,} test images, 1-D "
        f"landscape on {small // 2:,} training images; no 2-D landscape (see loss-landscape)."
    )


def demo_verdict(folders: list[Path]) -> list[str]:
    """The parts' findings in one line each, the degradation claims first: what the lesson
    says, what was measured, and whether it holds."""
    lines = []
    for folder in folders:
        for path in sorted(folder.glob("*.json")):
            if path.name in ("config.json", "run.json"):
                continue
            found = json.loads(path.read_text()).get("findings")
            lines += [f["verdict"] for f in found or [] if isinstance(f, dict) and "verdict" in f]
    return lines


def _timed(label: str, step: int, fn, *args, **kwargs) -> tuple[Any, float]:
    say(f"demo [{step}/4] {label}")
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def run_demo(
    config: DemoConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    command: str | None = None,
    progress: bool = True,
) -> tuple[Path, Path]:
    """Run the three experiments into one folder and render it; returns (folder, report.html)."""
    from ..reports.report import render_report

    degradation = degradation_config(config)
    run_dir = runs.new_run_dir("demo", out, resume=resume)
    runs.start_run(run_dir, config, command)
    say(f"demo: run folder {run_dir} (after an interruption: --out {run_dir} --resume)")
    common = {"resume": resume, "command": command, "progress": progress}
    started = time.perf_counter()
    (compare_dir, _, _), t_compare = _timed(
        "comparison table", 1, run_compare, compare_config(config), run_dir / "compare", **common
    )
    flow_dir, t_flow = _timed(
        "gradient flow at initialisation", 2, run_gradient_flow, gradient_flow_config(config),
        run_dir / "gradient-flow", **common,
    )  # fmt: skip
    (degradation_dir, _), t_degradation = _timed(
        f"degradation, {degradation.budget} iterations per net on {config.data}", 3,
        run_degradation, degradation, run_dir / "degradation", **common,
    )  # fmt: skip
    (trained_dirs, trained_note), t_trained = _timed(
        "trained networks (cached CIFAR-10 weights)", 4, trained_part, config, run_dir, common
    )
    total = time.perf_counter() - started
    summary = [
        f"Demo on {config.data} data; wall time {total:.0f} s"
        f"{' (this resumed session only)' if resume else ''}; machine and versions at the end.",
        f"Comparison table {t_compare:.0f} s, gradient flow {t_flow:.0f} s, "
        f"degradation run {t_degradation:.0f} s, trained networks {t_trained:.0f} s.",
        trained_note,
    ]
    if config.data == "synthetic":
        summary.append(
            "The degradation run uses synthetic shapes (16 px, made on the spot) and a few "
            "hundred iterations: it shows the method, not the paper's result. Run "
            "'resnetlab degradation --data cifar10' for the real experiment."
        )
    timings = {"compare_s": t_compare, "gradient_flow_s": t_flow,
               "degradation_s": t_degradation, "trained_s": t_trained,
               "total_s": total}  # fmt: skip
    verdict = demo_verdict([degradation_dir, flow_dir, compare_dir, *trained_dirs])
    write_json(run_dir / "demo.json", {"timings": timings, "verdict": verdict, "summary": summary})
    runs.finish_run(run_dir)
    parts = [run_dir, degradation_dir, flow_dir, compare_dir, *trained_dirs]  # verdict's order
    html_path, _ = render_report(parts, out=run_dir)
    return run_dir, html_path
