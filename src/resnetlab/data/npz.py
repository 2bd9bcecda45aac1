"""MedMNIST-style ``.npz`` files: ``{train,val,test}_images`` and ``{train,val,test}_labels``."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import ResnetlabError
from .base import SPLITS, ImageSet, check_labels

# MedMNIST files carry no class names; these are the published ones, by file-name prefix.
KNOWN_CLASSES = {
    "pneumoniamnist": ["normal", "pneumonia"],
    "breastmnist": ["malignant", "normal, benign"],
}


def known_classes(path: Path) -> list[str] | None:
    """Published class names for a MedMNIST file recognised by its name, else None."""
    name = path.name.lower()
    return next((v for k, v in KNOWN_CLASSES.items() if name.startswith(k)), None)


def to_nchw(images: np.ndarray, where: str) -> torch.Tensor:
    """uint8 (N,H,W), (N,H,W,1|3) or (N,1|3,H,W) arrays to a uint8 tensor (N, C, H, W)."""
    if images.dtype != np.uint8:
        raise ResnetlabError(f"{where}: images are {images.dtype}, expected uint8 pixels 0..255")
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ResnetlabError(
            f"{where}: images of shape {images.shape} are neither (N,H,W) nor (N,H,W,3)"
        )
    return torch.from_numpy(np.ascontiguousarray(images))


def load_npz(
    path: Path, class_names: list[str] | None = None
) -> tuple[dict[str, ImageSet], list[str]]:
    """Read every split present in a MedMNIST ``.npz``; train is required."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ResnetlabError(f"{path}: cannot read .npz ({exc}); re-download it") from exc
    parts = {}
    for split in SPLITS:
        has = (f"{split}_images" in arrays, f"{split}_labels" in arrays)
        if has == (False, False):
            continue
        if not all(has):
            which = "labels" if has[0] else "images"
            raise ResnetlabError(f"{path}: {split}_{which} is missing; the file is incomplete")
        where = f"{path} [{split}]"
        images = to_nchw(arrays[f"{split}_images"], where)
        labels = torch.from_numpy(arrays[f"{split}_labels"].reshape(-1).astype(np.int64))
        if len(labels) != len(images):
            raise ResnetlabError(f"{where}: {len(images)} images but {len(labels)} labels")
        parts[split] = (images, labels, where)
    if "train" not in parts:
        raise ResnetlabError(
            f"{path}: no train_images/train_labels (keys: {', '.join(sorted(arrays))}); "
            "expected the MedMNIST layout"
        )
    shapes = {tuple(images.shape[1:]) for images, _, _ in parts.values()}
    if len(shapes) > 1:
        raise ResnetlabError(f"{path}: splits have different image shapes {sorted(shapes)}")
    classes = class_names or known_classes(path)
    if classes is None:
        top = max(int(labels.max()) for _, labels, _ in parts.values() if len(labels))
        classes = [str(i) for i in range(top + 1)]
    sets = {}
    for split, (images, labels, where) in parts.items():
        check_labels(labels, len(classes), where)
        sets[split] = ImageSet(images, labels, list(classes), where)
    return sets, list(classes)
