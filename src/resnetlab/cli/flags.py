"""Command-line flags built from a settings dataclass, and the dataclass built back from them.

A field ``grad_clip`` is ``--grad-clip``, with the help, default, bounds and choices written in
its ``setting(...)`` alone, and a metavar that says what it takes: ``INT``, ``FLOAT``,
``N|FRACTION``, ``A,B,...`` (a tuple), ``{a,b}`` (fixed choices). A bool is ``--x/--no-x``; a
list takes one or more values (``--depths 20 56`` or ``--depths 20,56``); a dict is a repeatable
``--model-option KEY=VALUE`` (the name without its last ``s``); ``none`` clears an optional one.
No flag has an argparse default: a flag not given is absent from the parsed arguments, so the
dataclass's own default applies (and a resumed run can tell given from saved); a command with
nothing to resume may be ``eager`` (argparse holds the default and checks choices and bounds as
it reads). A field's ``setting(flag=...)`` names its flag (``out_dir`` is ``--out``), and
``add_renamed`` keeps a renamed flag as a one-line error naming the new one.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..settings import bounded, check_settings, describe, help_of

NONE_WORDS = ("none", "null")
NUMBERS: dict[str, Callable[[str], Any]] = {"int": int, "float": float}


# Every settings class given to add_settings, by the parser's prog: the classes the command
# line reaches (a test walks them for setting names declared twice).
REGISTERED: dict[str, list[type]] = {}


def flag_name(name: str) -> str:
    """The flag of a field: ``grad_clip`` is ``--grad-clip``."""
    return "--" + name.replace("_", "-")


def field_flag(f: dataclasses.Field) -> str:
    """The flag of a field: its ``setting(flag=...)``, else made from its name."""
    return f.metadata.get("flag") or flag_name(f.name)


def add_settings(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    exclude: Iterable[str] = (),
    positional: Mapping[str, str] | None = None,
    required: Iterable[str] = (),
    eager: bool = False,
) -> None:
    """One flag per field of ``cls`` (not in ``exclude``); ``positional`` maps fields that are
    positional arguments to their metavar (a list field takes one or more, or none with a
    default); a field in ``required`` is a flag that must be given.

    ``eager``, for a command whose settings come from the command line alone (nothing saved to
    resume): argparse holds the field's default and refuses a value outside its choices or
    bounds as it reads it ("invalid int >= 1 value"); else the flag is absent when not given and
    ``check_settings`` checks the value once the dataclass is made."""
    skip, positional, must = set(exclude), dict(positional or {}), set(required)
    if cls not in (known := REGISTERED.setdefault(parser.prog, [])):
        known.append(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        written = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        kind, optional = _base(written), "None" in written  # "int | None": a string annotation
        text = _help(f)
        if f.name in positional:
            many = kind.startswith("list[")
            has_default = _has_default(f)
            nargs = ("*" if has_default else "+") if many else ("?" if has_default else None)
            parser.add_argument(
                f.name, metavar=positional[f.name], nargs=nargs, default=argparse.SUPPRESS,
                type=_split(_converter(_element(kind))) if many
                else _converter(kind, optional), action=_Items if many else "store", help=text,
            )  # fmt: skip
            continue
        options: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": text}
        if eager and _has_default(f):
            options["default"] = _default(f)
        if eager and f.metadata.get("choices") and not kind.startswith(("list[", "tuple[")):
            options["choices"] = f.metadata["choices"]
        if f.name in must:
            options["required"] = True
        if kind.startswith("bool") and f.name.startswith("no_"):  # --no-x, and --x to undo it
            parser.add_argument(flag_name(f.name), action="store_const", const=True, **options)
            options["help"] = argparse.SUPPRESS
            parser.add_argument(flag_name(f.name[3:]), action="store_const", const=False,
                                **options)  # fmt: skip
        elif kind.startswith("bool"):
            options["action"] = argparse.BooleanOptionalAction
            parser.add_argument(field_flag(f), **options)
        elif kind.startswith("dict["):
            parser.add_argument(flag_name(f.name.removesuffix("s")), action=_KeyValues,
                                metavar="KEY=VALUE", **options)  # fmt: skip
        elif kind.startswith("list["):
            element = _element(kind)
            parser.add_argument(field_flag(f), action=_Items, nargs="+",
                                type=_split(_converter(element)),
                                metavar=metavar(element, f.metadata.get("choices")),
                                **options)  # fmt: skip
        else:
            # choices are checked with the bounds (a one-line error with a close match)
            options["metavar"] = metavar(kind, f.metadata.get("choices"))
            convert = _converter(kind, optional)
            if eager and f.metadata.get("bounds") and kind in NUMBERS and not optional:
                convert = bounded(NUMBERS[kind], f.metadata["bounds"])
            if f.metadata.get("const") is not None:
                options |= {"nargs": "?", "const": f.metadata["const"]}
            parser.add_argument(field_flag(f), type=convert, **options)


def add_renamed(parser: argparse.ArgumentParser, renamed: Mapping[str, str]) -> None:
    """Old flag names (``{"--lr": "--head-lr (what it is)"}``) that stop with one line (exit 2)
    naming the new flag; ``--no-OLD`` too, for an old bool flag."""
    for old, new in renamed.items():
        parser.add_argument(old, f"--no-{old[2:]}", nargs="?", action=_Renamed, new=new,
                            dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                            help=argparse.SUPPRESS)  # fmt: skip


def given_settings(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The values of ``cls``'s fields given on the command line, and only those."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def settings_from_args(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """``cls`` from its defaults, the flags given and ``fixed``; bounds and choices checked."""
    config = cls(**{**given_settings(args, cls), **fixed})
    check_settings(config)
    return config


def metavar(kind: str, choices: Iterable[Any] | None = None) -> str:
    """What a flag takes, from its field's type (without ``| None``)."""
    if choices:
        named = "{" + ",".join(str(c) for c in choices) + "}"
        if kind.startswith("tuple["):
            return named + ",..."
        return named + "|MEAN,.../STD,..." if kind.startswith("str | dict") else named
    if kind.startswith("tuple["):
        one = metavar(_element(kind))
        return f"{one},{one}" if "..." not in kind else f"{one},{one},..."
    return {
        "int": "INT", "float": "FLOAT", "int | float": "N|FRACTION", "str": "TEXT",
        "str | dict[str, list[float]]": "NAME|MEAN,.../STD,...",
    }.get(kind, "TEXT")  # fmt: skip


