"""Training: one config dataclass, named recipes, and one loop shared by every experiment.

``train(TrainConfig(...))`` writes a run folder (``config.json``, ``run.json``,
``metrics.jsonl``, ``metrics.csv``, ``last.pt``, ``best.pt``) that is all a later report needs.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import RECIPES, TrainConfig, recipe_config
from .engine import Callback, TrainingDiverged, TrainResult, TrainState, train
from .evaluation import evaluate
from .optim import EMA, build_optimizer, default_param_groups, lr_at

__all__ = [
    "EMA", "RECIPES", "Callback", "TrainConfig", "TrainResult", "TrainState", "TrainingDiverged",
    "build_optimizer", "default_param_groups", "evaluate", "load_checkpoint", "lr_at",
    "recipe_config", "save_checkpoint", "train",
]  # fmt: skip
