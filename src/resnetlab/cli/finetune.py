"""``resnetlab finetune | lr-find | predict | evaluate``: adapt a model to new labelled images,
find a learning rate, and use or measure the result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .. import runfolder
from ..errors import ResnetlabError
from ..finetune.options import ENGINE_DEFAULTS, FinetuneOptions, saved_options
from ..settings import bounded
from ..train.distributed import check_device
from .flags import add_settings, given_settings

# FinetuneOptions fields without a flag of their own: the run folder is --out, and the fold is
# set by cross-validation.
NO_FLAG = ("out_dir", "fold")
SOURCE_HELP = "run folder (train or finetune), model file + card, Hub folder or hf-hub: id"


def _add_model_args(p: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """One flag per ``FinetuneOptions`` field (``cli/flags.py``); a flag not given is absent from
    the parsed arguments, so the defaults live in ``FinetuneOptions`` alone."""
    add_settings(p, FinetuneOptions, exclude=NO_FLAG + exclude, positional={"data": "DATA"})
    p.add_argument("--out", help="run folder (default runs/<command>-<model>-<time>)")


def _add_on_bad(p: argparse.ArgumentParser, default: str = "error") -> None:
    p.add_argument(
        "--on-bad", choices=("skip", "error"), default=default,
        help=f"unreadable image files: skip them with a warning, or error (default {default})",
    )  # fmt: skip


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The FinetuneOptions values set on the command line, and only those."""
    return {k: v for k, v in given_settings(args, FinetuneOptions).items() if k != "data"}


def _options(args: argparse.Namespace, command: str) -> FinetuneOptions:
    given = given_options(args)
    if getattr(args, "resume", False):
        if not args.out:
            raise ResnetlabError("--resume needs --out RUN_FOLDER (the run to continue).")
        # the run's own settings, with what was given on top: a change is refused later
        return FinetuneOptions(**{**saved_options(Path(args.out)), **given, "resume": True,
                                  "data": args.data, "out_dir": args.out})  # fmt: skip
    model = given.get("model", ENGINE_DEFAULTS["model"])
    out = args.out or f"runs/{command}-{model}-{time.strftime('%Y%m%d-%H%M%S')}"
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
    lr_find(options, iters=args.iters, start=args.start_lr, end=args.end_lr, phase=args.phase)
    out = Path(options.out_dir)
    runfolder.finish(out, "completed", started=began, wall_time_s=time.perf_counter() - clock,
                     extra={"data": options.data})  # fmt: skip
    print(f"report: {render_report([out])[0].resolve()}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from ..finetune import expand_inputs, load_trained, predict_files, render
    from ..finetune.predict import report_failures

    check_device(args.device)
    loaded = load_trained(args.source, device=args.device)
    paths = expand_inputs(args.images, keep_empty=True)
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
    print(json.dumps(metrics, indent=2) if args.json else format_metrics(metrics))
    if args.out and not args.json:
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
    p.add_argument("--iters", type=int, default=100, help="sweep steps (default 100)")
    p.add_argument("--start-lr", type=float, default=1e-7, metavar="FLOAT",
                   help="first lr of the sweep (default 1e-7)")  # fmt: skip
    p.add_argument("--end-lr", type=float, default=10.0, metavar="FLOAT",
                   help="last lr of the sweep (default 10)")  # fmt: skip
    p.add_argument(
        "--phase",
        choices=("full", "head"),
        default="full",
        help="sweep the unfrozen model (default) or the head alone",
    )
    p.set_defaults(func=run_lr_find)

    p = subparsers.add_parser("predict", help="top-k classes for images with a trained model")
    p.add_argument("source", metavar="RUN_OR_MODEL", help=SOURCE_HELP)
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

    p = subparsers.add_parser("evaluate", help="all metrics of a trained model on a split")
    p.add_argument("source", metavar="RUN_OR_MODEL", help=SOURCE_HELP)
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
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    _add_on_bad(p)
    p.set_defaults(func=run_evaluate)
