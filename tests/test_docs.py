"""The API reference (docs/api/, rendered by ``mkdocs build --strict`` in CI) names every public
name, and every name it renders exists: a renamed function fails here and in the docs build.
Every command and flag the README and the docs show is one the CLI accepts under that name."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path
from typing import Any

import pytest

from resnetlab.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api"
# Packages whose ``__all__`` is their public API, and modules whose public names are those they
# define without a leading underscore.
BY_ALL = ["resnetlab", "resnetlab.models", "resnetlab.weights", "resnetlab.data",
          "resnetlab.train", "resnetlab.transfer", "resnetlab.finetune", "resnetlab.analysis",
          "resnetlab.serve"]  # fmt: skip
BY_DEFINITION = ["resnetlab.export"]


def documented() -> dict[str, Path]:
    """Each ``::: dotted.name`` of the API pages, with the page it is on."""
    names = {}
    for page in sorted(API.glob("*.md")):
        for name in re.findall(r"^::: ([\w.]+)\s*$", page.read_text(), flags=re.M):
            names[name] = page
    return names


def resolve(dotted: str) -> Any:
    """The object a dotted name refers to, as Python sees it: an attribute before a submodule
    (``resnetlab.finetune.finetune`` is the function, not the module it comes from)."""
    first, *rest = dotted.split(".")
    obj = importlib.import_module(first)
    for i, part in enumerate(rest, start=1):
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        try:
            obj = importlib.import_module(".".join([first, *rest[:i]]))
        except ModuleNotFoundError:
            obj = getattr(importlib.import_module(".".join([first, *rest[: i - 1]])), part)
    return obj


def shadowed(dotted: str) -> bool:
    """A name that is both a submodule and, in its package, a function: the docs would render
    the module (write ``package.module.function``)."""
    try:
        module = importlib.import_module(dotted)
    except ModuleNotFoundError:
        return False
    return resolve(dotted) is not module


def public_names(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    if module_name in BY_ALL:
        return [n for n in module.__all__ if n != "__version__"]
    defined = [
        n for n, obj in vars(module).items() if getattr(obj, "__module__", "") == module_name
    ]
    return [n for n in defined if not n.startswith("_")]


def test_every_documented_name_exists() -> None:
    names = documented()
    assert len(names) > 100, sorted(names)
    missing = []
    for name, page in names.items():
        try:
            resolve(name)
        except (ModuleNotFoundError, AttributeError):
            missing.append(f"{name} ({page.name})")
            continue
        if shadowed(name):
            missing.append(f"{name} ({page.name}: the module, not the function, would render)")
    assert not missing, f"fix these entries in docs/api: {missing}"


@pytest.mark.parametrize("module_name", BY_ALL + BY_DEFINITION)
def test_every_public_name_is_documented(module_name: str) -> None:
    objects = {id(resolve(name)) for name in documented()}
    module = importlib.import_module(module_name)
    undocumented = [n for n in public_names(module_name) if id(getattr(module, n)) not in objects]
    assert not undocumented, f"add '::: {module_name}.NAME' to a page in docs/api: {undocumented}"


def test_every_api_page_is_in_the_site_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in API.glob("*.md")}
    assert pages and all(f" {page}" in nav for page in pages), pages


COMMAND_LINE = re.compile(r"resnetlab ([a-z][a-z-]*)((?: +[^\s`|;&)]+)*)")


def accepted_flags(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of a parser and of the subcommands below it, less the hidden ones
    (an old name that only says the new one)."""
    found: set[str] = set()
    for action in parser._actions:
        if action.help != argparse.SUPPRESS:
            found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= accepted_flags(sub)
    return found


def test_every_command_and_flag_the_docs_show_exists() -> None:
    commands = next(a for a in build_parser()._actions
                    if isinstance(a, argparse._SubParsersAction)).choices  # fmt: skip
    pages = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]
    shown, unknown = 0, []
    for page in pages:
        text = page.read_text().replace("\\\n", " ")  # a command continued over lines
        for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, flags=re.S):
            unknown += [f"{page.name}: resnetlab {c}" for c in re.findall(
                r"(?:^|[\s/])resnetlab ([a-z][a-z-]*)", block, flags=re.M) if c not in commands]
        for line in COMMAND_LINE.finditer(text):
            command, rest = line.group(1), line.group(2)
            if command not in commands:
                continue  # prose ("resnetlab runs as ..."); in a shell block, caught above
            flags = re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest)
            shown += len(flags)
            known = accepted_flags(commands[command])
            unknown += [f"{page.name}: resnetlab {command} {f}" for f in flags if f not in known]
    assert shown > 200  # the pattern still finds the command lines
    assert not unknown, unknown
