"""``resnetlab lesion``, ``loss-landscape``, ``paths`` and ``shattered``: why skips work, on
trained nets (and at initialisation); each writes a run folder that ``resnetlab report`` renders.

MODEL_OR_RUN is a registered model name (weights from ``--pretrained VALUE``, handed to
``create_model`` as given: a file, a URL or a tag such as ``cifar10``) or a training run folder.
"""

from __future__ import annotations

import argparse

from ..experiments.landscape import LandscapeConfig
from ..experiments.lesion import LesionConfig
from ..experiments.paths import PathsConfig
from ..experiments.shattered import ShatteredConfig
from .experiments import _common, _done, command_line
from .flags import add_settings, settings_from_args


def _print(result: dict) -> None:
    print("\n".join(result["summary"]))


def run_lesion_command(args: argparse.Namespace) -> int:
    from ..experiments.lesion import run_lesion

    config = settings_from_args(LesionConfig, args)
    run_dir, result = run_lesion(config, args.out, resume=args.resume, command=command_line(args))
    _print(result)
    _done(run_dir, args.report)
    return 0


def run_landscape_command(args: argparse.Namespace) -> int:
    from ..experiments.landscape import run_landscape

    config = settings_from_args(LandscapeConfig, args)
    run_dir, result = run_landscape(
        config, args.out, resume=args.resume, command=command_line(args)
    )
    _print(result)
    _done(run_dir, args.report)
    return 0


def run_paths_command(args: argparse.Namespace) -> int:
    from ..experiments.paths import run_paths

    config = settings_from_args(PathsConfig, args)
    run_dir, result = run_paths(config, args.out, resume=args.resume, command=command_line(args))
    _print(result)
    _done(run_dir, args.report)
    return 0


def run_shattered_command(args: argparse.Namespace) -> int:
    from ..experiments.shattered import run_shattered

    config = settings_from_args(ShatteredConfig, args)
    run_dir, result = run_shattered(
        config, args.out, resume=args.resume, command=command_line(args)
    )
    _print(result)
    _done(run_dir, args.report)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "lesion",
        help="test error after deleting or swapping blocks of trained nets",
        description="Veit et al. 2016: delete single blocks, k random blocks, swap k pairs.",
    )
    add_settings(p, LesionConfig, positional={"models": "MODEL_OR_RUN"})
    _common(p)
    p.set_defaults(func=run_lesion_command, _parser=p)

    p = subparsers.add_parser(
        "loss-landscape",
        help="1-D/2-D loss slices along filter-normalised directions",
        description="Li et al. 2018: loss on a fixed training subsample along random "
        "filter-normalised directions (biases and BN left out); resumable 2-D grid.",
    )
    add_settings(p, LandscapeConfig, positional={"model": "MODEL_OR_RUN"})
    _common(p)
    p.set_defaults(func=run_landscape_command, _parser=p)

    p = subparsers.add_parser(
        "paths",
        help="gradient carried by paths of each length (trained vs untrained)",
        description="Veit et al. 2016 §4-5: path-length distribution and sampled gradient.",
    )
    add_settings(p, PathsConfig, positional={"model": "MODEL_OR_RUN"})
    _common(p)
    p.set_defaults(func=run_paths_command, _parser=p)

    p = subparsers.add_parser(
        "shattered",
        help="gradient autocorrelation against depth at initialisation",
        description="Balduzzi et al. 2017: input gradient along a 1-D input sweep.",
    )
    add_settings(p, ShatteredConfig)
    _common(p)
    p.set_defaults(func=run_shattered_command, _parser=p)
