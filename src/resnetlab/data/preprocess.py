"""The input pipeline a fine-tuned model expects (the record is ``resnetlab.preprocessing``'s
``Preprocessing``), shared by training, prediction and evaluation, so the three never disagree.

Images are resized (shorter side to ``resize``, then a centre crop of ``crop``), given the
model's channel count (grey repeated to 3, or colour made grey), and normalised by mean/std.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ResnetlabError
from ..preprocessing import Preprocessing
from .folder import decode, read_image_file

__all__ = ["Preprocessing", "load_image", "match_channels", "normalise", "prepare_images",
           "resize_crop", "to_grey", "torch_threads"]  # fmt: skip

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as Pillow's convert("L")


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` in the calling thread while the block runs (OpenMP
    keeps the setting per thread). One image's preprocessing runs on one: split over two shared
    cores, each of its small ops waits at a barrier for a core (docs/BENCHMARKS.md), while
    images decoded side by side use the cores anyway."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def to_grey(x: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (N, 3, H, W) to uint8 luma (N, 1, H, W)."""
    weights = torch.tensor(LUMA, dtype=torch.float32).reshape(1, 3, 1, 1)
    return (x.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)


def match_channels(x: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """Give uint8 images (N, C, H, W) the model's channel count (grey sources stay grey)."""
    if prep.grey is not None and x.shape[1] == 3:
        x = to_grey(x)  # a model trained on grey images sees colour inputs as grey
    if x.shape[1] == prep.channels:
        return x
    if x.shape[1] == 1 and prep.channels == 3:
        return x.expand(-1, 3, -1, -1)
    if x.shape[1] == 3 and prep.channels == 1:
        return to_grey(x)
    raise ResnetlabError(
        f"cannot feed {x.shape[1]}-channel images to a {prep.channels}-channel model."
    )


def resize_crop(x: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """Resize the shorter side to ``prep.resize`` and centre-crop ``prep.crop`` (uint8 in/out)."""
    h, w = x.shape[-2:]
    if (h, w) == (prep.crop, prep.crop):
        return x.contiguous()
    scale = prep.resize / min(h, w)
    size = (max(prep.crop, round(h * scale)), max(prep.crop, round(w * scale)))
    if (h, w) != size:
        smooth = prep.interpolation != "nearest"
        x = F.interpolate(
            x.float(),
            size=size,
            mode=prep.interpolation,
            antialias=smooth,
            align_corners=False if smooth else None,
        )
        x = x.round().clamp(0, 255).to(torch.uint8)
    top, left = round((size[0] - prep.crop) / 2), round((size[1] - prep.crop) / 2)
    return x[..., top : top + prep.crop, left : left + prep.crop].contiguous()


def prepare_images(images: torch.Tensor, prep: Preprocessing, chunk: int = 256) -> torch.Tensor:
    """uint8 images (N, C, H, W) to uint8 (N, channels, crop, crop), in chunks to bound memory."""
    parts = [
        resize_crop(match_channels(images[i : i + chunk], prep), prep)
        for i in range(0, images.shape[0], chunk)
    ]
    if not parts:
        return torch.empty(0, prep.channels, prep.crop, prep.crop, dtype=torch.uint8)
    return torch.cat(parts)


def normalise(x: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """uint8 model-ready images to float32 inputs: [0, 1], minus the per-pixel mean (when the
    model was trained with one) or the channel mean, over std."""
    mean = torch.tensor(prep.mean, dtype=torch.float32, device=x.device).reshape(1, -1, 1, 1)
    std = torch.tensor(prep.std, dtype=torch.float32, device=x.device).reshape(1, -1, 1, 1)
    if prep.pixel_mean is not None:
        mean = torch.tensor(prep.pixel_mean, dtype=torch.float32, device=x.device)[None] + mean
    return (x.float() / 255.0 - mean) / std


def load_image(path: Path, min_side: int | None = None) -> torch.Tensor:
    """Decode one image file to uint8 (C, H, W); C is 1 for greyscale files, else 3. With
    ``min_side`` (the resize) a large JPEG is decoded at a reduced DCT scale, sides >= it."""
    array = decode(read_image_file(path), min_side)  # a regular file within the size limit
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
