"""Data sets and loaders: CIFAR, image folders and archives, MedMNIST .npz, IDX.

``open_data(spec)`` returns a ``DataBundle``; ``make_loader(split, ...)`` batches a split
deterministically and resumably (``TensorLoader`` for small images held as one uint8
tensor, ``FileLoader`` for large images decoded by worker processes).
"""

from .base import DataBundle, FileImageSet, ImageSet, data_home, split_val
from .bundle import open_data
from .download import download
from .loaders import FileLoader, TensorLoader, make_loader, pixel_mean_of

__all__ = [
    "DataBundle",
    "FileImageSet",
    "FileLoader",
    "ImageSet",
    "TensorLoader",
    "data_home",
    "download",
    "make_loader",
    "open_data",
    "pixel_mean_of",
    "split_val",
]
