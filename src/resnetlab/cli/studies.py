"""``resnetlab lesion``, ``loss-landscape``, ``paths`` and ``shattered``: why skips work, on
trained nets (and at initialisation); each writes a run folder that ``resnetlab report`` renders.

MODEL_OR_RUN is a registered model name (weights from ``--pretrained VALUE``, handed to
``create_model`` as given: a file, a URL or a tag such as ``cifar10``) or a training run folder.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from typing import Any

from ..experiments.landscape import LandscapeConfig, run_landscape
from ..experiments.lesion import LesionConfig, run_lesion
from ..experiments.paths import PathsConfig, run_paths
from ..experiments.shattered import ShatteredConfig, run_shattered
from .experiments import _common, _done
from .flags import add_settings, settings_from_args


def _run_study(config_class: type, runner: Callable[..., Any], args: argparse.Namespace) -> int:
    """Build the study's config from the flags, run it (resumable), print its summary."""
    config = settings_from_args(config_class, args)
    run_dir, result = runner(config, args.out, resume=args.resume)
    print("\n".join(result["summary"]))
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
    p.set_defaults(func=partial(_run_study, LesionConfig, run_lesion))

    p = subparsers.add_parser(
        "loss-landscape",
        help="1-D/2-D loss slices along filter-normalised directions",
        description="Li et al. 2018: loss on a fixed training subsample along random "
        "filter-normalised directions (biases and BN left out); resumable 2-D grid.",
    )
    add_settings(p, LandscapeConfig, positional={"model": "MODEL_OR_RUN"})
    _common(p)
    p.set_defaults(func=partial(_run_study, LandscapeConfig, run_landscape))

    p = subparsers.add_parser(
        "paths",
        help="gradient carried by paths of each length (trained vs untrained)",
        description="Veit et al. 2016 §4-5: path-length distribution and sampled gradient.",
    )
    add_settings(p, PathsConfig, positional={"model": "MODEL_OR_RUN"})
    _common(p)
    p.set_defaults(func=partial(_run_study, PathsConfig, run_paths))

    p = subparsers.add_parser(
        "shattered",
        help="gradient autocorrelation against depth at initialisation",
        description="Balduzzi et al. 2017: input gradient along a 1-D input sweep.",
    )
    add_settings(p, ShatteredConfig)
    _common(p)
    p.set_defaults(func=partial(_run_study, ShatteredConfig, run_shattered))
