"""``resnetlab finetune | lr-find | predict | evaluate``: adapt a model to new labelled images,
find a learning rate, and use or measure the result.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import ResnetlabError
from ..settings import bounded
from ..train.config import tracker_names
from ..train.distributed import check_device


def _stages(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _add_model_args(p: argparse.ArgumentParser) -> None:
    """The flags fine-tuning and the lr range test share; a flag not given is absent from the
    parsed arguments, so the defaults live in ``FinetuneOptions`` alone."""
    p.add_argument(
        "data",
        metavar="DATA",
        help="image folder or archive (train/, optional val/ test/), MedMNIST .npz, "
        "or cifar10/cifar100",
    )
    p.add_argument("--model", help="model name (default resnet18)")
    p.add_argument(
        "--pretrained",
        help="weights: a tag (imagenet, imagenet-v1), URL, checkpoint file or run "
        "folder; 'none' trains from scratch (default auto: ImageNet weights where "
        "published for the model, else from scratch)",
    )
    p.add_argument("--out", help="run folder (default runs/<command>-<model>-<time>)")
    _add_on_bad(p, default=None)
    p.add_argument("--head-dropout", type=float, help="dropout before the new head")
    p.add_argument(
        "--freeze",
        type=_stages,
        metavar="STAGES",
        help="stages kept frozen throughout, e.g. layer1,layer2",
    )
    p.add_argument(
        "--bn",
        choices=("frozen", "train"),
        help="BatchNorm in frozen stages: fixed statistics or updated (default frozen)",
    )
    p.add_argument("--unfreeze-to", help="phase 2 trains this stage onwards, e.g. layer3")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), help="optimiser (default adamw)")
    p.add_argument("--lr", type=float, help="head lr (default 1e-3 AdamW, 0.01 SGD)")
    p.add_argument(
        "--lr-mult",
        type=float,
        help="phase-2 lr factor per stage towards the stem (default 0.4 with "
        "pretrained weights, 1 from scratch)",
    )
    p.add_argument("--weight-decay", type=float, help="default 0.01 AdamW, 5e-4 SGD")
    p.add_argument("--batch-size", type=int, help="training batch size (default 64)")
    p.add_argument(
        "--image-size",
        type=int,
        help="input size (default: the weights' crop size; native from scratch)",
    )
    p.add_argument(
        "--grey",
        choices=("auto", "repeat", "sum"),
        help="greyscale images: repeat to 3 channels, or sum the stem weights to 1 "
        "channel (default: repeat with weights, 1 channel from scratch)",
    )
    p.add_argument(
        "--val-size",
        type=float,
        help="fraction held out for validation when the data has no val split",
    )
    p.add_argument("--no-augment", action="store_true", help="no random crop/flip")
    p.add_argument("--no-flip", action="store_true", help="random crops but no mirroring")
    p.add_argument(
        "--seed", type=int, help="seed of the split, initialisation and order (default 0)"
    )
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="recompute block activations in backward: less memory, about one more forward",
    )
    p.set_defaults(**dict.fromkeys(FLAG_FIELDS, None))  # no flag has a default of its own


def _add_on_bad(p: argparse.ArgumentParser, default: str | None = "error") -> None:
    """``--on-bad``; with ``default=None`` the default is FinetuneOptions' (error)."""
    p.add_argument(
        "--on-bad", choices=("skip", "error"), default=default,
        help="unreadable image files: skip them with a warning, or error "
        f"(default {default or 'error'})",
    )  # fmt: skip


