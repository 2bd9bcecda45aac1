"""``resnetlab demo``: the classic experiments, small enough for a laptop CPU, in one report.

The demo is a list of studies: the comparison table, the gradient-flow check (the seed's
10/20-block MLPs and conv nets at initialisation) and a short degradation run on synthetic
shapes made on the spot, each run into a sub-folder (one measurement of the demo each), then
rendered as one report. Nothing is downloaded unless ``data`` names a data set to fetch. With
CIFAR-10 data and CIFAR-10 ResNet weights in the weights cache (``$RESNETLAB_HOME/weights``), a
fourth part studies a trained net: a lesion on a test subsample and a 1-D loss landscape;
without them the report says what it left out.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..console import say
from ..download import resnetlab_home
from ..groups import DataSettings, SeedSettings
from ..settings import Default, check_settings, compose, setting
from .compare import DEFAULT_MODELS as COMPARE_MODELS
from .compare import Compare, CompareConfig
from .degradation import Degradation, DegradationConfig
from .gradient_flow import GradientFlow, GradientFlowConfig
from .landscape import Landscape, LandscapeConfig
from .lesion import Lesion, LesionConfig
from .runner import Study, Summary, run_study, status

DEMO_BUDGET = 300  # iterations per net in the demo's degradation run
QUICK_BUDGET = 4
TRAINED_MODELS = ("resnet20", "resnet32", "resnet44", "resnet56")  # CIFAR-10 weights looked for
WEIGHT_SUFFIXES = (".th", ".pt", ".pth", ".safetensors")


@dataclass
@compose(DataSettings, DegradationConfig, SeedSettings, CompareConfig,
         only=("data", "budget", "seed", "speed"),
         defaults={"data": "synthetic",
                   "budget": Default(None, "the demo's short one")})  # fmt: skip
class DemoConfig:
    """Settings of one demo (written to config.json); the parts' settings follow from them:
    ``budget`` is the degradation run's, ``speed`` the comparison table's."""

    quick: bool = setting(False, "tiny settings (a smoke test)")

    if TYPE_CHECKING:  # added by compose (this block never runs)
        data: str = setting()
        budget: int | None = setting()
        seed: int = setting()
        speed: bool = setting()


def compare_config(config: DemoConfig) -> CompareConfig:
    models = ["vgg11", "resnet18"] if config.quick else list(COMPARE_MODELS)
    return CompareConfig(
        models=models, speed=config.speed, batch_size=2, timing_iters=2, timing_warmup=1
    )


def gradient_flow_config(config: DemoConfig) -> GradientFlowConfig:
    models = ["mlp10", "mlp20", "plain20", "resnet20"]
    if not config.quick:
        models += ["plain56", "resnet56"]
    return GradientFlowConfig(models=models, seeds=1 if config.quick else 2, seed=config.seed,
                              batch_size=4 if config.quick else 8)  # fmt: skip


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
        image_size=16 if synthetic else None,
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


def trained_part(config: DemoConfig) -> tuple[list[tuple[str, Study]], str]:
    """Lesion (1,000 test images) and 1-D landscape (500 training images) of a cached CIFAR-10
    ResNet; or no studies and the reason they were left out."""
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
    points = 7 if config.quick else 21
    land = LandscapeConfig(model=model, pretrained=str(path), data=config.data,
                           train_size=small // 2, points_1d=points, grid=0)  # fmt: skip
    return [("lesion", Lesion(lesion)), ("landscape", Landscape(land))], (
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


class Demo(Study):
    """The list of studies above, each a measurement: run into its sub-folder and timed."""

    settings = DemoConfig
    name = "demo"

    def check(self) -> None:
        c = self.config
        self.parts: list[tuple[str, str, Study]] = [
            ("compare", "comparison table", Compare(compare_config(c))),
            ("gradient-flow", "gradient flow at initialisation",
             GradientFlow(gradient_flow_config(c))),
            ("degradation", f"degradation, {degradation_config(c).budget} iterations per net on "
             f"{c.data}", Degradation(degradation_config(c))),
        ]  # fmt: skip
        trained, self.trained_note = trained_part(c)
        self.parts += [(n, "trained networks (cached CIFAR-10 weights)", s) for n, s in trained]
        for _, _, part in self.parts:  # every part's input, before any of them runs
            part.progress = self.progress
            check_settings(part.config)
            part.check()

    def measurements(self) -> list[tuple[str, Any]]:
        return [(name, (i, label, part)) for i, (name, label, part) in enumerate(self.parts, 1)]

    def measure(self, spec: Any) -> dict[str, Any]:
        i, label, part = spec
        say(f"demo [{i}/{len(self.parts)}] {label}")
        started = time.perf_counter()
        run_study(part, self.folder / part.name, resume=True)
        return {"seconds": time.perf_counter() - started}

    def finished(self, record: dict[str, Any]) -> bool:
        return status(self.folder / record["id"]) == "completed"

    def summarise(self, records: list[dict[str, Any]]) -> Summary:
        c, took = self.config, {r["id"]: r["seconds"] for r in records}
        trained = sum(took.get(n, 0.0) for n in ("lesion", "landscape"))
        timings = {"compare_s": took["compare"], "gradient_flow_s": took["gradient-flow"],
                   "degradation_s": took["degradation"], "trained_s": trained,
                   "total_s": sum(took.values())}  # fmt: skip
        summary = [
            f"Demo on {c.data} data; wall time {timings['total_s']:.0f} s; machine and versions "
            "at the end.",
            f"Comparison table {took['compare']:.0f} s, gradient flow {took['gradient-flow']:.0f}"
            f" s, degradation run {took['degradation']:.0f} s, trained networks {trained:.0f} s.",
            self.trained_note,
        ]
        if c.data == "synthetic":
            summary.append(
                "The degradation run uses synthetic shapes (16 px, made on the spot) and a few "
                "hundred iterations: it shows the method, not the paper's result. Run "
                "'resnetlab degradation --data cifar10' for the real experiment."
            )
        verdict = demo_verdict(self.report_folders()[1:])
        return Summary({"timings": timings, "verdict": verdict, "summary": summary})

    def report_folders(self) -> list[Path]:
        """The demo, then its parts with the degradation claims first (the verdict's order)."""
        order = ["degradation", "gradient-flow", "compare", "lesion", "landscape"]
        names = [n for n in order if any(n == name for name, _, _ in self.parts)]
        return [self.folder, *(self.folder / n for n in names)]


run_demo = Demo.run
