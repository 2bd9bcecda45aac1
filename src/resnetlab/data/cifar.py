"""CIFAR-10 and CIFAR-100 in their authors' python-pickle format, downloaded or local.

The pickles hold numpy arrays; they are read with an Unpickler that can only rebuild numpy
arrays and dtypes, so a tampered archive cannot run code.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ResnetlabError
from . import archive
from .base import ImageSet, check_labels, data_home
from .download import download


@dataclass(frozen=True)
class CifarSource:
    """Where one CIFAR variant is published and how its archive is laid out."""

    name: str
    url: str
    md5: str
    folder: str
    train: tuple[str, ...]
    test: str
    meta: str
    label_key: str
    names_key: str


CIFAR = {
    "cifar10": CifarSource(
        "CIFAR-10",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
        "labels",
        "label_names",
    ),
    "cifar100": CifarSource(
        "CIFAR-100",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-python",
        ("train",),
        "test",
        "meta",
        "fine_labels",
        "fine_label_names",
    ),
}

# The only globals a CIFAR pickle may name: numpy array/dtype/scalar reconstruction.
ALLOWED = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # how Python 3 writes bytes at pickle protocol 2
}


class SafeUnpickler(pickle.Unpickler):
    """An Unpickler that refuses every global outside ``ALLOWED``."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in CIFAR data")
        return super().find_class(module, name)


def load_pickle(data: bytes, where: str) -> dict[str, Any]:
    """Unpickle one CIFAR batch safely; keys come back as str whatever Python wrote them."""
    try:
        obj = SafeUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise ResnetlabError(
            f"{where}: not a valid CIFAR pickle ({exc}); use the official python archive"
        ) from exc
    if not isinstance(obj, dict):
        raise ResnetlabError(f"{where}: expected a dict in the CIFAR pickle, got {type(obj)}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _names(values: list[Any]) -> list[str]:
    return [v.decode("latin1") if isinstance(v, bytes) else str(v) for v in values]


def detect(path: Path) -> str | None:
    """ "cifar10"/"cifar100" when ``path`` is a CIFAR archive (by its official name) or folder."""
    if path.is_dir():
        for key, src in CIFAR.items():
            for folder in (path, path / src.folder):
                if (folder / src.meta).is_file() and (folder / src.test).is_file():
                    return key
        return None
    name = path.name.lower()
    if archive.is_archive(path) and name.startswith("cifar-10"):
        return "cifar100" if name.startswith("cifar-100") else "cifar10"
    return None


def _read_members(path: Path, src: CifarSource) -> dict[str, bytes]:
    wanted = {*src.train, src.test, src.meta}
    found: dict[str, bytes] = {}
    if path.is_dir():
        folder = path / src.folder if (path / src.folder).is_dir() else path
        for name in wanted:
            if (folder / name).is_file():
                found[name] = (folder / name).read_bytes()
        return found
    try:
        for name, read in archive.iter_files(path):
            base = name.rsplit("/", 1)[-1]
            if read is not None and base in wanted:
                found[base] = read()
    except tarfile.TarError as exc:
        raise ResnetlabError(f"{path}: cannot read CIFAR archive ({exc}); re-download it") from exc
    return found


def _split(batches: list[dict[str, Any]], src: CifarSource, classes: list[str], where: str):
    images = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
    labels = torch.tensor([int(y) for b in batches for y in b[src.label_key]], dtype=torch.int64)
    if images.ndim != 2 or images.shape[1] != 3 * 32 * 32 or images.shape[0] != len(labels):
        raise ResnetlabError(
            f"{where}: data of shape {images.shape} with {len(labels)} labels is not CIFAR "
            "(N, 3072); use the official python archive"
        )
    check_labels(labels, len(classes), where)
    tensor = torch.from_numpy(images.reshape(-1, 3, 32, 32).copy())
    return ImageSet(tensor, labels, classes, where)


def load_cifar(path: Path, kind: str) -> tuple[ImageSet, ImageSet, list[str]]:
    """Read CIFAR ``kind`` from its archive or extracted folder: (train, test, classes)."""
    src = CIFAR[kind]
    members = _read_members(path, src)
    missing = [n for n in (src.meta, *src.train, src.test) if n not in members]
    if missing:
        raise ResnetlabError(
            f"{path}: {src.name} files missing: {', '.join(missing)}; "
            f"use the official archive from {src.url}"
        )
    meta = load_pickle(members[src.meta], f"{path}:{src.meta}")
    classes = _names(meta[src.names_key])
    train = [load_pickle(members[n], f"{path}:{n}") for n in src.train]
    test = [load_pickle(members[src.test], f"{path}:{src.test}")]
    return (
        _split(train, src, classes, f"{path} [train]"),
        _split(test, src, classes, f"{path} [test]"),
        classes,
    )


def fetch(kind: str, *, download_ok: bool = True, root: Path | None = None) -> Path:
    """The local CIFAR archive, downloaded (with MD5 check) on first use when allowed."""
    src = CIFAR[kind]
    dest = data_home(root) / src.url.rsplit("/", 1)[-1]
    if dest.is_file():
        return dest
    if not download_ok:
        raise ResnetlabError(
            f"{src.name} is not at {dest}; allow downloading or place {src.url} there"
        )
    return download(src.url, dest, src.md5)