# Flag destinations that are FinetuneOptions fields under the same name.
FLAG_FIELDS = (
    "model", "pretrained", "head_dropout", "freeze", "bn", "unfreeze_to", "optimizer", "lr",
    "lr_mult", "weight_decay", "batch_size", "image_size", "grey", "val_size", "seed", "device",
    "head_epochs", "epochs", "schedule", "class_weights", "balanced_sampling", "monitor",
    "patience", "label_smoothing", "tta", "activation_checkpointing", "on_bad", "threshold",
    "test_size", "folds", "log",
)  # fmt: skip
NEGATED = {"no_augment": "augment", "no_flip": "flip", "no_progress": "progress"}


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The FinetuneOptions values set on the command line, and only those."""
    values = {k: getattr(args, k) for k in FLAG_FIELDS if getattr(args, k, None) is not None}
    values |= {field: False for flag, field in NEGATED.items() if getattr(args, flag, False)}
    if values.get("patience") == 0:  # "--patience 0": never stop early
        values["patience"] = None
    return values


def _options(args: argparse.Namespace, command: str):
    from ..finetune import FinetuneOptions, saved_options

    given = given_options(args)
    if getattr(args, "resume", False):
        if not args.out:
            raise ResnetlabError("--resume needs --out RUN_FOLDER (the run to continue).")
        # the run's own settings, with what was given on top: a change is refused later
        return FinetuneOptions(**{**saved_options(Path(args.out)), **given, "resume": True,
                                  "data": args.data, "out_dir": args.out})  # fmt: skip
    model = given.get("model", "resnet18")
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
    return 0


def run_lr_find(args: argparse.Namespace) -> int:
    from ..finetune import lr_find

    lr_find(
        _options(args, "lr-find"),
        iters=args.iters,
        start=args.start_lr,
        end=args.end_lr,
        phase=args.phase,
    )
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
    p.add_argument(
        "--head-epochs",
        type=float,
        help="phase 1 epochs (default 2 with pretrained weights, 0 from scratch)",
    )
    p.add_argument("--epochs", type=float, help="phase 2 epochs (default 5)")
    p.add_argument(
        "--schedule", choices=("onecycle", "cosine", "constant"),
        help="lr schedule of each phase (default onecycle)",
    )  # fmt: skip
    p.add_argument("--class-weights", action="store_true", help="inverse-frequency loss weights")
    p.add_argument(
        "--balanced-sampling",
        action="store_true",
        help="oversample smaller classes to the largest class's count",
    )
    p.add_argument(
        "--monitor",
        choices=("auto", "balanced_accuracy", "roc_auc", "pr_auc", "loss", "accuracy", "macro_f1"),
        help="validation metric for the best model and early stopping (default auto: "
        "balanced accuracy; PR-AUC on imbalanced two-class data)",
    )
    p.add_argument(
        "--threshold",
        help="two classes: operating point on the calibrated probability of the second "
        "class, chosen on validation: youden (default; max sensitivity + specificity), "
        "sensitivity=0.95, specificity=0.95 or a number",
    )
    p.add_argument(
        "--test-size",
        type=float,
        help="fraction held out as test (grouped, stratified) when the data has no test split",
    )
    p.add_argument(
        "--folds",
        type=int,
        help="K > 1: stratified, grouped K-fold cross-validation over train (+ val), one report",
    )
    p.add_argument(
        "--patience",
        type=int,
        help="epochs without improvement before stopping (0: never stop early; default 5)",
    )
    p.add_argument("--label-smoothing", type=float, help="label smoothing, e.g. 0.1 (default 0)")
    p.add_argument("--tta", action="store_true", help="mirror-averaged final test metrics")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--log", type=tracker_names, metavar="NAME,NAME,...",
                   help="log each phase's run to tensorboard and/or mlflow")  # fmt: skip
    p.set_defaults(func=run_finetune)

    p = subparsers.add_parser("lr-find", help="learning-rate range test (plot + suggestion)")
    _add_model_args(p)
    p.add_argument("--iters", type=int, default=100, help="sweep steps (default 100)")
    p.add_argument("--start-lr", type=float, default=1e-7)
    p.add_argument("--end-lr", type=float, default=10.0)
    p.add_argument(
        "--phase",
        choices=("full", "head"),
        default="full",
        help="sweep the unfrozen model (default) or the head alone",
    )
    p.set_defaults(func=run_lr_find)

    p = subparsers.add_parser("predict", help="top-k classes for images with a fine-tuned model")
    p.add_argument("source", metavar="RUN_OR_MODEL", help="run folder, or model file + card")
    p.add_argument("images", metavar="IMAGES", nargs="+", help="files, folders or globs")
    p.add_argument("--top-k", type=bounded(int, ">= 1"), default=3, metavar="INT",
                   help="classes shown per image (default 3)")  # fmt: skip
    p.add_argument("--tta", action="store_true", help="average with the mirror image")
    p.add_argument("--batch-size", type=bounded(int, ">= 1"), default=64, metavar="INT",
                   help="images per forward pass (default 64)")  # fmt: skip
    p.add_argument("--device", default="cpu")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--json", action="store_true", help="JSON output")
    group.add_argument("--csv", action="store_true", help="CSV output")
    _add_on_bad(p, default="skip")
    p.set_defaults(func=run_predict)

    p = subparsers.add_parser("evaluate", help="all metrics of a fine-tuned model on a split")
    p.add_argument("source", metavar="RUN_OR_MODEL", help="run folder, or model file + card")
    p.add_argument("data", metavar="DATA", help="labelled data (as for finetune)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--out", type=Path, help="folder for metrics JSON and plots")
    p.add_argument("--tta", action="store_true", help="average with the mirror image")
    p.add_argument("--batch-size", type=bounded(int, ">= 1"), default=64, metavar="INT",
                   help="images per forward pass (default 64)")  # fmt: skip
    p.add_argument("--device", default="cpu")
    _add_on_bad(p)
    p.set_defaults(func=run_evaluate)
