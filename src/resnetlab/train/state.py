"""What the loop's hooks see and what a run returns: ``TrainState``, ``Callback``, the result.

A leaf module, so the preparation (``setup``) and the loop (``engine``) can both use them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ResnetlabError
from .config import TrainConfig
from .distributed import Dist
from .optim import EMA


class TrainingDiverged(ResnetlabError):
    """The loss became NaN or Inf; the last good checkpoint is left untouched."""


@dataclass
class TrainResult:
    """Where the run lies, how it ended (final train/eval metrics), and the trained model."""

    out_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    metrics: dict[str, float]
    steps: int
    model: nn.Module | None = field(default=None, repr=False)


@dataclass
class TrainState:
    """What hooks see. ``step`` counts finished updates; set ``stop = True`` to end early."""

    config: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    dist: Dist
    out_dir: Path
    max_iters: int
    batches_per_epoch: int
    step: int = 0
    stop: bool = False
    elapsed_s: float = 0.0
    ema: EMA | None = None
    last_eval: dict[str, float] = field(default_factory=dict)

    @property
    def epoch(self) -> float:
        return self.step / self.batches_per_epoch


class Callback:
    """Hooks into the loop; override what you need. ``on_step`` runs after every update."""

    def on_start(self, state: TrainState) -> None: ...
    def on_step(self, state: TrainState) -> None: ...
    def on_log(self, state: TrainState, record: dict[str, Any]) -> None: ...
    def on_eval(self, state: TrainState, record: dict[str, Any]) -> None: ...
    def on_end(self, state: TrainState, result: TrainResult) -> None: ...
    def on_abort(self, state: TrainState, status: str) -> None:
        """The run stopped before its end (an error, a divergence, Ctrl-C or SIGTERM);
        ``status`` is the one recorded in run.json. What it raises is ignored."""
