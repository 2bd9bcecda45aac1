"""How raw images become a model's inputs, as one record: the catalogue's published weights,
fine-tuning, prediction and evaluation all use it, so they can never disagree. A leaf module
(it imports only ``errors``), with the one copy of the ImageNet mean and std."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ResnetlabError

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet channel statistics
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


def resize_for(crop: int) -> int:
    """The shorter side to resize to before a centre crop of ``crop``: the ImageNet ratio
    256/224 for inputs of 224 px and more; smaller inputs are resized whole, never cropped."""
    return round(crop * 256 / 224) if crop >= 224 else crop


@dataclass
class Preprocessing:
    """Resize the shorter side to ``resize``, centre-crop ``crop``, give the model's channel
    count, then normalise (a per-pixel mean when ``pixel_mean`` is set, as He et al.'s CIFAR
    nets were trained, then mean/std); stored in model cards and weights metadata."""

    crop: int
    resize: int
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    interpolation: str = "bilinear"
    channels: int = 3  # the model's input channels
    grey: str | None = None  # "repeat" or "sum" when the training images were greyscale
    notes: list[str] = field(default_factory=list)  # why these values were chosen
    pixel_mean: list | None = None  # (channels, crop, crop) on the [0, 1] scale, or None

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ResnetlabError(
                f"interpolation {self.interpolation!r} is unknown; use {', '.join(INTERPOLATIONS)}."
            )
        if self.crop < 1 or self.resize < self.crop:
            raise ResnetlabError(
                f"need 1 <= crop <= resize, got crop {self.crop}, resize {self.resize}."
            )
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ResnetlabError(
                f"mean/std need {self.channels} values (one per input channel), got "
                f"{len(self.mean)} and {len(self.std)}."
            )
        pixel = self.pixel_mean
        if pixel is not None and not (
            len(pixel) == self.channels and len(pixel[0]) == self.crop == len(pixel[0][0])
        ):
            raise ResnetlabError(
                f"pixel_mean must be {self.channels} x {self.crop} x {self.crop} (channels x "
                "crop x crop) on the [0, 1] scale."
            )

    @classmethod
    def for_input(
        cls, channels: int, size: int, mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None, pixel_mean: list | None = None,
    ) -> Preprocessing:  # fmt: skip
        """A ``size``-px input of ``channels`` (resized by :func:`resize_for`), normalised by
        ``mean``/``std`` (none: 0 and 1) after the optional per-pixel mean."""
        return cls(size, resize_for(size), list(mean or [0.0] * channels),
                   list(std or [1.0] * channels), channels=channels,
                   pixel_mean=pixel_mean)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Preprocessing:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in known})

    def describe(self) -> str:
        grey = {"repeat": ", grey images repeated", "sum": ", grey images as 1 channel"}.get(
            self.grey or "", ""
        )
        pixel = "per-pixel mean subtracted, " if self.pixel_mean is not None else ""
        return (
            f"resize {self.resize} + centre crop {self.crop} ({self.interpolation}), "
            f"{self.channels} channel(s){grey}, {pixel}mean {_short(self.mean)}, "
            f"std {_short(self.std)}"
        )


def _short(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"
