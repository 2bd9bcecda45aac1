"""The degradation experiment (He et al. 2015, Fig. 1 and Fig. 6): plain vs residual by depth.

Every net is one run of the training engine in its own sub-folder (resumable). The results are
the curves the engine logged (running training error on augmented batches, test error at each
evaluation), the final errors, and a verdict on the paper's two claims computed from them:
(1) the deeper plain net has the higher training error; (2) the deeper ResNet has the lower
training and test error.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..console import say
from ..data import open_data, split_val
from ..data.synthetic import make_shapes, resize_split, subsample
from ..errors import ResnetlabError
from ..files import write_text_atomic
from ..groups import ImageSizeSettings, SeedsSettings, SubsampleSettings, check_device
from ..models import CifarResNet, create_model, list_models, model_info
from ..reports.findings import degradation_findings
from ..settings import Default, check_settings, compose, setting
from ..train import TrainingDiverged, recipe_config, train
from ..train.config import (
    DEFAULT_ITERS,
    RecipeSettings,
    TrainConfig,
    check_trackers,
    tracker_names,
)
from .degradation_curves import (
    FINAL_WINDOW,
    SPLITS,
    by_net,
    display,
    final_errors,
    final_row,
    net_name,
    plot_degradation,
    read_curves,
    seed_row,
    verdict,
)
from .inputs import DepthSettings, check_data
from .runner import Figure, Study, Summary, fingerprint, status
from .seeded import seeds_of
from .variants import DEFAULT_VARIANTS, VARIANTS, arm_kind, arm_options, base_kind, check_variants

FAMILIES = {"cifar": [20, 32, 44, 56], "imagenet": [18, 34]}
DEFAULT_SIZE = {"cifar": 32, "imagenet": 64}


# Engine settings degradation sets for each net itself: the net, its length and schedule (from
# the budget), where it writes, and the data (opened once for all nets).
PER_NET = ("model", "model_options", "pretrained", "max_iters", "epochs", "milestones",
           "checkpoint_every", "log_every", "out_dir", "resume", "progress",
           "data_root")  # fmt: skip


@dataclass
@compose(RecipeSettings, TrainConfig, SeedsSettings, DepthSettings, ImageSizeSettings,
         SubsampleSettings, exclude=PER_NET, unset="the recipe's", defaults={
    "depths": Default(list(FAMILIES["cifar"]), "20 32 44 56, or 18 34 for --family imagenet"),
    "recipe": "he2015-cifar", "data": "cifar10", "seed": 0, "seeds": 1,
    "eval_every": Default(None, "budget / 20"),
    "image_size": Default(None, "as stored; 64 for --family imagenet"),
    "train_size": Default(None, "all"), "eval_size": Default(None, "all, of val and test"),
})  # fmt: skip
class DegradationConfig:
    """Settings of one degradation experiment (written to config.json). Its own fields below;
    every other ``TrainConfig`` setting is added by ``compose`` and, where given, overrides the
    recipe in each net's run (unset: the recipe's value), so a new engine setting reaches it."""

    family: str = setting("cifar", "CIFAR nets (6n+2 layers) or ImageNet-style 18/34",
                          choices=tuple(FAMILIES))  # fmt: skip
    budget: int | None = setting(None, "iterations per net; the recipe's lr milestones are "
                                 "scaled to it", ">= 1")  # fmt: skip
    variants: list[str] = setting(
        help="arms: plain, resnet, plain-dirac (Dirac init), resnet-scale (zero residual "
        "scale); default plain,resnet", choices=tuple(VARIANTS),
        factory=lambda: list(DEFAULT_VARIANTS),
    )  # fmt: skip

    if TYPE_CHECKING:  # added by compose (this block never runs): the ones read here
        __composed__: ClassVar[tuple[str, ...]]
        recipe: str = setting()
        data: str = setting()
        seed: int = setting()
        seeds: int = setting()
        batch_size: int | None = setting()
        lr: float | None = setting()
        device: str | None = setting()
        eval_every: int | None = setting()
        val_size: int | float | None = setting()
        log: tuple[str, ...] | None = setting()
        depths: list[int] = setting()
        image_size: int | None = setting()
        train_size: int | None = setting()
        eval_size: int | None = setting()

    def __post_init__(self) -> None:
        check_settings(self)
        if isinstance(self.log, str):
            self.log = tracker_names(self.log)
        check_trackers(self.log or ())
        check_device(getattr(self, "device", None) or "auto")

    def engine_settings(self) -> dict[str, Any]:
        """The engine settings given for every net's run (those left unset are the recipe's)."""
        engine = {f.name for f in dataclasses.fields(TrainConfig)}
        values = {name: getattr(self, name) for name in self.__composed__ if name in engine}
        return {name: value for name, value in values.items() if value is not None}


def registered(family: str, name: str) -> bool:
    """Whether the registry has ``name`` as a net of this family: the CIFAR stem for
    ``cifar``, an ImageNet stem and basic or bottleneck blocks for ``imagenet``."""
    if name not in list_models():
        return False
    info = model_info(name)
    if family == "cifar":
        return info.cifar_stem
    return not info.cifar_stem and info.block in ("basic", "bottleneck")


def build_net(family: str, kind: str, depth: int, num_classes: int, in_channels: int) -> nn.Module:
    """``plainN``/``resnetN`` from the registry; CIFAR depths it lacks (6n+2) built directly."""
    name, options = net_name(base_kind(kind), depth), arm_options(kind)
    if registered(family, name) or family == "imagenet":
        return create_model(name, num_classes=num_classes, in_channels=in_channels, **options)
    skip = base_kind(kind) == "residual"
    model = CifarResNet(depth, num_classes, in_channels=in_channels, skip=skip, **options)
    # The facts of the registered 20-layer net of the same kind, at this depth.
    model.info = dataclasses.replace(  # type: ignore[assignment]  # any attribute may be set
        model_info("resnet20" if skip else "plain20"), name=name, depth=depth,
        input_size=(in_channels, 32, 32), num_classes=num_classes,
        builder=lambda **o: CifarResNet(depth, skip=skip, **o),
    )  # fmt: skip
    return model


def check_config(config: DegradationConfig, recipe_iters: int | None) -> None:
    """Refuse settings that cannot make the experiment, naming the fix."""
    check_settings(config)
    check_variants(config.variants)
    if len(set(config.depths)) < 2:
        raise ResnetlabError("the claims compare depths: pass at least two, e.g. --depths 20 56.")
    if config.family == "cifar":
        bad = [d for d in config.depths if d < 8 or (d - 2) % 6]
        if bad:
            raise ResnetlabError(f"CIFAR nets have 6n+2 layers (8, 14, 20, ...), not {bad[0]}.")
    for depth in config.depths if config.family == "imagenet" else []:
        if not registered("imagenet", net_name("plain", depth)):
            raise ResnetlabError(
                f"no ImageNet-style plain{depth}. Use --depths from 18 34 50 101 152, "
                "or --family cifar."
            )
    if recipe_iters is None:
        raise ResnetlabError(
            f"recipe {config.recipe} counts epochs; use one counted in iterations."
        )


def scaled_milestones(milestones: tuple[int, ...], recipe_iters: int, budget: int) -> list[int]:
    """The recipe's milestones moved in proportion to a shorter (or longer) budget."""
    return [max(1, round(m * budget / recipe_iters)) for m in milestones]


