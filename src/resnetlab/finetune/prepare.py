"""Getting data ready for fine-tuning: a validation split, class counts, the preprocessing the
weights expect, and the images resized once and held in memory at the model's input size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..console import Bar
from ..data import DataBundle, FileImageSet, ImageSet, open_data
from ..data.folder import BAD_ERRORS, report_bad
from ..data.preprocess import Preprocessing, load_image, prepare_images
from ..errors import ResnetlabError
from ..preprocessing import IMAGENET_MEAN, IMAGENET_STD, resize_for
from ..train.prepare import channel_stats
from ..weights import load_checkpoint
from .splitting import check_no_leak, fold_split, hold_out

SPLITS = ("train", "val", "test")
MEMORY_LIMIT = 6 * 2**30  # bytes of uint8 images held in memory at the input size
IMAGENET = (list(IMAGENET_MEAN), list(IMAGENET_STD))


def open_finetune_data(
    spec: str,
    val_size: float,
    seed: int,
    on_bad: str = "error",
    *,
    test_size: float = 0.0,
    folds: int = 1,
    fold: int | None = None,
) -> tuple[DataBundle, list[str]]:
    """Open the data; hold out a test split (``test_size``, when the data has none) and a
    validation split (when it has none), both stratified and grouped; or make ``fold`` of
    ``folds`` the validation split. ``on_bad`` as for ``open_data``."""
    bundle = open_data(spec, seed=seed, on_bad=on_bad)
    notes = []
    if test_size and bundle.test is None:
        bundle.train, bundle.test = hold_out(bundle.train, test_size, seed + 1, "test")
        bundle.description += f"; test = {len(bundle.test):,} held out of train (seed {seed})"
        notes.append(
            f"no test split in the data: held out {len(bundle.test):,} images ({test_size:g}, "
            "stratified, grouped when the data has groups)"
        )
    if fold is not None:
        notes += fold_split(bundle, folds, fold, seed)
    elif bundle.val is None or len(bundle.val) == 0:
        bundle.train, bundle.val = hold_out(bundle.train, val_size, seed, "val")
        bundle.description += f"; val = {len(bundle.val):,} held out of train (seed {seed})"
        notes.append(
            f"no validation split in the data: held out {len(bundle.val):,} training "
            f"images ({val_size:g}, stratified, grouped when the data has groups, seed {seed})"
        )
    leak = check_no_leak(bundle)
    notes += [leak] if leak else []
    return bundle, notes


def auto_monitor(monitor: str, counts: dict[str, int]) -> tuple[str, str | None]:
    """``auto``: balanced accuracy, or on imbalanced two-class data (largest class over 1.5
    times the smallest) PR-AUC, which a majority-class guesser cannot score well on."""
    if monitor != "auto":
        return monitor, None
    values = list(counts.values())
    imbalanced = min(values) == 0 or max(values) / min(values) > 1.5
    if imbalanced and len(values) == 2:
        return "pr_auc", (
            f"--monitor auto: the training classes are imbalanced ({', '.join(map(str, values))}"
            "), so the best model is chosen by validation PR-AUC, not accuracy"
        )
    return "balanced_accuracy", "--monitor auto: validation balanced accuracy"


def class_counts(bundle: DataBundle) -> dict[str, dict[str, int]]:
    """{split: {class: count}} for every present split."""
    out = {}
    for name in SPLITS:
        part = getattr(bundle, name)
        if part is not None:
            counts = torch.bincount(part.labels, minlength=len(bundle.classes)).tolist()
            out[name] = dict(zip(bundle.classes, counts, strict=True))
    return out


def inverse_frequency(counts: dict[str, int]) -> list[float]:
    """Loss weights n / (K * n_c): 1 for every class when balanced (scikit-learn's "balanced")."""
    n, k = sum(counts.values()), len(counts)
    if min(counts.values()) == 0:
        empty = [c for c, v in counts.items() if v == 0]
        raise ResnetlabError(f"class {empty[0]!r} has no training images; class weights need some.")
    return [n / (k * c) for c in counts.values()]


def oversample(train: ImageSet, seed: int) -> ImageSet:
    """Repeat each class's images (plus a seeded random remainder) up to the largest class."""
    generator = torch.Generator().manual_seed(seed)
    counts = torch.bincount(train.labels)
    target = int(counts.max())
    index = []
    for c in range(len(counts)):
        members = (train.labels == c).nonzero().flatten()
        if len(members) == 0:
            continue
        repeats, rest = divmod(target, len(members))
        extra = members[torch.randperm(len(members), generator=generator)[:rest]]
        index.append(torch.cat([members.repeat(repeats), extra]))
    return train.subset(torch.cat(index).sort().values, f"{train.source} (class-balanced)")


def weights_preprocessing(model: nn.Module) -> dict[str, Any] | None:
    """The preprocessing stored with the loaded weights (catalog entry or file metadata)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    prep = cfg.get("preprocessing")
    return dict(prep) if isinstance(prep, dict) else None


def engine_checkpoint_norm(path: Path) -> tuple[list[float], list[float]] | None:
    """Mean/std a project training checkpoint (``resnetlab train``) normalised its inputs with."""

    if path.suffix == ".safetensors":
        return None
    prep = load_checkpoint(path).get("preprocess")
    if not isinstance(prep, dict):
        return None
    if prep.get("mean") is not None:
        std = prep.get("std") or [1.0] * len(prep["mean"])
        return [float(v) for v in prep["mean"]], [float(v) for v in std]
    if prep.get("pixel_mean") is not None:  # per-pixel mean subtraction: use its channel means
        pixel = prep["pixel_mean"]
        return pixel.float().mean((1, 2)).tolist(), [1.0] * int(pixel.shape[0])
    return None


def choose_preprocessing(
    model: nn.Module,
    bundle: DataBundle,
    *,
    weights_file: Path | None,
    pretrained: bool,
    channels: int,
    grey: str | None,
    image_size: int | None,
) -> Preprocessing:
    """Input size, interpolation and normalisation from the weights' metadata, else sensible
    defaults; each choice is recorded in ``notes`` (which the log prints)."""
    notes: list[str] = []
    native = max(bundle.image_size)
    meta = weights_preprocessing(model) if pretrained else None
    norm = (
        engine_checkpoint_norm(weights_file) if weights_file is not None and meta is None else None
    )
    interpolation = "bilinear"
    mean: list[float] | None
    std: list[float] | None
    if meta is not None:
        crop, resize = int(meta.get("crop", 224)), int(meta.get("resize", 256))
        mean, std = list(meta.get("mean", IMAGENET[0])), list(meta.get("std", IMAGENET[1]))
        interpolation = meta.get("interpolation", "bilinear")
        notes.append(
            f"preprocessing from the weights' metadata: resize {resize}, crop {crop}, "
            f"{interpolation}, mean/std {_fmt(mean)}/{_fmt(std)}"
        )
    elif pretrained:
        info: Any = model.info  # set by create_model
        crop = info.input_size[-1]
        resize = resize_for(crop)
        mean, std = norm if norm is not None else IMAGENET
        where = "the checkpoint's training run" if norm is not None else "ImageNet (assumed)"
        notes.append(
            f"weights carry no preprocessing metadata: input size {crop} (the model's "
            f"nominal size), mean/std from {where}"
        )
    else:
        crop = resize = native
        mean = std = None  # filled from the prepared training images
        notes.append(f"from scratch: native image size {native}, mean/std of the training images")
    if image_size is not None:
        crop, resize = image_size, round(image_size * resize / crop)
        notes.append(f"--image-size {image_size}: input {crop} px (resize {resize})")
    if native <= crop:
        resize = crop  # small images are upscaled whole rather than cropped
        if native < crop:
            notes.append(f"{native}-px images upscaled to {crop} px ({interpolation})")
    if mean is not None:
        assert std is not None  # mean and std are set together
        mean, std = _fit_channels(mean, channels), _fit_channels(std, channels)
    prep = Preprocessing(
        crop,
        resize,
        mean or [0.0] * channels,
        std or [1.0] * channels,
        interpolation,
        channels,
        grey,
        notes,
    )
    if mean is None:
        prep.notes.append("normalisation: computed after resizing")
        prep.mean, prep.std = [], []  # marker for prepare_bundle
    return prep


def _fit_channels(values: list[float], channels: int) -> list[float]:
    values = [float(v) for v in values]
    if len(values) == channels:
        return values
    if channels == 1:
        return [sum(values) / len(values)]  # summed stem weights: the average statistics
    return values[:1] * channels


def _fmt(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def prepare_bundle(bundle: DataBundle, prep: Preprocessing) -> DataBundle:
    """Every split resized and channel-matched once, held in memory as uint8."""
    sets: dict[str, ImageSet | None] = {}
    for name in SPLITS:
        part = getattr(bundle, name)
        sets[name] = None if part is None else _prepare_split(part, prep)
    train = sets["train"]
    assert train is not None  # every bundle has a train split
    if not prep.mean:  # from scratch: channel statistics of the prepared training images

        prep.mean, prep.std = channel_stats(train.images)
        prep.notes[-1] = (
            f"normalisation: training-image mean/std {_fmt(prep.mean)}/{_fmt(prep.std)}"
        )
    return DataBundle(
        train,
        sets["val"],
        sets["test"],
        list(bundle.classes),
        prep.channels,
        (prep.crop, prep.crop),
        bundle.source,
        bundle.description,
    )


def _prepare_split(part: ImageSet | FileImageSet, prep: Preprocessing) -> ImageSet:
    if isinstance(part, ImageSet):
        return ImageSet(prepare_images(part.images, prep), part.labels, part.classes, part.source)
    need = len(part) * prep.channels * prep.crop**2
    if need > MEMORY_LIMIT:
        raise ResnetlabError(
            f"{part.source}: {len(part):,} images at {prep.crop} px need {need / 2**30:.1f} GiB "
            "in memory; pass a smaller --image-size or fine-tune on a subset."
        )
    images, labels, bad = [], [], []
    for path, label in Bar(
        list(zip(part.paths, part.labels.tolist(), strict=True)),
        desc=f"resizing {Path(part.source).name}",
        unit="img",
    ):
        try:
            image = load_image(path, prep.resize)
        except BAD_ERRORS:
            bad.append(str(path))
            continue
        images.append(prepare_images(image[None], prep)[0])
        labels.append(label)
    report_bad(part.source, bad, part.on_bad)  # every bad file named, not just the first
    if not images:
        raise ResnetlabError(f"{part.source}: none of the images could be read; check the files")
    return ImageSet(torch.stack(images), torch.tensor(labels), part.classes, part.source)
