"""The learning-rate range test (Smith 2015; fastai's ``lr_find``), run on the training engine.

The engine trains for ``iters`` steps with a constant schedule while a hook raises every
parameter group's base lr exponentially from ``start`` to ``end`` (keeping the groups' ratios)
and reads the loss of each step; it stops once the smoothed loss exceeds 4x its minimum.
No second training loop: the sweep is an engine run plus this hook.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..console import say
from ..errors import ResnetlabError
from ..evaluation.plots import plot_lr_find
from ..files import write_json
from ..train import Callback, TrainingDiverged, train
from ..transfer import freeze, param_groups
from . import prepare
from .build import build_model, weights_source
from .finetune import check_nothing_frozen, engine_config
from .options import FinetuneOptions

BETA = 0.98  # smoothing of the loss, as fastai
DIVERGE = 4.0  # stop when the smoothed loss exceeds this multiple of its minimum


@dataclass
class LrFindResult:
    """The swept learning rates, the smoothed losses, and the suggested learning rates."""

    lrs: list[float]
    losses: list[float]
    suggestions: dict[str, float]
    stopped_early: bool


class LrSweep(Callback):
    """Sets each step's lr (exponential from ``start`` to ``end``) and records the loss."""

    def __init__(self, start: float, end: float, iters: int) -> None:
        self.start, self.end, self.iters = start, end, iters
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.average, self.best, self.stopped = 0.0, math.inf, False

    def lr(self, i: int) -> float:
        return self.start * (self.end / self.start) ** (i / max(1, self.iters - 1))

    def _set(self, state: Any, i: int) -> None:
        for group, ratio in zip(state.optimizer.param_groups, self.ratios, strict=True):
            group["base_lr"] = ratio * self.lr(i)  # the engine sets lr = base_lr x schedule (1)

    def on_start(self, state: Any) -> None:
        self.ratios = [g["base_lr"] / state.config.lr for g in state.optimizer.param_groups]
        self._set(state, state.step)

    def on_step(self, state: Any) -> None:
        self._set(state, state.step)

    def on_log(self, state: Any, record: dict[str, Any]) -> None:
        i = record["step"] - 1
        self.average = BETA * self.average + (1 - BETA) * record["loss"]
        smooth = self.average / (1 - BETA ** (i + 1))
        self.lrs.append(self.lr(i))
        self.losses.append(smooth)
        self.best = min(self.best, smooth)
        if not math.isfinite(smooth) or (i > 10 and smooth > DIVERGE * self.best):
            self.stopped, state.stop = True, True


def suggest(lrs: list[float], losses: list[float]) -> dict[str, float]:
    """``steepest``: the lr where the smoothed loss falls fastest (per log-lr) before its
    minimum, ignoring the first tenth of the sweep (the average is still warming up);
    ``min/10``: a tenth of the lr at the lowest loss."""
    if len(lrs) < 5:
        raise ResnetlabError("the sweep ended after fewer than 5 steps; lower --start-lr.")
    skip = max(1, len(lrs) // 10)
    index = min(range(skip, len(losses)), key=losses.__getitem__)
    ends = range(skip, max(skip + 1, min(index, len(lrs) - 2)))
    slopes = {i: (losses[i + 1] - losses[i - 1]) / math.log(lrs[i + 1] / lrs[i - 1]) for i in ends}
    steepest = min(slopes, key=slopes.__getitem__)
    return {"steepest": lrs[steepest], "min/10": lrs[index] / 10}


def lr_find(
    options: FinetuneOptions,
    *,
    iters: int = 100,
    start: float = 1e-7,
    end: float = 10.0,
    phase: str = "full",
) -> LrFindResult:
    """Sweep the lr for the phase-2 model (``phase="full"``) or the head alone (``"head"``);
    writes ``lr_find.json`` and ``lr_find.png`` (and the engine's records in ``sweep/``)."""

    if not 0 < start < end or iters < 5:
        raise ResnetlabError("need 0 < --start-lr < --end-lr and at least 5 iterations.")
    out = Path(options.out_dir)
    if (out / "sweep").exists():
        raise ResnetlabError(f"{out} already holds a sweep; choose another --out.")
    options.pretrained = weights_source(options.pretrained, options.model)
    bundle, _ = prepare.open_finetune_data(
        options.data, options.val_size, options.seed, options.on_bad
    )
    model, prep, _ = build_model(options, bundle)
    data = prepare.prepare_bundle(bundle, prep)
    data.val = data.test = None
    if phase == "head":
        freeze(model, None, options.bn)
    elif options.freeze:
        if not options.pretrained:
            check_nothing_frozen(options.freeze)
        freeze(model, list(options.freeze), options.bn)
    mult = options.lr_mult if options.lr_mult is not None else (0.4 if options.pretrained else 1.0)
    groups = param_groups(model, 1.0, decay=options.decay, lr_mult=1.0 if phase == "head" else mult)
    batch = min(options.batch_size, len(data.train))
    config = engine_config(
        options, 1.0, 1, len(data.train) // batch, batch, prep, None, out / "sweep"
    )
    config = config.replace(
        max_iters=iters,
        epochs=None,
        schedule="constant",
        log_every=1,
        eval_every=iters,
        eval_splits=(),
        checkpoint_every=iters,
        resume=False,
    )
    sweep = LrSweep(start, end, iters)
    say(f"lr range test: {iters} steps from {start:g} to {end:g} ({phase} model)")
    try:
        train(config, model=model, data=data, callbacks=[sweep], param_groups=groups,
              artifact=False)
    except TrainingDiverged:
        sweep.stopped = True  # a NaN loss ends the sweep; the steps before it count
    (out / "sweep" / "last.pt").unlink(missing_ok=True)  # a sweep's weights are of no use
    result = LrFindResult(sweep.lrs, sweep.losses, suggest(sweep.lrs, sweep.losses), sweep.stopped)
    suggested = ", ".join(f"{k} {v:.3g}" for k, v in result.suggestions.items())
    nan = ", stopped at a NaN loss" if result.stopped_early else ""
    lines = [f"Suggested lr ({phase} model, {len(result.lrs)} steps from {start:g} to {end:g}"
             f"{nan}): {suggested or 'none'}."]  # fmt: skip
    write_json(
        out / "lr_find.json",
        {**dataclasses.asdict(result), "options": dataclasses.asdict(options), "phase": phase,
         "summary": lines},
    )  # fmt: skip
    plot_lr_find(result.lrs, result.losses, result.suggestions, out / "lr_find.png")
    print(
        "suggested lr: "
        + json.dumps({k: float(f"{v:.3g}") for k, v in result.suggestions.items()})
        + f" (plot: {out / 'lr_find.png'})"
    )
    return result
