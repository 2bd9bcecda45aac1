"""``resnetlab train``: train a model from a recipe, flags overriding the recipe's values.

Every ``TrainConfig`` field is a flag (``max_iters`` is ``--max-iters``, a bool ``--compile`` /
``--no-compile``), built by ``cli/flags.py``. Values are checked after parsing, so a bad value is
one line naming the flag and the fix, with exit status 2.
Multi-GPU: ``torchrun --nproc-per-node=G -m resnetlab.cli train ...`` (global batch and lr).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ..errors import ResnetlabError
from ..train.config import RecipeSettings, TrainConfig, recipe_config, with_overrides
from .flags import add_settings, given_settings, settings_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model; writes a run folder with metrics and checkpoints",
        description=__doc__.split("\n\n")[0],
    )
    add_settings(p, RecipeSettings)
    add_settings(p, TrainConfig, required=("out_dir",))  # the run folder is --out
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from ..train import train

    recipe = settings_from_args(RecipeSettings, args).recipe
    overrides = parse_overrides(args)
    out = Path(args.out_dir)
    saved = out / "config.json"
    resume = overrides.pop("resume", False)
    if resume and not (out / "last.pt").is_file():
        raise ResnetlabError(
            f"nothing to resume in {out}: it holds no checkpoint (last.pt); drop --resume to "
            "start a new run there."
        )
    if resume and saved.is_file() and recipe is None:
        values = json.loads(saved.read_text())
        values.pop("resolved", None)
        values = with_overrides(values, overrides)  # a new length replaces the saved one
        config = TrainConfig.from_dict({**values, "out_dir": str(out), "resume": True})
    else:
        config = recipe_config(recipe, **overrides, out_dir=str(out), resume=resume)
    result = train(config)
    shown = {k: v for k, v in result.metrics.items() if "error" in k}
    print(" ".join(f"{k} {100 * v:.2f}%" for k, v in shown.items()))
    print(f"run folder: {out.resolve()} ({result.steps} iterations)")
    if os.environ.get("RANK", "0") == "0":  # under torchrun, the first process writes it
        _report(config, result, out)
    return 0


def _report(config: TrainConfig, result: Any, out: Path) -> None:
    """Per-class metrics of the best checkpoint on the test split, then the run's report."""
    from ..evaluation.predictions import split_predictions
    from ..reports.report import render_report
    from ..train.trackers import attach_report

    facts = split_predictions(config, result.model, out)
    if facts is not None:
        print(f"{facts['split']} ({facts['checkpoint']}): accuracy "
              f"{100 * facts['accuracy']:.2f}%, macro F1 {facts['macro_f1']:.4f}; per class "
              f"in {out / 'per_class.json'}")  # fmt: skip
    html_path, _ = render_report([out])
    attach_report(out)  # the report into the run's MLflow run, when it logs to one
    print(f"report: {html_path.resolve()}")


def parse_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line, converted to the config's types (the run
    folder, ``--out``, apart)."""
    return {k: v for k, v in given_settings(args, TrainConfig).items() if k != "out_dir"}
