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


@dataclass
class Preprocessing:
    """Resize the shorter side to ``resize``, centre-crop ``crop``, give the model's channel
    count, then normalise by mean/std; stored in model cards and weights metadata."""

    crop: int
    resize: int
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    interpolation: str = "bilinear"
    channels: int = 3  # the model's input channels
    grey: str | None = None  # "repeat" or "sum" when the training images were greyscale
    notes: list[str] = field(default_factory=list)  # why these values were chosen

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
        return (
            f"resize {self.resize} + centre crop {self.crop} ({self.interpolation}), "
            f"{self.channels} channel(s){grey}, mean {_short(self.mean)}, std {_short(self.std)}"
        )


def _short(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"
