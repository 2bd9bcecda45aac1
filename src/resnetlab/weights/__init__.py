"""Weights: named pretrained checkpoints, a verified download cache, and checkpoint files."""

from .catalog import CATALOG, WeightsEntry, get_weights, imagenet_classes, list_weights
from .hub import (
    MIRROR_ENV,
    cache_path,
    cached_file,
    download,
    fetch,
    fetch_named,
    resnetlab_home,
    torch_cache_dir,
    weights_dir,
)
from .io import (
    CorruptFileError,
    check_weights_file,
    extract_state_dict,
    load_checkpoint,
    load_weights,
    normalise_state_dict,
    save_weights,
)
from .pretrained import load_pretrained, load_state_dict_strict

__all__ = [
    "CATALOG",
    "MIRROR_ENV",
    "CorruptFileError",
    "WeightsEntry",
    "cache_path",
    "cached_file",
    "check_weights_file",
    "download",
    "extract_state_dict",
    "fetch",
    "fetch_named",
    "get_weights",
    "imagenet_classes",
    "list_weights",
    "load_checkpoint",
    "load_pretrained",
    "load_state_dict_strict",
    "load_weights",
    "normalise_state_dict",
    "resnetlab_home",
    "save_weights",
    "torch_cache_dir",
    "weights_dir",
]
