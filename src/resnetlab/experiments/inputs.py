"""The settings the studies of trained nets share, declared once (a study's settings class
derives from these groups, so mypy and the flags see every field), and the checks of those
inputs made before any work."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data.bundle import NAMES
from ..errors import ResnetlabError, close_matches
from ..settings import setting
from .trained import NORMALISATIONS


@dataclass
class StudyData:
    """The images a study measures on, how they are normalised, and the seed of its draws."""

    data: str = setting("cifar10", "data set name or path")
    normalisation: str = setting(
        "auto", "input normalisation: auto = a run's own, else ImageNet mean/std",
        choices=NORMALISATIONS,
    )  # fmt: skip
    seed: int = setting(0, "seed of subsamples and draws", ">= 0")


@dataclass
class TrainedNet(StudyData):
    """One net to study (a model name with its weights, or a training run folder) and its data."""

    model: str = setting("resnet20", "model name or run folder")
    pretrained: str | None = setting(
        None, "weights for a model name: file, URL or tag (e.g. cifar10)"
    )


def check_data(spec: str) -> None:
    """Refuse a data set that is neither a known name nor an existing path, before any work."""
    key = spec.lower().replace("-", "").replace("_", "")
    if key in {n.replace("-", "") for n in NAMES}:
        return
    if not Path(spec).expanduser().exists():
        raise ResnetlabError(
            f"no data set named or found at {spec!r}{close_matches(spec, NAMES)}; use one of "
            f"{', '.join(NAMES)} or a path to a data folder or file"
        )
