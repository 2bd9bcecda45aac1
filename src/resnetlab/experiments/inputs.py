"""The settings the studies share beyond the groups of ``groups.py``, declared once (a study's
settings class derives from these, or composes them, so mypy and the flags see every field),
and the checks of those inputs made before any work."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.bundle import NAMES
from ..errors import ResnetlabError, close_matches
from ..groups import DataSettings, ModelSettings, ModelsSettings, SeedSettings, SeedsSettings
from ..settings import Default, compose, setting
from .runner import fingerprint
from .trained import NORMALISATIONS, Subject


@dataclass
@compose(DataSettings, SeedSettings, SeedsSettings, only=("data", "seed", "seeds"))
class StudyData:
    """The images a study measures on (the data group's ``data``), how they are normalised, and
    the seed of its draws (the seed group's), repeated over ``seeds`` seeds (the seeds
    group's)."""

    normalisation: str = setting(
        "auto", "input normalisation: auto = a run's own, else ImageNet mean/std",
        choices=NORMALISATIONS,
    )  # fmt: skip

    if TYPE_CHECKING:  # added by compose (this block never runs)
        data: str = setting()
        seed: int = setting()
        seeds: int = setting()


@dataclass
class MlpSettings:
    """The MLP stacks the studies at initialisation build beside the conv nets."""

    mlp_width: int = setting(64, "width of the MLP stacks", ">= 1")


@dataclass
class DepthSettings:
    """The depths a study builds its nets at."""

    depths: list[int] = setting(
        help="depths of the nets (6n+2 for the CIFAR-style conv nets)", bounds=">= 1",
        factory=list,
    )  # fmt: skip


@dataclass
class BlockDraws:
    """Random sets of blocks drawn per set size k (lesion, paths)."""

    draws: int = setting(4, "random sets of k blocks drawn per k", ">= 1")


@dataclass
@compose(ModelSettings, only=("model", "pretrained"))
class TrainedNet(StudyData):
    """One net to study (a model name with its weights, or a training run folder: the model
    group's ``model`` and ``pretrained``) and its data."""

    if TYPE_CHECKING:  # added by compose (this block never runs)
        model: str = setting()
        pretrained: str | None = setting()


@dataclass
@compose(ModelsSettings, defaults={"models": Default(["resnet20", "plain20"], "resnet20 plain20")})
class TrainedNets(StudyData):
    """Several nets to study side by side (model names or run folders) with their weights, and
    their data."""

    pretrained: list[str] = setting(
        help="weights for a model name: file, URL or tag (e.g. cifar10); once for all names, "
        "or once per model in order (none for untrained)", factory=list,
    )  # fmt: skip

    if TYPE_CHECKING:  # added by compose (this block never runs)
        models: list[str] = setting()


def pretrained_for(models: list[str], given: list[str]) -> list[str | None]:
    """The weights of each of ``models``: one ``--pretrained`` value for every model name (a run
    folder brings its own), or one per model in order; ``none`` is no weights."""
    if len(given) > 1 and len(given) != len(models):
        raise ResnetlabError(
            f"{len(given)} --pretrained values for {len(models)} models. Give one for all, "
            "or one per model in the same order."
        )
    if len(given) > 1:
        values: list[str | None] = list(given)
    else:
        first = given[0] if given else None
        values = [None if Path(m).is_dir() else first for m in models]
    return [v if v not in ("none", "") else None for v in values]


def nets_inputs(subjects: list[Subject], data: str) -> dict[str, str | None]:
    """What a study of several nets starts from: each net's weights and the data."""
    found = {f"weights {i + 1}": fingerprint(s.weights) for i, s in enumerate(subjects)}
    return found | {"data": fingerprint(data, content=False)}


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
