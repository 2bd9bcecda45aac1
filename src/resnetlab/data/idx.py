"""IDX files in the MNIST / Fashion-MNIST layout (``train-images-idx3-ubyte[.gz]`` etc.)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from ..errors import ResnetlabError
from .base import ImageSet, check_labels

FASHION = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
PREFIXES = {"train": "train", "test": "t10k"}
FASHION_HOME = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) of unsigned bytes into an array."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise ResnetlabError(f"{path}: cannot read ({exc}); re-download it") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ResnetlabError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ResnetlabError(
            f"{path}: holds {body.size} bytes but its header says {dims}; the file is truncated"
        )
    return body.reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        hits = sorted(folder.rglob(name))
        if hits:
            return hits[0]
    return None


def is_idx_folder(path: Path) -> bool:
    """True for a folder holding ``train-images-idx3-ubyte`` (or ``.gz``) somewhere inside."""
    return path.is_dir() and _find(path, "train-images-idx3-ubyte") is not None


def load_idx(
    folder: Path, class_names: list[str] | None = None
) -> tuple[dict[str, ImageSet], list[str]]:
    """Read the train and (if present) t10k IDX pairs from ``folder``."""
    parts = {}
    for split, prefix in PREFIXES.items():
        images_path = _find(folder, f"{prefix}-images-idx3-ubyte")
        labels_path = _find(folder, f"{prefix}-labels-idx1-ubyte")
        if images_path is None and labels_path is None and split != "train":
            continue
        if images_path is None or labels_path is None:
            missing = f"{prefix}-{'images-idx3' if images_path is None else 'labels-idx1'}-ubyte"
            raise ResnetlabError(f"{folder}: {missing}[.gz] is missing; add it")
        images = read_idx(images_path)
        labels = read_idx(labels_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ResnetlabError(
                f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match"
            )
        parts[split] = (images, labels, f"{images_path} [{split}]")
    fashion = "fashion" in str(folder).lower()
    classes = class_names or (FASHION if fashion else [str(i) for i in range(10)])
    sets = {}
    for split, (images, labels, where) in parts.items():
        y = torch.from_numpy(labels.astype(np.int64))
        check_labels(y, len(classes), where)
        sets[split] = ImageSet(torch.from_numpy(images.copy())[:, None], y, list(classes), where)
    return sets, list(classes)
