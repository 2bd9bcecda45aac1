"""One way to build any model: ``create_model(name, ...)`` and ``list_models(pattern)``.

Each model registers itself where it is defined, with ``@register_model(...)`` on its builder
function (as torchvision and timm do). Its :class:`ModelInfo` carries the facts that code needs
before building it (input size, stem, block type, feature stride), so nothing else reads them
from a family name. Published figures live in the weights catalog (``weights.catalog``).
"""

from __future__ import annotations

import fnmatch
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from torch import nn

from ..errors import ResnetlabError, close_matches
from ..weights import catalog
from ..weights.catalog import Published
from ..weights.pretrained import load_pretrained

BLOCKS = ("basic", "bottleneck", "preact-basic", "preact-bottleneck", "vgg")
Builder = TypeVar("Builder", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class ModelInfo:
    """What is known about a registered model before it is built.

    ``family`` is a label for tables and run records; behaviour is decided by the facts:
    ``cifar_stem`` (the 3×3, 16-filter stem of He et al. 2015 §4.2, no max-pool), ``block``
    (one of ``BLOCKS``) and ``feature_stride`` (input side over last feature-map side).
    """

    name: str
    family: str
    depth: int
    skips: bool
    input_size: tuple[int, int, int]
    num_classes: int
    builder: Callable[..., nn.Module] = field(repr=False)
    block: str = "basic"
    cifar_stem: bool = False
    feature_stride: int = 32
    torchvision_name: str | None = None

    @property
    def description(self) -> str:
        return next(iter((self.builder.__doc__ or "").strip().splitlines()), "")

    @property
    def preact(self) -> bool:
        """Whether the blocks are pre-activation ones (He et al. 2016)."""
        return self.block.startswith("preact")

    @property
    def weights_name(self) -> str:
        """The name the weights catalog knows this model by."""
        return self.torchvision_name or self.name

    @property
    def published(self) -> tuple[Published, ...]:
        """Published figures with their sources, read from the weights catalog."""
        return catalog.published(self.weights_name)

    @property
    def options(self) -> tuple[str, ...] | None:
        """The keyword options the builder takes (None: it does not say)."""
        return builder_options(self.builder)


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    *,
    family: str,
    depth: int,
    block: str,
    skips: bool = True,
    input_size: tuple[int, int, int] = (3, 224, 224),
    cifar_stem: bool = False,
    feature_stride: int = 32,
    torchvision_name: str | None = None,
) -> Callable[[Builder], Builder]:
    """Decorator: register a builder under its function name; ``num_classes`` is read from
    the builder's own default."""
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")

    def register(builder: Builder) -> Builder:
        name = builder.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        classes = inspect.signature(builder).parameters["num_classes"].default
        _REGISTRY[name] = ModelInfo(
            name, family, depth, skips, input_size, classes, builder,
            block, cifar_stem, feature_stride, torchvision_name,
        )  # fmt: skip
        return builder

    return register


def builder_options(builder: Callable[..., nn.Module]) -> tuple[str, ...] | None:
    """The keyword names ``builder`` accepts: its named parameters and the keys of the
    ``TypedDict`` its ``**options: Unpack[...]`` is annotated with (None: untyped ``**``)."""
    names: list[str] = []
    for parameter in inspect.signature(builder, eval_str=True).parameters.values():
        if parameter.kind is parameter.VAR_KEYWORD:
            typed = typing.get_args(parameter.annotation)
            if not (typed and typing.is_typeddict(typed[0])):
                return None
            names += [key for key in typed[0].__annotations__ if key not in names]
        elif parameter.kind is not parameter.VAR_POSITIONAL:
            names.append(parameter.name)
    return tuple(names)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, e.g. ``"resnet*"``."""
    return [name for name in _REGISTRY if fnmatch.fnmatchcase(name, pattern)]


def model_info(name: str) -> ModelInfo:
    """The metadata of a registered model; an unknown name raises with the close names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        hint = close_matches(name, list(_REGISTRY)) or " See `resnetlab models` for the list."
        raise ResnetlabError(f"unknown model {name!r}.{hint}") from None


def check_options(info: ModelInfo, options: dict) -> None:
    """Refuse options the builder does not take, in one line naming the ones it does."""
    valid = info.options
    unknown = [key for key in options if valid is not None and key not in valid]
    if unknown:
        assert valid is not None  # unknown is empty when the builder does not say
        listed = ", ".join(["pretrained", *valid])
        raise ResnetlabError(
            f"{info.name} has no option {', '.join(map(repr, unknown))}; its options are "
            f"{listed}." + close_matches(unknown[0], list(valid))
        )


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    pretrained: bool | str | Path = False,
    **options,
) -> nn.Module:
    """Build a registered model, optionally loading weights.

    ``pretrained`` may be a local checkpoint path (torch or safetensors), a ``file://`` or
    ``http(s)://`` URL, or a weights tag such as ``"imagenet"``. A ``num_classes`` other than
    the weights' own keeps the backbone and gives a freshly initialised head. ``options`` are
    checked against the builder's signature.
    """
    info = model_info(name)
    if num_classes is not None and num_classes < 1:
        raise ResnetlabError(f"num_classes must be at least 1, got {num_classes}.")
    check_options(info, options)
    target_classes = num_classes if num_classes is not None else info.num_classes
    try:
        model = info.builder(num_classes=target_classes, **options)
    except ValueError as exc:
        raise ResnetlabError(f"{name}: {exc}.") from None
    # nn.Module types its attributes as Tensor | Module, but any value may be set on it
    model.info = info  # type: ignore[assignment]
    if pretrained:
        load_pretrained(model, pretrained, num_classes=num_classes)
    return model
