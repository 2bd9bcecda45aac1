"""``open_data``: one call from a name or a path to a ``DataBundle`` with train/val/test."""

from __future__ import annotations

from pathlib import Path

from ..errors import ResnetlabError, close_matches
from . import archive, cifar, folder, idx, manifest, npz
from .base import DataBundle, FileImageSet, ImageSet, split_val

NAMES = ["cifar10", "cifar100", "fashion-mnist"]
NOMINAL_SIZE = (224, 224)  # what large images are cropped to by default
KNOWN_FOLDERS = {
    "cifar10-jpeg": "CIFAR-10 JPEG copy (lossy; not comparable with published CIFAR-10 figures)",
}


def _describe_path(path: Path, kind: str) -> str:
    stem = path.name.lower().split(".")[0]
    if kind == "folder":
        return KNOWN_FOLDERS.get(stem, f"image folder {path.name}")
    if kind == "npz":
        name = "PneumoniaMNIST (MedMNIST v2)" if stem.startswith("pneumoniamnist") else path.name
        return f"{name}, {'class-balanced subset, ' if 'balanced' in stem else ''}MedMNIST .npz"
    return "Fashion-MNIST (IDX, lossless)" if "fashion" in str(path).lower() else "IDX folder"


def _rename(
    sets: dict[str, ImageSet | FileImageSet], classes: list[str], names: list[str] | None
) -> list[str]:
    if names is None:
        return classes
    if len(names) != len(classes):
        raise ResnetlabError(
            f"class_names has {len(names)} names but the data has {len(classes)} classes "
            f"({', '.join(classes[:10])}); pass one name per class"
        )
    for part in sets.values():
        part.classes = list(names)
    return list(names)


def _load(
    spec: str | Path, *, on_bad: str, download: bool, root: Path | None, class_names
) -> tuple[dict[str, ImageSet | FileImageSet], list[str], str, str]:
    """Dispatch on the spec: (splits, classes, source, description)."""
    key = str(spec).lower().replace("-", "").replace("_", "")
    if key in cifar.CIFAR:
        path = cifar.fetch(key, download_ok=download, root=root)
        train, test, classes = cifar.load_cifar(path, key)
        sets: dict[str, ImageSet | FileImageSet] = {"train": train, "test": test}
        name = cifar.CIFAR[key].name
        return sets, _rename(sets, classes, class_names), str(path), f"{name} (original, lossless)"
    if key == "fashionmnist":
        if not idx.is_idx_folder(idx.FASHION_HOME):
            raise ResnetlabError(
                f"Fashion-MNIST is not installed at {idx.FASHION_HOME}; run "
                "'apt-get install dataset-fashion-mnist' or pass the path to its IDX files"
            )
        spec = idx.FASHION_HOME
    path = Path(spec).expanduser()
    if not path.exists():
        raise ResnetlabError(
            f"no data set named or found at {spec!r}{close_matches(str(spec), NAMES)}; "
            f"use one of {', '.join(NAMES)} or a path to a data folder or file"
        )
    kind = cifar.detect(path)
    if kind is not None:
        train, test, classes = cifar.load_cifar(path, kind)
        sets = {"train": train, "test": test}
        name = cifar.CIFAR[kind].name
        return sets, _rename(sets, classes, class_names), str(path), f"{name} (original, lossless)"
    if path.is_file() and path.suffix.lower() == ".npz":
        npz_sets, classes = npz.load_npz(path, class_names)
        return dict(npz_sets), classes, str(path), _describe_path(path, "npz")
    if idx.is_idx_folder(path):
        idx_sets, classes = idx.load_idx(path, class_names)
        return dict(idx_sets), classes, str(path), _describe_path(path, "idx")
    listing = manifest.find_manifest(path) if path.suffix.lower() != ".npz" else None
    if listing is not None:
        sets, classes = manifest.open_manifest(path, listing, on_bad=on_bad, root=root)
        described = _describe_path(path, "folder") + " (CSV manifest)"
        return sets, _rename(sets, classes, class_names), str(path), described
    if path.is_dir() or archive.is_archive(path):
        sets, classes = folder.open_folder(path, on_bad=on_bad, root=root)
        return sets, _rename(sets, classes, class_names), str(path), _describe_path(path, "folder")
    raise ResnetlabError(
        f"{path}: unknown data format; expected a CIFAR python archive, an image folder or "
        "archive (.tar, .tar.gz, .zip), a MedMNIST .npz or an IDX folder"
    )


def open_data(
    spec: str | Path,
    *,
    val_size: int | float | None = None,
    seed: int = 0,
    on_bad: str = "error",
    download: bool = True,
    root: Path | None = None,
    class_names: list[str] | None = None,
) -> DataBundle:
    """Open a data set by name ("cifar10", "cifar100", "fashion-mnist") or path.

    With ``val_size`` (a count or a fraction) a stratified validation split is held out of
    train, deterministic by ``seed``, and replaces any val split the data has; without it the
    data's own val split (if any) is used. ``on_bad`` says what unreadable images do: "error"
    or "skip" (with a warning naming them). ``root`` is the data home for downloads and caches
    (default ``$RESNETLAB_HOME/data``). ``class_names`` names the classes of data that has none
    (.npz, IDX) or renames them.
    """
    if on_bad not in ("error", "skip"):
        raise ResnetlabError(f"on_bad must be 'error' or 'skip', not {on_bad!r}")
    sets, classes, source, description = _load(
        spec, on_bad=on_bad, download=download, root=root, class_names=class_names
    )
    train, val = sets["train"], sets.get("val")
    if val_size is not None:
        train, val = split_val(train, val_size, seed)
        description += f"; val = {len(val):,} held out of train (seed {seed})"
    if isinstance(train, ImageSet):
        in_channels = int(train.images.shape[1])
        image_size = (int(train.images.shape[2]), int(train.images.shape[3]))
    else:
        in_channels, image_size = train.in_channels, NOMINAL_SIZE
    return DataBundle(
        train=train,
        val=val,
        test=sets.get("test"),
        classes=classes,
        in_channels=in_channels,
        image_size=image_size,
        source=source,
        description=description,
    )
