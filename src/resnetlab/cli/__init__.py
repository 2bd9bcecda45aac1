"""The ``resnetlab`` command: one sub-command per capability, each defined in its own module.

A module here exposes ``register(subparsers)``, which adds its sub-command(s) and sets
``func`` (called with the parsed arguments, returning an exit code) on each parser.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from typing import NoReturn

from .. import console, runfolder
from ..errors import ResnetlabError
from ..version import __version__

# Modules that define sub-commands, in the order they appear in --help.
COMMAND_MODULES = [
    "models", "weights", "export", "train", "studies", "finetune", "explain", "serve",
]  # fmt: skip


# OS errors that are the user's to fix (a path, space, permissions): one line, exit 2.
USER_OS_ERRORS = {
    errno.ENOSPC: "no space left on the device; free some space or choose another folder",
    errno.EDQUOT: "disk quota exceeded; free some space or choose another folder",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "operation not permitted; choose a folder you can write to",
    errno.EROFS: "read-only file system; choose a folder you can write to",
    errno.EEXIST: "it already exists; choose another path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; fix the path",
    errno.EISDIR: "it is a folder, not a file; give a file path",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
    errno.ENOENT: "no such file or folder; check the path",
}


class Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (the problem and where to look), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="resnetlab",
        description="VGG, ResNet and their plain twins: models, experiments, fine-tuning.",
    )
    parser.add_argument("--version", action="version", version=f"resnetlab {__version__}")
    add_quiet(parser, default=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    for command in {id(p): p for p in subparsers.choices.values()}.values():
        add_quiet(command, default=argparse.SUPPRESS)  # so it leaves a global --quiet alone
    return parser


def add_quiet(parser: argparse.ArgumentParser, default: object) -> None:
    """``--quiet``, accepted before the command and after it."""
    parser.add_argument("--quiet", action="store_true", default=default,
                        help="no progress and no messages: only results and errors")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors print one line and exit 2; Ctrl-C exits 130."""
    parser = build_parser()
    args = parser.parse_args(argv)
    was_quiet = console.set_quiet(args.quiet)
    try:
        with runfolder.invoked_as(sys.argv[1:] if argv is None else list(argv)):
            return int(args.func(args) or 0)
    except ResnetlabError as exc:
        print(f"resnetlab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"resnetlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno not in USER_OS_ERRORS:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"resnetlab {args.command}: error: cannot write or read{where}: "
              f"{USER_OS_ERRORS[exc.errno]}.", file=sys.stderr)  # fmt: skip
        return 2
    finally:
        console.set_quiet(was_quiet)


if __name__ == "__main__":
    sys.exit(main())
