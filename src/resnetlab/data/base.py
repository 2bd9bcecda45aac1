"""The data containers shared by every format, the data home, and the held-out validation split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..download import resnetlab_home
from ..errors import ResnetlabError

SPLITS = ("train", "val", "test")


def data_home(root: Path | str | None = None) -> Path:
    """Where downloads and caches go: ``root``, else ``$RESNETLAB_HOME/data`` (by default
    under the user's cache folder)."""
    if root is not None:
        return Path(root).expanduser()
    return resnetlab_home() / "data"


@dataclass
class ImageSet:
    """One split held in memory: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    source: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor, source: str) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index], self.classes, source)


@dataclass
class FileImageSet:
    """One split of large images kept on disk as (path, label) pairs, decoded on demand."""

    paths: list[Path]
    labels: torch.Tensor
    classes: list[str]
    source: str
    in_channels: int = 3
    on_bad: str = "error"  # what the loader does with an unreadable file: "error" or "skip"

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor, source: str) -> FileImageSet:
        paths = [self.paths[i] for i in index.tolist()]
        return FileImageSet(
            paths, self.labels[index], self.classes, source, self.in_channels, self.on_bad
        )


@dataclass
class DataBundle:
    """A data set ready for training: its splits, class names and where it came from."""

    train: ImageSet | FileImageSet
    val: ImageSet | FileImageSet | None
    test: ImageSet | FileImageSet | None
    classes: list[str]
    in_channels: int
    image_size: tuple[int, int]
    source: str
    description: str

    def summary(self) -> str:
        """A few lines for reports: description, source, split sizes and image shape."""
        sizes = ", ".join(
            f"{name} {len(part):,}"
            for name, part in (("train", self.train), ("val", self.val), ("test", self.test))
            if part is not None
        )
        h, w = self.image_size
        return (
            f"{self.description}\n  source: {self.source}\n  splits: {sizes}\n"
            f"  images: {self.in_channels}x{h}x{w}, {len(self.classes)} classes"
        )


def check_labels(labels: torch.Tensor, num_classes: int, where: str) -> None:
    """Refuse labels outside 0..num_classes-1, naming the first offender."""
    if labels.numel() == 0:
        return
    bad = (labels < 0) | (labels >= num_classes)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ResnetlabError(
            f"{where}: label {int(labels[i])} at index {i} is outside 0..{num_classes - 1}; "
            f"pass class_names with {int(labels.max()) + 1} names or fix the labels"
        )


def val_indices(labels: torch.Tensor, val_size: int | float, seed: int) -> torch.Tensor:
    """Indices of a stratified validation sample of ``val_size`` (count or fraction), by seed."""
    n = int(labels.shape[0])
    if isinstance(val_size, float) and not isinstance(val_size, bool):
        if not 0.0 < val_size < 1.0:
            raise ResnetlabError(f"val_size {val_size} must be a fraction in (0, 1) or a count")
        count = round(val_size * n)
    else:
        count = int(val_size)
    if not 0 < count < n:
        raise ResnetlabError(f"val_size {val_size} must leave 1..{n - 1} of {n} training images")
    generator = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(labels, return_counts=True)
    # Largest-remainder allocation so every class gets its share and the total is exact.
    share = counts.double() * count / n
    take = share.floor().long()
    rest = count - int(take.sum())
    if rest:
        order = torch.argsort(share - take.double(), descending=True, stable=True)
        take[order[:rest]] += 1
    chosen = []
    for cls, k in zip(classes.tolist(), take.tolist(), strict=True):
        members = (labels == cls).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:k]])
    return torch.cat(chosen).sort().values


def split_val(
    train: ImageSet | FileImageSet, val_size: int | float, seed: int
) -> tuple[ImageSet | FileImageSet, ImageSet | FileImageSet]:
    """Hold ``val_size`` images out of ``train`` (stratified, deterministic by seed)."""
    held = val_indices(train.labels, val_size, seed)
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[held] = False
    tag = f"val_size={val_size}, seed={seed}"
    return (
        train.subset(keep.nonzero().flatten(), f"{train.source} minus held-out val ({tag})"),
        train.subset(held, f"{train.source} held-out val ({tag})"),
    )
