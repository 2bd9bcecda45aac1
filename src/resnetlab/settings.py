"""Settings declared once: a dataclass field carries its default, its help and its bounds.

``setting(4, "zero padding before the random crop", ">= 0")`` is a field whose metadata the
command line reads for its flag (``cli/flags.py``) and :func:`check_settings` reads to refuse a
bad value with one line that names the setting, the rule and the value. Bounds are ``"> 0"``,
``">= 1"`` or an interval such as ``"[0, 1)"``; they apply to each element of a tuple and skip
``None``. ``choices`` are the fixed values a setting (or each element of a sequence) may take.
:func:`compose` adds another settings class's fields to a class, so a setting is written once.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

from .errors import ResnetlabError, close_matches

_RULE = re.compile(r"^\s*(>=|>|<=|<)\s*(\S+)\s*$")
_INTERVAL = re.compile(r"^\s*([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])\s*$")


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    bounds: str | None = None,
    *,
    choices: Iterable[Any] | None = None,
    factory: Callable[[], Any] | None = None,
    flag: str | None = None,
    const: Any = None,
) -> Any:
    """A dataclass field with its help text, optional numeric bounds and fixed choices;
    ``flag`` names its command-line flag where that is not the field's name (``--out``), and
    ``const`` is the value of the flag given alone (``--with-preprocessing`` is ``uint8``)."""
    if bounds is not None:
        parse_bounds(bounds)  # a malformed rule fails at import, not at the user
    metadata = {"help": help, "bounds": bounds, "choices": tuple(choices) if choices else None,
                "flag": flag, "const": const}  # fmt: skip
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def parse_bounds(rule: str) -> tuple[float, bool, float, bool]:
    """``(low, low_inclusive, high, high_inclusive)`` of a rule such as ``"[0, 1)"``."""
    if m := _INTERVAL.match(rule):
        return float(m[2]), m[1] == "[", float(m[3]), m[4] == "]"
    if m := _RULE.match(rule):
        op, value = m[1], float(m[2])
        if op.startswith(">"):
            return value, op == ">=", math.inf, False
        return -math.inf, False, value, op == "<="
    raise ValueError(f"cannot read the bounds rule {rule!r}")


def within(value: float, rule: str) -> bool:
    """True when ``value`` is a finite number that satisfies ``rule``."""
    low, low_in, high, high_in = parse_bounds(rule)
    if not math.isfinite(value):
        return False
    above = value >= low if low_in else value > low
    below = value <= high if high_in else value < high
    return above and below


def describe(rule: str) -> str:
    """The rule in words for an error message, e.g. ``"in [0, 1)"`` or ``">= 1"``."""
    return f"in {rule.strip()}" if _INTERVAL.match(rule) else rule.strip()


def check_value(name: str, value: Any, rule: str | None) -> None:
    """Refuse a value (or a tuple element) that breaks ``rule``; ``None`` always passes."""
    if rule is None or value is None or isinstance(value, str | dict):
        return
    values = value if isinstance(value, tuple | list) else (value,)
    for item in values:
        if isinstance(item, bool) or not isinstance(item, int | float):
            continue
        if not within(float(item), rule):
            flag = "--" + name.replace("_", "-")
            raise ResnetlabError(
                f"{name} ({flag}) must be {describe(rule)}, got {value!r}; give a value "
                f"{describe(rule)}."
            )


def check_choice(name: str, value: Any, choices: tuple[Any, ...] | None) -> None:
    """Refuse a value (or a sequence element) outside ``choices``; ``None`` and dicts pass."""
    if choices is None or value is None or isinstance(value, dict):
        return
    for item in value if isinstance(value, tuple | list) else (value,):
        if not any(item == c and type(item) is type(c) for c in choices):
            words = [str(c) for c in choices]
            hint = close_matches(str(item), words) or f" Choose from {', '.join(words)}."
            flag = "--" + name.replace("_", "-")
            raise ResnetlabError(f"unknown {name} {item!r} ({flag}).{hint}")


def check_settings(obj: Any) -> None:
    """Check every field of a settings dataclass against the bounds and choices it declares."""
    for f in dataclasses.fields(obj):
        check_value(f.name, getattr(obj, f.name), f.metadata.get("bounds"))
        check_choice(f.name, getattr(obj, f.name), f.metadata.get("choices"))


REQUIRED: Any = dataclasses.MISSING  # compose(..., defaults={"data": REQUIRED}): no default


@dataclasses.dataclass(frozen=True)
class Default:
    """A composed field's own default and how its help shows it: ``Default(None, "crop / 8")``
    for a value the command derives when the setting is left unset."""

    value: Any
    shown: str


def compose(
    *sources: type,
    exclude: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
    unset: str | None = None,
    only: Iterable[str] | None = None,
) -> Callable[[type], type]:
    """A class decorator (put it under ``@dataclass``) that adds the ``sources``' fields, with
    their help, bounds and choices, to the class: all but ``exclude`` and those the class
    declares itself, with ``defaults`` replacing the sources' defaults (a value, a ``Default``,
    or ``REQUIRED``: none, for a ``kw_only`` dataclass); with ``unset`` every other field added
    defaults to None, a value the class fills in itself, shown in the help as ``unset`` says
    (degradation: "the recipe's"); ``only`` takes just the fields it names. The names
    added are kept in the class's ``__composed__`` (and the sources in ``__sources__``), so a
    field added to a source reaches the class with no edit."""
    skip, new, wanted = set(exclude), dict(defaults or {}), None if only is None else set(only)

    def decorate(cls: Any) -> type:  # Any: the class gets a __composed__ attribute
        own = cls.__dict__.get("__annotations__", {})
        added = list(cls.__dict__.get("__composed__", ()))
        fields = [f for source in sources for f in dataclasses.fields(source)]
        for f in fields:
            if f.name in skip or f.name in own or (wanted is not None and f.name not in wanted):
                continue
            own[f.name] = f.type
            if f.name in new:
                default, metadata = new.pop(f.name), dict(f.metadata)
                if isinstance(default, Default):
                    help = f"{metadata.get('help', '')} (default {default.shown})"
                    default, metadata = default.value, {**metadata, "help": help}
                value: Any = (  # a list default: each instance its own copy
                    dataclasses.field(default_factory=partial(list, default), metadata=metadata)
                    if isinstance(default, list)
                    else dataclasses.field(default=default, metadata=metadata)
                )
            elif unset is not None:
                help = f"{f.metadata.get('help', '')} (default {unset})"
                value = dataclasses.field(default=None, metadata={**f.metadata, "help": help})
            elif f.default_factory is not dataclasses.MISSING:
                value = dataclasses.field(default_factory=f.default_factory, metadata=f.metadata)
            else:
                value = dataclasses.field(default=f.default, metadata=f.metadata)
            setattr(cls, f.name, value)
            added.append(f.name)
        if new:
            raise TypeError(f"{cls.__name__}: defaults for fields it does not take: {sorted(new)}")
        cls.__annotations__ = own
        cls.__composed__ = tuple(added)
        cls.__sources__ = (*cls.__dict__.get("__sources__", ()), *sources)
        return cls

    return decorate


def help_of(f: dataclasses.Field) -> str:
    """The help of a field, with its default where one is worth showing."""
    text = f.metadata.get("help", "")
    if f.default in (None, dataclasses.MISSING, (), "") or "default" in text:
        return text
    if isinstance(f.default, bool):
        shown: object = "on" if f.default else "off"
    elif isinstance(f.default, tuple):
        shown = ",".join(map(str, f.default))
    else:
        shown = f.default
    return f"{text} (default {shown})"


def bounded(kind: Callable[[str], Any], rule: str) -> Callable[[str], Any]:
    """An argparse ``type=`` that converts with ``kind`` and applies ``rule``."""

    def convert(text: str) -> Any:
        value = kind(text)
        if not within(float(value), rule):
            raise ValueError(text)
        return value

    convert.__name__ = f"{kind.__name__} {describe(rule)}"
    return convert