def open_bundle(config: DegradationConfig, val_size: int | float | None) -> Any:
    """The data for every run: opened once, subsampled and resized as the config says."""

    size = config.image_size or (DEFAULT_SIZE["imagenet"] if config.family == "imagenet" else None)
    if config.data == "synthetic":
        n = config.train_size or 5000
        return make_shapes(n, max(10, n // 10), max(10, n // 5), size=size or 32, seed=config.seed)
    bundle = open_data(config.data, seed=config.seed)
    if bundle.val is None and val_size:  # the recipe's held-out val, at most a tenth of train
        count = val_size if isinstance(val_size, float) else min(val_size, len(bundle.train) // 10)
        bundle.train, bundle.val = split_val(bundle.train, count, config.seed)
    bundle.train = subsample(bundle.train, config.train_size, config.seed)
    bundle.val = subsample(bundle.val, config.eval_size, config.seed)
    bundle.test = subsample(bundle.test, config.eval_size, config.seed)
    if size is None and not hasattr(bundle.train, "images"):
        size = DEFAULT_SIZE["cifar"]
    if size is not None:
        for name in ("train", "val", "test"):
            setattr(bundle, name, resize_split(getattr(bundle, name), size))
        bundle.image_size = (size, size)
    return bundle


def _budget_banner(iterations: int, recipe_iters: int, milestones: list[int]) -> str | None:
    if iterations >= recipe_iters:
        return None
    scaled = f" (lr milestones scaled to {', '.join(f'{m:,}' for m in milestones)})"
    scaled = scaled if milestones else ""
    return (
        f"short budget: {iterations:,} of {recipe_iters:,} iterations{scaled}; the paper's claims "
        "are about full training."
    )


class Degradation(Study):
    """The plain and residual net of every depth, each trained into its own sub-folder (one net
    a measurement, taken again on resume until its run completed)."""

    settings = DegradationConfig
    name = "degradation"
    grows = ("seeds",)

    def check(self) -> None:
        c = self.config
        self.base = recipe_config(c.recipe)
        self.recipe_iters = self.base.max_iters or DEFAULT_ITERS  # recipes count iterations
        check_config(c, self.recipe_iters)
        if c.data != "synthetic":
            check_data(c.data)
        self.iterations = c.budget or self.recipe_iters
        at = self.base.milestones_at(self.recipe_iters)
        self.milestones = scaled_milestones(at, self.recipe_iters, self.iterations)
        if self.base.schedule != "multistep":
            self.milestones = []

    def inputs(self) -> dict[str, str | None]:
        return {"data": fingerprint(self.config.data, content=False)}

    def prepare(self) -> None:
        c, iterations = self.config, self.iterations
        self.bundle = open_bundle(c, c.val_size if c.val_size is not None else self.base.val_size)
        sources = [f"  {n}: {getattr(self.bundle, n).source}" for n in SPLITS
                   if getattr(self.bundle, n)]  # fmt: skip
        write_text_atomic(self.folder / "data.txt", "\n".join([self.bundle.summary(), *sources])
                          + "\n")  # fmt: skip
        eval_every = c.eval_every or max(1, iterations // 20)
        self.schedule = {
            "max_iters": iterations, "milestones": tuple(self.milestones),
            "eval_every": eval_every, "checkpoint_every": eval_every,
            "log_every": max(1, min(100, iterations // 100)), "log": tuple(c.log or ()),
        }  # fmt: skip

    def measurements(self) -> list[tuple[str, Any]]:
        """Every net of every seed, seed by seed (so the first seed's picture comes first). The
        first seed's folders are the nets' names (``plain20``), the others' add ``-seedK``, so
        a finished run resumed with more ``--seeds`` trains only the new seeds."""
        c = self.config
        kinds = [arm_kind(v) for v in c.variants]
        nets = [(k, d, s) for s in seeds_of(c) for k in kinds for d in sorted(set(c.depths))]
        return [(self.folder_name(k, d, s), (i, len(nets), k, d, s))
                for i, (k, d, s) in enumerate(nets, 1)]  # fmt: skip

    def folder_name(self, kind: str, depth: int, seed: int) -> str:
        return net_name(kind, depth) + (f"-seed{seed}" if seed != self.config.seed else "")

    def measure(self, spec: Any) -> dict[str, Any]:
        i, count, kind, depth, seed = spec
        name = self.folder_name(kind, depth, seed)
        folder = self.folder / name
        if status(folder) != "completed":
            seeded = f", seed {seed}" if self.config.seeds > 1 else ""
            say(f"degradation [{i}/{count}] {display(kind, depth)}{seeded}: "
                f"{self.iterations:,} iterations -> {folder}")  # fmt: skip
            _train_net(self.config, kind, depth, seed, self.bundle, self.schedule, folder,
                       self.resume, self.progress)  # fmt: skip
        curves = read_curves(folder)
        return {"kind": kind, "depth": depth, "seed": seed, "status": status(folder),
                "folder": name, "curves": curves,
                **final_errors(curves, self.iterations)}  # fmt: skip

    def finished(self, record: dict[str, Any]) -> bool:
        return status(self.folder / record["folder"]) == "completed"

    def summarise(self, records: list[dict[str, Any]]) -> Summary:
        results = {r["id"]: {k: v for k, v in r.items() if k != "id"} for r in records}
        return summary_of(self.config, results, self.iterations, self.recipe_iters,
                          self.milestones)  # fmt: skip


run_degradation = Degradation.run


def _train_net(config: DegradationConfig, kind: str, depth: int, seed: int, bundle: Any,
               schedule: dict, folder: Path, resume: bool, progress: bool) -> None:  # fmt: skip
    """One engine run of one net: the recipe, with the budget's schedule and this seed (of the
    initialisation, order and augmentation; the split stays the config's), into ``folder``."""

    name = net_name(kind, depth)
    values = {**config.engine_settings(), "seed": seed, "out_dir": str(folder), "resume": resume,
              "progress": progress, **schedule}  # fmt: skip
    train_config = (
        recipe_config(config.recipe, model=name, **values)
        if registered(config.family, name) and not arm_options(kind)  # recipe's deep warm-up
        else recipe_config(config.recipe, **values).replace(model=name)
    )
    torch.manual_seed(seed)
    model = build_net(config.family, kind, depth, len(bundle.classes), bundle.in_channels)
    try:
        train(train_config, model=model, data=bundle)
    except TrainingDiverged as exc:  # recorded in its run.json; the other nets still run
        say(f"{display(kind, depth)}: {exc}")


def summary_of(
    config: DegradationConfig,
    results: dict[str, dict[str, Any]],
    iterations: int,
    recipe_iters: int,
    milestones: list[int],
) -> Summary:
    """degradation.json (curves, finals, verdict, summary), degradation.csv and .png."""
    nets = by_net(results)
    claims = verdict(nets)
    banner = _budget_banner(iterations, recipe_iters, milestones)
    summary = [banner] if banner else []
    if len(claims) == 2:
        gaps = [
            f"{c['label'][0]} minus {c['label'][1]} {100 * c['train_gap']:+.1f}" for c in claims
        ]
        summary.append(f"Cost of depth in final training error (points): {'; '.join(gaps)}.")
    if config.seeds > 1:
        summary.append(f"Each net trained with {config.seeds} seeds ({config.seed} to "
                       f"{config.seed + config.seeds - 1}; the split stays seed {config.seed}'s): "
                       "errors are means, and a claim holds only where the 95 % interval of "
                       "the difference excludes zero.")  # fmt: skip
    for r in results.values():
        if r["status"] != "completed":
            summary.append(f"{display(r['kind'], r['depth'])} did not complete ({r['status']}).")
    summary.append(
        f"Final training error: running error on augmented training batches, mean over the "
        f"last {100 * FINAL_WINDOW:.0f} % of iterations; val/test error: the last evaluation."
    )
    if config.eval_size:
        summary.append(f"val and test errors on stratified subsamples of {config.eval_size:,}.")
    order = sorted(results.values(), key=lambda r: (r["kind"], r["depth"], r.get("seed") or 0))
    rows = [final_row(r) for r in order]
    tables: dict[str, list[dict[str, Any]]] = {"degradation.csv": rows}
    if config.seeds > 1:
        seed_rows = [
            seed_row(n) for n in sorted(nets.values(), key=lambda n: (n["kind"], n["depth"]))
        ]
        tables["degradation-seeds.csv"] = seed_rows
    result = {
        "family": config.family,
        "iterations": iterations,
        "recipe": config.recipe,
        "recipe_iterations": recipe_iters,
        "milestones": milestones,
        "short_budget": banner is not None,
        "banner": banner,
        "runs": results,
        "finals": rows,
        "seeds": config.seeds,
        "over_seeds": seed_rows if config.seeds > 1 else None,
        "verdict": claims,
        "findings": degradation_findings(claims, iterations, recipe_iters),
        "summary": summary,
    }
    depths = "/".join(str(d) for d in sorted(set(config.depths)))
    title = f"Training (dashed) and test (bold) error, {config.family} nets {depths}, "
    title += Path(config.data).name + (f"\n{banner}" if banner else "")
    figure = Figure("degradation.png", CAPTION, lambda p: plot_degradation(results, title, p))
    return Summary(result, tables, figures=[figure])


CAPTION = (
    "He et al. 2015, Fig. 1/6: training error (dashed, running error on augmented batches) and "
    "test error (bold) against iterations, plain and residual nets of each depth."
)
