"""``resnetlab finetune | lr-find | predict | evaluate``: adapt a model to new labelled images,
find a learning rate, and use or measure the result.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import runfolder
from ..errors import ResnetlabError
from ..finetune.options import (
    ENGINE_DEFAULTS,
    RENAMED,
    FinetuneOptions,
    resume_settings,
    saved_options,
)
from ..settings import bounded, check_settings, setting
from ..train.distributed import check_device
from .flags import add_renamed, add_settings, flag_name, given_settings, settings_from_args

# FinetuneOptions fields without a flag: the fold is set by cross-validation.
NO_FLAG = ("fold",)
# What fine-tuning's renamed flags are now (the same name meant another thing in `train`).
RENAMED_FLAGS = {
    "lr": "the head's learning rate; --lr is the one learning rate of `train`",
    "epochs": "phase 2's epochs; --epochs is the whole run's length in `train`",
    "class_weights": "inverse-frequency weights; --class-weights gives one weight per class in "
    "`train`",
}


@dataclass
class SweepSettings:
    """The learning-rate range test's sweep (``resnetlab lr-find``)."""

    iters: int = setting(100, "sweep steps", ">= 1")
    start_lr: float = setting(1e-7, "first lr of the sweep", "> 0")
    end_lr: float = setting(10.0, "last lr of the sweep", "> 0")
    phase: str = setting(
        "full", "sweep the unfrozen model or the head alone", choices=("full", "head")
    )

    def __post_init__(self) -> None:
        check_settings(self)


