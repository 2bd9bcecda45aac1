"""``resnetlab finetune | lr-find | predict | evaluate``: adapt a model to new labelled images,
find a learning rate, and use or measure the result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import runfolder
from ..errors import ResnetlabError
from ..finetune.options import (
    ENGINE_DEFAULTS,
    RENAMED,
    FinetuneOptions,
    resume_settings,
    saved_options,
)
from ..groups import (
    BatchSettings,
    Checked,
    DataSettings,
    DeviceSettings,
    ImagesSettings,
    InferenceSettings,
    OutputSettings,
    PrevalenceSettings,
    RunFolderSettings,
    SplitSettings,
    device_name,
)
from ..settings import REQUIRED, Default, compose, setting
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
class SweepSettings(Checked):
    """The learning-rate range test's sweep (``resnetlab lr-find``)."""

    iters: int = setting(100, "sweep steps", ">= 5")
    start_lr: float = setting(1e-7, "first lr of the sweep", "> 0")
    end_lr: float = setting(10.0, "last lr of the sweep", "> 0")
    phase: str = setting(
        "full", "sweep the unfrozen model or the head alone", choices=("full", "head")
    )


@dataclass(kw_only=True)
@compose(InferenceSettings, ImagesSettings, OutputSettings, BatchSettings, DeviceSettings,
         DataSettings, PrevalenceSettings, exclude=("data", "data_root"), defaults={
             "source": REQUIRED, "images": REQUIRED, "batch_size": 64, "on_bad": "skip",
         })  # fmt: skip
class PredictSettings(Checked):
    """``resnetlab predict``: every setting from the groups (``groups.py``)."""

    if TYPE_CHECKING:  # added by compose (this block never runs)
        source: str = setting()
        images: list[str] = setting()
        json: bool = setting()
        csv: bool = setting()
        batch_size: int = setting()
        top_k: int = setting()
        tta: bool = setting()
        engine: str = setting()
        device: str = setting()
        on_bad: str = setting()
        prevalence: float | None = setting()


@dataclass(kw_only=True)
@compose(InferenceSettings, DataSettings, BatchSettings, DeviceSettings, RunFolderSettings,
         OutputSettings, PrevalenceSettings, SplitSettings,
         exclude=("top_k", "data_root", "resume", "progress", "csv"),
         defaults={"source": REQUIRED, "data": REQUIRED, "batch_size": 64,
                   "out_dir": Default(None, "none: printed only")})  # fmt: skip
class EvaluateSettings(Checked):
    """``resnetlab evaluate``: the subgroups to measure; the rest from the groups."""

    subgroups: tuple[str, ...] = setting(
        (), "manifest columns measured value by value, e.g. site,sex: n, positives, ROC-AUC, "
        "sensitivity and specificity at the threshold (accuracy with more classes), 95 % "
        "bootstrap intervals, and the spread between the subgroups",
    )  # fmt: skip

    if TYPE_CHECKING:  # added by compose (this block never runs)
        source: str = setting()
        split: str = setting()
        data: str = setting()
        out_dir: str | None = setting()
        batch_size: int = setting()
        tta: bool = setting()
        engine: str = setting()
        device: str = setting()
        on_bad: str = setting()
        json: bool = setting()
        prevalence: float | None = setting()


def _add_model_args(p: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """One flag per ``FinetuneOptions`` field (``cli/flags.py``); a flag not given is absent from
    the parsed arguments, so the defaults live in ``FinetuneOptions`` alone. The run folder,
    ``--out``, defaults to runs/<command>-<model>-<time>."""
    add_settings(p, FinetuneOptions, exclude=NO_FLAG + exclude, positional={"data": "DATA"})
    add_renamed(p, {flag_name(old): f"{flag_name(RENAMED[old])} ({why})"
                    for old, why in RENAMED_FLAGS.items()})  # fmt: skip


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
    from ..evaluation.decision import check_two_classes
    from ..finetune import expand_inputs, load_trained, predict_files, render
    from ..finetune.predict import at_prevalence, report_failures

    settings = settings_from_args(PredictSettings, args)
    loaded = load_trained(settings.source, device=device_name(settings.device))
    check_two_classes(loaded.classes, settings.prevalence)
    paths = expand_inputs(settings.images, keep_empty=True)
    if not paths:
        raise ResnetlabError("no image files matched; give files, folders or globs.")
    predictions, failed = predict_files(
        loaded, paths, top_k=settings.top_k, batch_size=settings.batch_size, tta=settings.tta,
        on_bad=settings.on_bad, engine=settings.engine,
    )  # fmt: skip
    report_failures(failed)
    fmt = "json" if settings.json else "csv" if settings.csv else "text"
    if predictions:
        print(render(predictions, fmt))
    if settings.prevalence is not None:  # beside a JSON or CSV table: on stderr, not in it
        print(at_prevalence(loaded, settings.prevalence),
              file=sys.stdout if fmt == "text" else sys.stderr)  # fmt: skip
    if not predictions:
        print("resnetlab predict: error: none of the inputs could be predicted.", file=sys.stderr)
        return 1
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from ..finetune import evaluate_run, format_metrics

    settings = settings_from_args(EvaluateSettings, args)
    metrics = evaluate_run(
        settings.source,
        settings.data,
        split=settings.split,
        out=settings.out_dir,
        batch_size=settings.batch_size,
        tta=settings.tta,
        device=device_name(settings.device),
        on_bad=settings.on_bad,
        engine=settings.engine,
        prevalence=settings.prevalence,
        subgroups=settings.subgroups,
    )
    print(json.dumps(metrics, indent=2) if settings.json else format_metrics(metrics))
    if settings.out_dir and not settings.json:
        print(f"metrics and plots: {Path(settings.out_dir).resolve()}")
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

    p = subparsers.add_parser("predict", help="top-k classes for images with a trained model")
    add_settings(p, PredictSettings, positional={"source": "RUN_OR_MODEL", "images": "IMAGES"},
                 eager=True)  # fmt: skip
    p.set_defaults(func=run_predict)

    p = subparsers.add_parser("evaluate", help="all metrics of a trained model on a split")
    add_settings(p, EvaluateSettings, positional={"source": "RUN_OR_MODEL", "data": "DATA"},
                 eager=True)  # fmt: skip
    p.set_defaults(func=run_evaluate)
