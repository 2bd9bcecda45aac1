"""Small data for quick runs: a learnable image task made on the spot, and real data made small.

``make_shapes``: ten classes, six shapes and four textures (``SHAPES``), each drawn at a
random position, size, phase and colour pair on a noisy background; no download, the same
images for a seed. It stands in for CIFAR-10 where a quick offline run is wanted (the demo,
tests); figures from it say nothing about real images. ``subsample`` and ``resize_split``
shrink a real split (stratified sample; in-memory copy at a smaller size) for short runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from tqdm import tqdm

from ..errors import ResnetlabError
from .base import DataBundle, ImageSet, val_indices

SHAPES = (
    "disc", "ring", "square", "diamond", "cross", "triangle",
    "h-stripes", "v-stripes", "checks", "diagonals",
)  # fmt: skip
NOISE = 0.1  # std of the pixel noise, on the [0, 1] scale


def _masks(kind: np.ndarray, g: np.random.Generator, size: int) -> np.ndarray:
    """Foreground masks (N, size, size) in [0, 1] for the class index of each image."""
    n = len(kind)
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    y, x = axis[None, :, None], axis[None, None, :]
    cx, cy = (g.uniform(-0.35, 0.35, (2, n, 1, 1))).astype(np.float32)
    r = g.uniform(0.35, 0.6, (n, 1, 1)).astype(np.float32)
    dx, dy = np.abs(x - cx), np.abs(y - cy)
    dist = np.sqrt(dx**2 + dy**2)
    period = g.uniform(0.35, 0.6, (n, 1, 1)).astype(np.float32)
    phase = g.uniform(0.0, 2 * np.pi, (n, 1, 1)).astype(np.float32)

    def wave(t: np.ndarray) -> np.ndarray:
        return np.sin(np.pi * t / period + phase) > 0

    drawn = {
        "disc": dist < r,
        "ring": (dist < r) & (dist > 0.6 * r),
        "square": np.maximum(dx, dy) < 0.8 * r,
        "diamond": dx + dy < r,
        "cross": ((dx < 0.3 * r) & (dy < r)) | ((dy < 0.3 * r) & (dx < r)),
        "triangle": (y - cy < 0.7 * r) & (y - cy > -0.9 * r + 1.6 * dx),
        "h-stripes": wave(y),
        "v-stripes": wave(x),
        "checks": wave(x) ^ wave(y),
        "diagonals": wave((x + y) / np.sqrt(2)),
    }
    out = np.zeros((n, size, size), dtype=np.float32)
    for index, name in enumerate(SHAPES):
        chosen = kind == index
        out[chosen] = np.broadcast_to(drawn[name], (n, size, size))[chosen]
    return out


def _images(count: int, size: int, g: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images with balanced labels, as uint8 (N, 3, size, size) and int64 (N,)."""
    labels = np.arange(count) % len(SHAPES)
    g.shuffle(labels)
    mask = _masks(labels, g, size)[:, None]
    fore = g.uniform(0.0, 1.0, (count, 3, 1, 1)).astype(np.float32)
    # The background lies 0.3-0.7 away from the foreground in every channel, towards the
    # farther end of [0, 1], so every class stays visible whatever the colours.
    shift = g.uniform(0.3, 0.7, (count, 3, 1, 1)).astype(np.float32)
    back = np.clip(np.where(fore < 0.5, fore + shift, fore - shift), 0.0, 1.0)
    pixels = mask * fore + (1.0 - mask) * back
    pixels += g.normal(0.0, NOISE, pixels.shape).astype(np.float32)
    images = np.clip(np.round(pixels * 255.0), 0, 255).astype(np.uint8)
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def make_shapes(
    train: int = 5000, val: int = 500, test: int = 1000, *, size: int = 32, seed: int = 0
) -> DataBundle:
    """The shapes task as a ``DataBundle`` (train/val/test), deterministic by ``seed``."""
    if min(train, test) < len(SHAPES) or val < 0:
        raise ResnetlabError(
            f"synthetic shapes need at least {len(SHAPES)} train and test images and val >= 0; "
            f"got train={train}, val={val}, test={test}"
        )
    if size < 8:
        raise ResnetlabError(f"synthetic image size must be at least 8 px, got {size}")
    classes = list(SHAPES)
    source = f"synthetic shapes (generated, seed {seed}, {size} px)"
    splits: dict[str, ImageSet | None] = {}
    for offset, (name, count) in enumerate((("train", train), ("val", val), ("test", test))):
        if count == 0:
            splits[name] = None
            continue
        images, labels = _images(count, size, np.random.default_rng([seed, offset]))
        splits[name] = ImageSet(images, labels, classes, f"{source} [{name}]")
    assert splits["train"] is not None, "train > 0 was checked above"
    return DataBundle(
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        classes=classes,
        in_channels=3,
        image_size=(size, size),
        source=source,
        description=(
            f"synthetic shapes: {len(classes)} classes (6 shapes, 4 textures) drawn at random "
            f"position, size and colour with pixel noise {NOISE}; made by resnetlab, no download"
        ),
    )


def subsample(split: Any, count: int | None, seed: int) -> Any:
    """A stratified, seeded sample of ``count`` images of ``split`` (all of it if fewer)."""
    if split is None or count is None or count >= len(split):
        return split
    index = val_indices(split.labels, count, seed)
    return split.subset(index, f"{split.source}, stratified sample of {count:,}")


def resize_split(split: Any, size: int) -> Any:
    """An in-memory split at ``size`` px: tensors resampled, files decoded and centre-fitted."""
    if split is None or (isinstance(split, ImageSet) and split.images.shape[-2:] == (size, size)):
        return split
    if isinstance(split, ImageSet):
        parts = [
            F.interpolate(chunk.float(), (size, size), mode="bilinear", antialias=True)
            for chunk in split.images.split(2048)
        ]
        images = torch.cat(parts).round_().clamp_(0, 255).to(torch.uint8)
    else:
        mode, arrays = ("L" if split.in_channels == 1 else "RGB"), []
        for path in tqdm(split.paths, desc=f"resizing to {size} px", unit="img"):
            try:
                with Image.open(path) as im:
                    fitted = ImageOps.fit(im.convert(mode), (size, size), Image.Resampling.BILINEAR)
            except OSError as exc:
                raise ResnetlabError(f"cannot read image {path} ({exc}); remove it.") from None
            arrays.append(np.asarray(fitted, dtype=np.uint8).reshape(size, size, -1))
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images, split.labels, split.classes, f"{split.source}, at {size} px")
