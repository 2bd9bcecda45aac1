"""One way to build any model: ``create_model(name, ...)`` and ``list_models(pattern)``.

Each entry carries metadata (family, depth, skips, input size) and the published accuracy with
its source. Published figures are quoted from papers and torchvision's weights metadata; they
are never measured by resnetlab.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from ..errors import ResnetlabError, close_matches
from . import cifar, resnet, vgg

TV = "torchvision weights metadata (IMAGENET1K_V1, acc@1, single 224 crop)"
HE2015_T2 = "He et al. 2015, Table 2 (top-1 error, 10-crop, shortcut A)"
HE2015_T3 = "He et al. 2015, Table 3 (top-1 error, 10-crop)"
HE2015_T6 = "He et al. 2015, Table 6 (CIFAR-10 test error)"
HE2016 = "He et al. 2016, Table 3 (CIFAR-10 test error, pre-activation)"


@dataclass(frozen=True)
class Published:
    """A figure quoted from a publication, never measured here."""

    metric: str
    value: float
    source: str

    def __str__(self) -> str:
        return f"{self.metric} {self.value:g} (published: {self.source})"


@dataclass(frozen=True)
class ModelInfo:
    """What is known about a registered model before it is built."""

    name: str
    family: str
    depth: int
    skips: bool
    input_size: tuple[int, int, int]
    num_classes: int
    builder: Callable[..., nn.Module] = field(repr=False)
    published: tuple[Published, ...] = ()
    torchvision_name: str | None = None

    @property
    def description(self) -> str:
        return (self.builder.__doc__ or "").strip().splitlines()[0]


_REGISTRY: dict[str, ModelInfo] = {}


def register(info: ModelInfo) -> None:
    if info.name in _REGISTRY:
        raise ValueError(f"model {info.name!r} is already registered")
    _REGISTRY[info.name] = info


def _imagenet(name: str, builder, family: str, depth: int, skips: bool, published=(), tv=None):
    register(ModelInfo(name, family, depth, skips, (3, 224, 224), 1000, builder, published, tv))


def _top1(acc: float, source: str = TV) -> tuple[Published, ...]:
    return (Published("ImageNet top-1 accuracy %", acc, source),)


def _top1_from_err(err: float, source: str) -> tuple[Published, ...]:
    return (Published("ImageNet top-1 error %", err, source),)


def _cifar_err(err: float, source: str) -> tuple[Published, ...]:
    return (Published("CIFAR-10 test error %", err, source),)


_TV_TOP1 = {"resnet18": 69.758, "resnet34": 73.314, "resnet50": 76.130, "resnet101": 77.374,
            "resnet152": 78.312, "wide_resnet50_2": 78.468, "resnext50_32x4d": 77.618,
            "vgg11": 69.020, "vgg13": 69.928, "vgg16": 71.592, "vgg19": 72.376,
            "vgg11_bn": 70.370, "vgg13_bn": 71.586, "vgg16_bn": 73.360,
            "vgg19_bn": 74.218}  # fmt: skip
_PAPER_ERR = {"resnet34": (25.03, HE2015_T2), "resnet50": (22.85, HE2015_T3),
              "resnet101": (21.75, HE2015_T3), "resnet152": (21.43, HE2015_T3),
              "resnet18": (27.88, HE2015_T2), "plain18": (27.94, HE2015_T2),
              "plain34": (28.54, HE2015_T2)}  # fmt: skip
_CIFAR_ERR = {"resnet20": 8.75, "resnet32": 7.51, "resnet44": 7.17, "resnet56": 6.97,
              "resnet110": 6.43, "resnet1202": 7.93}  # fmt: skip
_PREACT_ERR = {110: 6.37, 164: 5.46, 1001: 4.92}
_DEPTH = {"18": 18, "34": 34, "50": 50, "101": 101, "152": 152}


def _published(name: str) -> tuple[Published, ...]:
    items = list(_top1(_TV_TOP1[name])) if name in _TV_TOP1 else []
    if name in _PAPER_ERR:
        items += _top1_from_err(*_PAPER_ERR[name])
    return tuple(items)


for _d in _DEPTH:
    _imagenet(f"resnet{_d}", getattr(resnet, f"resnet{_d}"), "resnet", int(_d), True,
              _published(f"resnet{_d}"), f"resnet{_d}")  # fmt: skip
    _imagenet(f"plain{_d}", getattr(resnet, f"plain{_d}"), "plain", int(_d), False,
              _published(f"plain{_d}"))  # fmt: skip
_imagenet("wide_resnet50_2", resnet.wide_resnet50_2, "resnet", 50, True,
          _published("wide_resnet50_2"), "wide_resnet50_2")  # fmt: skip
_imagenet("resnext50_32x4d", resnet.resnext50_32x4d, "resnet", 50, True,
          _published("resnext50_32x4d"), "resnext50_32x4d")  # fmt: skip
for _name, _builder in vgg.VGG_BUILDERS.items():
    _depth = int(_name[3:5])
    _imagenet(_name, _builder, "vgg", _depth, False, _published(_name), _name)
for _name, _builder in cifar.CIFAR_BUILDERS.items():
    _skips = _name.startswith("resnet")
    _depth = int(_name.removeprefix("resnet").removeprefix("plain"))
    _pub = _cifar_err(_CIFAR_ERR[_name], HE2015_T6) if _name in _CIFAR_ERR else ()
    register(ModelInfo(_name, "cifar-resnet" if _skips else "cifar-plain", _depth, _skips,
                       (3, 32, 32), 10, _builder, _pub))  # fmt: skip
for _depth, _err in _PREACT_ERR.items():
    _name = f"preact_resnet{_depth}"
    register(ModelInfo(_name, "cifar-preact", _depth, True, (3, 32, 32), 10,
                       getattr(cifar, _name), _cifar_err(_err, HE2016)))  # fmt: skip


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
    the weights' own keeps the backbone and gives a freshly initialised head.
    """
    info = model_info(name)
    target_classes = num_classes if num_classes is not None else info.num_classes
    if num_classes is not None and num_classes < 1:
        raise ResnetlabError(f"num_classes must be at least 1, got {num_classes}.")
    try:
        model = info.builder(num_classes=target_classes, **options)
    except TypeError as exc:
        message = str(exc)
        if "unexpected keyword argument" not in message and "multiple values" not in message:
            raise
        raise ResnetlabError(
            f"{name}: bad option ({message.split(': ', 1)[-1]}). Options for {name}: "
            f"num_classes, pretrained, in_channels, " + ", ".join(_model_options(info)) + "."
        ) from None
    except ValueError as exc:
        raise ResnetlabError(f"{name}: {exc}.") from None
    model.info = info  # type: ignore[attr-defined]
    if pretrained:
        from ..weights import load_pretrained

        load_pretrained(model, pretrained, num_classes=num_classes)
    return model


def _model_options(info: ModelInfo) -> list[str]:
    """Keyword options of the model class behind a builder (for error messages and help)."""
    cls = {"resnet": resnet.ResNet, "plain": resnet.ResNet, "vgg": vgg.VGG,
           "cifar-resnet": cifar.CifarResNet, "cifar-plain": cifar.CifarResNet,
           "cifar-preact": cifar.PreActResNet}[info.family]  # fmt: skip
    skip = {"self", "block", "layers", "depth", "config", "num_classes", "in_channels"}
    return [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name not in skip and p.kind is p.KEYWORD_ONLY
    ]
