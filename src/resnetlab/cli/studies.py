"""``resnetlab lesion``, ``loss-landscape``, ``paths`` and ``shattered``: why skips work, on
trained nets (and at initialisation); each writes a run folder that ``resnetlab report`` renders.

MODEL_OR_RUN is a registered model name (weights from ``--pretrained VALUE``, handed to
``create_model`` as given: a file, a URL or a tag such as ``cifar10``) or a training run folder.
"""

from __future__ import annotations

import argparse

from .experiments import _common, _done, command_line


def _print(result: dict) -> None:
    print("\n".join(result["summary"]))


def run_lesion_command(args: argparse.Namespace) -> int:
    from ..experiments.lesion import LesionConfig, run_lesion

    config = LesionConfig(
        models=args.models,
        pretrained=args.pretrained or [],
        data=args.data,
        split=args.split,
        eval_size=args.eval_size,
        normalisation=args.normalisation,
        max_k=args.max_k,
        draws=args.draws,
        seed=args.seed,
        batch=args.batch,
    )
    run_dir, result = run_lesion(config, args.out, resume=args.resume, command=command_line(args))
    _print(result)
    _done(run_dir, args.report)
    return 0


def run_landscape_command(args: argparse.Namespace) -> int:
    from ..experiments.landscape import LandscapeConfig, run_landscape

    config = LandscapeConfig(
        model=args.model,
        pretrained=args.pretrained,
        data=args.data,
        train_size=args.train_size,
        normalisation=args.normalisation,
        seed=args.seed,
        span=args.span,
        points_1d=args.points_1d,
        grid=args.grid,
        interpolate_from=args.interpolate_from,
        batch=args.batch,
    )
    run_dir, result = run_landscape(
        config, args.out, resume=args.resume, command=command_line(args)
    )
    _print(result)
    _done(run_dir, args.report)
    return 0


def run_paths_command(args: argparse.Namespace) -> int:
    from ..experiments.paths import PathsConfig, run_paths

    config = PathsConfig(
        model=args.model,
        pretrained=args.pretrained,
        data=args.data,
        images=args.images,
        draws=args.draws,
        normalisation=args.normalisation,
        seed=args.seed,
    )
    run_dir, result = run_paths(config, args.out, resume=args.resume, command=command_line(args))
    _print(result)
    _done(run_dir, args.report)
    return 0


def run_shattered_command(args: argparse.Namespace) -> int:
    from ..experiments.shattered import ShatteredConfig, run_shattered

    config = ShatteredConfig(
        depths=args.depths,
        kinds=args.kinds.split(","),
        points=args.points,
        image_size=args.image_size,
        seeds=args.seeds,
        seed=args.seed,
    )
    run_dir, result = run_shattered(
        config, args.out, resume=args.resume, command=command_line(args)
    )
    _print(result)
    _done(run_dir, args.report)
    return 0


def _subject_flags(p: argparse.ArgumentParser, many: bool = False) -> None:
    help_weights = "weights for a model name: file, URL or tag (e.g. cifar10)"
    if many:
        p.add_argument(
            "--pretrained",
            action="append",
            metavar="VALUE",
            help=help_weights + "; once for all names, or once per model in order "
            "(none for untrained)",
        )
    else:
        p.add_argument("--pretrained", metavar="VALUE", help=help_weights)
    p.add_argument("--data", default="cifar10", help="data set name or path (default cifar10)")
    p.add_argument(
        "--normalisation",
        default="auto",
        choices=("auto", "imagenet", "none"),
        help="input normalisation: auto = a run's own, else ImageNet mean/std",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of subsamples and draws (default 0)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "lesion",
        help="test error after deleting or swapping blocks of trained nets",
        description="Veit et al. 2016: delete single blocks, k random blocks, swap k pairs.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL_OR_RUN", help="model names or run folders")
    _subject_flags(p, many=True)
    p.add_argument("--split", default="test", help="split to evaluate on (default test)")
    p.add_argument("--eval-size", type=int, help="stratified subsample (default: whole split)")
    p.add_argument("--max-k", type=int, default=6, help="k = 1..max-k; 0: single blocks only")
    p.add_argument("--draws", type=int, default=4, help="random draws per k (default 4)")
    p.add_argument("--batch", type=int, default=500, help="evaluation batch (default 500)")
    _common(p)
    p.set_defaults(func=run_lesion_command, _parser=p)

    p = subparsers.add_parser(
        "loss-landscape",
        help="1-D/2-D loss slices along filter-normalised directions",
        description="Li et al. 2018: loss on a fixed training subsample along random "
        "filter-normalised directions (biases and BN left out); resumable 2-D grid.",
    )
    p.add_argument("model", metavar="MODEL_OR_RUN", help="model name or run folder")
    _subject_flags(p)
    p.add_argument("--train-size", type=int, default=2000, help="training images (default 2000)")
    p.add_argument("--span", type=float, default=1.0, help="coordinates in [-span, span] (1)")
    p.add_argument("--points-1d", type=int, default=41, help="points of the 1-D slice (41)")
    p.add_argument("--grid", type=int, default=21, help="points per 2-D axis; 0: none (21)")
    p.add_argument(
        "--interpolate-from",
        metavar="WEIGHTS",
        help="also interpolate from these weights: init, a run folder or a file",
    )
    p.add_argument("--batch", type=int, default=500, help="evaluation batch (default 500)")
    _common(p)
    p.set_defaults(func=run_landscape_command, _parser=p)

    p = subparsers.add_parser(
        "paths",
        help="gradient carried by paths of each length (trained vs untrained)",
        description="Veit et al. 2016 §4-5: path-length distribution and sampled gradient.",
    )
    p.add_argument("model", metavar="MODEL_OR_RUN", help="model name or run folder")
    _subject_flags(p)
    p.add_argument("--images", type=int, default=32, help="test images (default 32)")
    p.add_argument("--draws", type=int, default=4, help="random block sets per length (4)")
    _common(p)
    p.set_defaults(func=run_paths_command, _parser=p)

    p = subparsers.add_parser(
        "shattered",
        help="gradient autocorrelation against depth at initialisation",
        description="Balduzzi et al. 2017: input gradient along a 1-D input sweep.",
    )
    p.add_argument(
        "--depths",
        type=int,
        nargs="+",
        default=[8, 14, 20, 32, 44, 56, 110],
        help="depths (6n+2 for the conv nets)",
    )
    p.add_argument(
        "--kinds",
        default="plain,resnet,preact,mlp-plain,mlp-resnet",
        help="comma-separated kinds (default all)",
    )
    p.add_argument("--points", type=int, default=128, help="points of the sweep (128)")
    p.add_argument("--image-size", type=int, default=32, help="input px of the conv nets (32)")
    p.add_argument("--seeds", type=int, default=2, help="seeds to average (default 2)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    _common(p)
    p.set_defaults(func=run_shattered_command, _parser=p)
