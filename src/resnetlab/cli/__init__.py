"""The ``resnetlab`` command: one sub-command per capability, each defined in its own module.

A module here exposes ``register(subparsers)``, which adds its sub-command(s) and sets
``func`` (called with the parsed arguments, returning an exit code) on each parser.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import ResnetlabError

# Modules that define sub-commands, in the order they appear in --help.
COMMAND_MODULES = [
    "models", "weights", "export", "train", "experiments", "finetune", "explain", "demo",
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnetlab",
        description="VGG, ResNet and their plain twins: models, experiments, fine-tuning.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"resnetlab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors print one line and exit 2; Ctrl-C exits 130."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ResnetlabError as exc:
        print(f"resnetlab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"resnetlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