def _help(f: dataclasses.Field) -> str:
    text = help_of(f)
    if f.metadata.get("bounds"):
        text += f" [{describe(f.metadata['bounds'])}]"
    return text.replace("%", "%%")


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _base(kind: str) -> str:
    """The annotation without ``| None``, e.g. ``float | None`` -> ``float``."""
    return kind.removesuffix(" | None").removeprefix("None | ").strip()


def _element(kind: str) -> str:
    """The element type of ``tuple[int, ...]``, ``tuple[float, float]`` or ``list[str]``."""
    return kind[kind.index("[") + 1 :].split(",")[0].rstrip("]").strip()


def _converter(kind: str, optional: bool = False) -> Callable[[str], Any]:
    """An argparse ``type=``: text to the field's type (``none`` to None where it is optional)."""

    def convert(text: str) -> Any:
        if optional and text.strip().lower() in NONE_WORDS:
            return None
        if kind.startswith("tuple["):
            element = _converter(_element(kind))
            return tuple(element(v.strip()) for v in text.split(",") if v.strip())
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "int | float":
            return int(text) if text.strip().isdigit() else float(text)
        if kind.startswith("str | dict") and "/" in text:
            mean, std = (part.split(",") for part in text.split("/"))
            return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
        return text

    convert.__name__ = metavar(kind)  # argparse's message: "invalid INT value: 'x'"
    return convert


def _split(convert: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """A list element's ``type=``: ``"20,56"`` is two values."""

    def split(text: str) -> list[Any]:
        return [convert(v.strip()) for v in text.split(",") if v.strip()]

    split.__name__ = convert.__name__
    return split


class _Renamed(argparse.Action):
    """A renamed flag: a usage error (one line, exit 2) that names the new flag."""

    def __init__(self, *args: Any, new: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.error(f"{option_string} is now {self.new}")


class _Items(argparse.Action):
    """A list flag: one or more values, each of which may be comma-separated; repeatable."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        items = list(getattr(namespace, self.dest, None) or [])
        for value in values if isinstance(values, list) else [values]:
            items += value if isinstance(value, list) else [value]
        setattr(namespace, self.dest, items)


class _KeyValues(argparse.Action):
    """A dict flag: ``KEY=VALUE``, repeatable; numbers and true/false are converted."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        key, sep, text = str(values).partition("=")
        if not sep or not key:
            raise argparse.ArgumentError(self, f"write KEY=VALUE, e.g. shortcut=B, not {values!r}")
        found = dict(getattr(namespace, self.dest, None) or {})
        found[key] = _scalar(text)
        setattr(namespace, self.dest, found)


def _scalar(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)
