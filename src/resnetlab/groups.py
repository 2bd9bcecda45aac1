"""The setting groups every command is made of: data, seed, model and weights, device, batch,
split and subsamples, image size, run folder, inference and the deployment prevalence. Each
setting is declared here once, with its help and bounds; a command's settings inherit the
groups it needs (``TrainConfig``) or take them with ``settings.compose`` (where a command keeps
another default), so ``--device`` or ``--data`` means the same thing, with the same help, in
every command.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .errors import ResnetlabError
from .settings import check_settings, setting

ON_BAD = ("error", "skip")
SPLITS = ("train", "val", "test")
DEVICE_TYPES = ("cpu", "cuda", "mps")
# What runs a model for inference (models/inference.py): auto is ONNX Runtime where it is
# installed and the device is the CPU, else torch with BatchNorm folded.
ENGINES = ("auto", "torch", "onnxruntime")


def check_device(name: str) -> None:
    """Refuse a device name torch cannot read, or a GPU this machine does not have."""
    if name == "auto":
        return
    try:
        kind = torch.device(name).type
    except (RuntimeError, ValueError):
        kind = None
    if kind not in DEVICE_TYPES:
        raise ResnetlabError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N.")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ResnetlabError(f"device {name!r} asked for but no GPU is visible; use --device cpu.")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ResnetlabError(f"device {name!r} asked for but MPS is not available; use cpu.")


def device_name(name: str) -> str:
    """The device ``name`` stands for: ``auto`` is ``cuda`` when a GPU is visible, else ``cpu``."""
    check_device(name)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def check_groups(settings: Any) -> None:
    """The checks of every group a settings object holds: bounds and choices, the device, and
    one output format at most."""
    check_settings(settings)
    device = getattr(settings, "device", None)
    if isinstance(device, str):
        check_device(device)
    if getattr(settings, "json", False) and getattr(settings, "csv", False):
        raise ResnetlabError("--json and --csv both given; choose one.")


class Checked:
    """Settings checked when they are made (``check_groups``); a command's settings class made
    with ``compose`` inherits it too."""

    def __post_init__(self) -> None:
        check_groups(self)


@dataclass
class DataSettings(Checked):
    """Where the images come from and what to do with one that cannot be read."""

    data: str = setting(
        "cifar10", "data: cifar10, cifar100, fashion-mnist (Debian's dataset-fashion-mnist), an "
        "image folder or archive (train/, optional val/ test/, or manifest.csv), a MedMNIST .npz "
        "or a folder of IDX files (MNIST layout); degradation and demo also take synthetic "
        "(shapes made on the spot, no download)",
    )  # fmt: skip
    data_root: str | None = setting(
        None, "folder for downloads and caches (default $RESNETLAB_HOME/data)"
    )
    on_bad: str = setting(
        "error", "unreadable image files: error, or skip them with a warning", choices=ON_BAD
    )


@dataclass
class SeedSettings(Checked):
    """The one seed of a run."""

    seed: int = setting(
        0, "seed of the split, initialisation, order, augmentation and draws", ">= 0"
    )


@dataclass
class SeedsSettings(Checked):
    """How many seeds a result is repeated over, so its spread is measured, not assumed."""

    seeds: int = setting(
        1, "repeat with this many seeds (seed, seed+1, ...); results give mean ± sd and a 95 % "
        "interval over them", ">= 1",
    )  # fmt: skip


@dataclass
class ModelSettings(Checked):
    """Which network, with which options, starting from which weights."""

    model: str = setting(
        "resnet20", "registered model name, e.g. resnet20, plain56, resnet18 (studies of a "
        "trained net: also a run folder)",
    )  # fmt: skip
    model_options: dict[str, Any] = setting(
        help="a model option, e.g. shortcut=B (repeatable)", factory=dict
    )
    pretrained: str | None = setting(
        None, "initial weights: a tag (imagenet), URL, checkpoint file, run folder or "
        "hf-hub:ORG/NAME; none: random initialisation; auto (fine-tuning): ImageNet weights "
        "where published for the model, else none",
    )  # fmt: skip


@dataclass
class ModelsSettings(Checked):
    """Several networks side by side."""

    models: list[str] = setting(
        help="model names (studies of trained nets: also run folders)", factory=list
    )


@dataclass
class DeviceSettings(Checked):
    """Where the work runs."""

    device: str = setting("auto", "auto (a GPU when present, else the CPU), cpu, cuda or cuda:N")


@dataclass
class BatchSettings(Checked):
    """How many images go through the network at once."""

    batch_size: int = setting(
        128, "images per batch: in training the GLOBAL batch of one optimiser step (split over "
        "all processes); elsewhere one forward pass (export: the example input's)", ">= 1",
    )  # fmt: skip


@dataclass
class SplitSettings(Checked):
    """Which split of the data is measured."""

    split: str = setting(
        "test", "split to measure; on a run's own data, val and test are the run's, re-created "
        "when it held them out", choices=SPLITS,
    )  # fmt: skip


@dataclass
class SubsampleSettings(Checked):
    """How many images of a split a run uses: fixed stratified subsamples, for speed."""

    train_size: int | None = setting(
        None, "training images: a fixed stratified subsample of the training split "
        "(synthetic data: the images made)", ">= 1",
    )  # fmt: skip
    eval_size: int | None = setting(
        None, "images measured: a fixed stratified subsample of each split measured", ">= 1",
    )  # fmt: skip


@dataclass
class ImageSizeSettings(Checked):
    """The side of the square images a network is given."""

    image_size: int | None = setting(None, "input size in px", ">= 8")


@dataclass
class RunFolderSettings(Checked):
    """The folder a run writes, and whether it continues one."""

    out_dir: str = setting(
        "runs/run", "where the command writes: its run folder (export: the file, or the folder "
        "of --format hub; compare-runs: a JSON file)", flag="--out",
    )  # fmt: skip
    resume: bool = setting(False, "continue the run in --out; its settings must be the run's own")
    progress: bool = setting(True, "show a progress bar")


@dataclass
class InferenceSettings(Checked):
    """Which trained model is applied to images, and how."""

    source: str = setting(
        help="a run folder (resnetlab train or finetune), a model file beside its card, or a "
        "registered model name"
    )
    tta: bool = setting(False, "average each prediction with that of the mirror image")
    top_k: int = setting(3, "classes shown per image", ">= 1")
    engine: str = setting(
        "auto", "what runs the model: auto (ONNX Runtime on the CPU where installed, else "
        "torch), torch (BatchNorm folded, channels-last) or onnxruntime", choices=ENGINES,
    )  # fmt: skip


@dataclass
class PrevalenceSettings(Checked):
    """Where a two-class model will be used: how common the positive class is there."""

    prevalence: float | None = setting(
        None, "deployment prevalence of the positive class: PPV and NPV are reported at it, "
        "since a balanced test set overstates PPV (two-class models)", "(0, 1)",
    )  # fmt: skip


@dataclass
class ImagesSettings(Checked):
    """The images a command reads."""

    images: list[str] = setting(help="image files, folders or globs", factory=list)


@dataclass
class OutputSettings(Checked):
    """How a result is printed: a table or lines (default), JSON or CSV."""

    json: bool = setting(False, "print the result as JSON")
    csv: bool = setting(False, "print the result as CSV")