def _add_model_args(p: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """One flag per ``FinetuneOptions`` field (``cli/flags.py``); a flag not given is absent from
    the parsed arguments, so the defaults live in ``FinetuneOptions`` alone. The run folder,
    ``--out``, defaults to runs/<command>-<model>-<time>."""
    add_settings(p, FinetuneOptions, exclude=NO_FLAG + exclude, positional={"data": "DATA"})
    add_renamed(p, {flag_name(old): f"{flag_name(RENAMED[old])} ({why})"
                    for old, why in RENAMED_FLAGS.items()})  # fmt: skip


def _add_on_bad(p: argparse.ArgumentParser, default: str = "error") -> None:
    p.add_argument(
        "--on-bad", choices=("skip", "error"), default=default,
        help=f"unreadable image files: skip them with a warning, or error (default {default})",
    )  # fmt: skip


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The FinetuneOptions values set on the command line, and only those (the data and the
    run folder apart)."""
    given = given_settings(args, FinetuneOptions).items()
    return {k: v for k, v in given if k not in ("data", "out_dir")}


def _options(args: argparse.Namespace, command: str) -> FinetuneOptions:
    given, out = given_options(args), getattr(args, "out_dir", None)
    if getattr(args, "resume", False):
        if not out:
            raise ResnetlabError("--resume needs --out RUN_FOLDER (the run to continue).")
        # the run's own settings, with what was given on top: a change is refused later
        return FinetuneOptions(**{**saved_options(Path(out)), **given, "resume": True,
                                  "data": args.data, "out_dir": out})  # fmt: skip
    model = given.get("model", ENGINE_DEFAULTS["model"])
    out = out or f"runs/{command}-{model}-{time.strftime('%Y%m%d-%H%M%S')}"
    return FinetuneOptions(data=args.data, out_dir=out, **given)


def run_finetune(args: argparse.Namespace) -> int:
    from ..finetune import finetune

    options = _options(args, "finetune")
    if options.folds > 1:
        from ..finetune.folds import cross_validate

        run_dir = cross_validate(options)
    else:
        run_dir = finetune(options).run_dir
    print(f"run folder: {run_dir.resolve()}")
    print(f"report: {(run_dir / 'report.html').resolve()}")
    return 0


def run_lr_find(args: argparse.Namespace) -> int:
    from ..finetune import lr_find
    from ..reports.report import render_report

    options, began, clock = _options(args, "lr-find"), runfolder.now(), time.perf_counter()
    sweep = settings_from_args(SweepSettings, args)
    resume_settings(options, Path(options.out_dir))  # a new folder: lr-find never resumes
    lr_find(options, iters=sweep.iters, start=sweep.start_lr, end=sweep.end_lr, phase=sweep.phase)
    out = Path(options.out_dir)
    runfolder.finish(out, "completed", started=began, wall_time_s=time.perf_counter() - clock,
                     extra={"data": options.data})  # fmt: skip
    print(f"report: {render_report([out])[0].resolve()}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from ..finetune import expand_inputs, load_model, predict_files, render
    from ..finetune.predict import report_failures

    check_device(args.device)
    loaded = load_model(args.source, args.device)
    paths = expand_inputs(args.images)
    if not paths:
        raise ResnetlabError("no image files matched; give files, folders or globs.")
    predictions, failed = predict_files(
        loaded, paths, top_k=args.top_k, batch_size=args.batch_size, tta=args.tta,
        on_bad=args.on_bad,
    )  # fmt: skip
    report_failures(failed)
    fmt = "json" if args.json else "csv" if args.csv else "text"
    if predictions:
        print(render(predictions, fmt))
    if not predictions:
        print("resnetlab predict: error: none of the inputs could be predicted.", file=sys.stderr)
        return 1
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from ..finetune import evaluate_run, format_metrics

    check_device(args.device)
    metrics = evaluate_run(
        args.source,
        args.data,
        split=args.split,
        out=args.out,
        batch_size=args.batch_size,
        tta=args.tta,
        device=args.device,
        on_bad=args.on_bad,
    )
    print(format_metrics(metrics))
    if args.out:
        print(f"metrics and plots: {Path(args.out).resolve()}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a (pretrained) model on labelled images",
        description="Two phases on the training engine: the new head with "
        "the backbone frozen, then the unfrozen model with "
        "per-stage learning rates.",
    )
    _add_model_args(p)
    p.set_defaults(func=run_finetune)

    p = subparsers.add_parser("lr-find", help="learning-rate range test (plot + suggestion)")
    _add_model_args(p, exclude=("resume", "folds", "tta", "threshold", "test_size"))
    add_settings(p, SweepSettings)
    p.set_defaults(func=run_lr_find)

    p = subparsers.add_parser("predict", help="top-k classes for images with a fine-tuned model")
    p.add_argument("source", metavar="RUN_OR_MODEL", help="run folder, or model file + card")
    p.add_argument("images", metavar="IMAGES", nargs="+", help="files, folders or globs")
    p.add_argument("--top-k", type=bounded(int, ">= 1"), default=3, metavar="INT",
                   help="classes shown per image (default 3)")  # fmt: skip
    p.add_argument("--tta", action="store_true", help="average with the mirror image")
    p.add_argument("--batch-size", type=bounded(int, ">= 1"), default=64, metavar="INT",
                   help="images per forward pass (default 64)")  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--json", action="store_true", help="JSON output")
    group.add_argument("--csv", action="store_true", help="CSV output")
    _add_on_bad(p, default="skip")
    p.set_defaults(func=run_predict)

    p = subparsers.add_parser("evaluate", help="all metrics of a fine-tuned model on a split")
    p.add_argument("source", metavar="RUN_OR_MODEL", help="run folder, or model file + card")
    p.add_argument("data", metavar="DATA", help="labelled data (as for finetune)")
    p.add_argument(
        "--split", default="test", choices=("train", "val", "test"),
        help="split to measure (default test); on the run's own data, val and test are the "
        "run's, re-created when it held them out",
    )  # fmt: skip
    p.add_argument("--out", type=Path, help="folder for metrics JSON and plots")
    p.add_argument("--tta", action="store_true", help="average with the mirror image")
    p.add_argument("--batch-size", type=bounded(int, ">= 1"), default=64, metavar="INT",
                   help="images per forward pass (default 64)")  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")
    _add_on_bad(p)
    p.set_defaults(func=run_evaluate)
