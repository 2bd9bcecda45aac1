"""Image folders ``root/<split>/<class>/<image>`` from a directory or straight from an archive.

Small images (at most ``SMALL_MAX`` pixels a side) are decoded once into uint8 tensors and
cached (see ``tensors.py``); archives of them are read in memory, never extracted. Large images
stay files, listed as (path, label) pairs; an archive of them is extracted safely once.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ..errors import ResnetlabError
from . import archive, tensors
from .base import FileImageSet, ImageSet, data_home

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SMALL_MAX = 64
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
BAD_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
SHOW_BAD = 5  # bad files an error names
SHOW_SKIPPED = 50  # skipped files a warning names
MAX_PIXELS = 64_000_000  # larger images are refused; RESNETLAB_MAX_IMAGE_MEGAPIXELS overrides


class BadImage(ValueError):
    """An image file that cannot be used; the message is the reason alone (callers name it)."""


def max_pixels() -> int:
    """The pixel limit: ``MAX_PIXELS`` unless ``RESNETLAB_MAX_IMAGE_MEGAPIXELS`` is set."""
    text = os.environ.get("RESNETLAB_MAX_IMAGE_MEGAPIXELS", "").strip()
    try:
        return int(float(text) * 1e6) if text else MAX_PIXELS
    except ValueError:
        raise ResnetlabError(
            f"RESNETLAB_MAX_IMAGE_MEGAPIXELS={text!r} is not a number; set it to e.g. 200"
        ) from None


def check_pixels(im: Image.Image) -> None:
    """Refuse an opened (not yet decoded) image above the pixel limit: PIL reads the size
    from the header, so nothing large has been allocated yet."""
    w, h = im.size
    if w * h > max_pixels():
        raise BadImage(
            f"{w}x{h} is {w * h / 1e6:.0f} megapixels, above the limit of "
            f"{max_pixels() / 1e6:g}; shrink it or raise RESNETLAB_MAX_IMAGE_MEGAPIXELS"
        )


def reason(exc: BaseException) -> str:
    """A PIL error as a short reason without object reprs."""
    if isinstance(exc, BadImage):
        return str(exc)
    if isinstance(exc, Image.DecompressionBombError):
        return (
            f"above Pillow's decompression-bomb limit ({' '.join(str(exc).split()[:4])}); "
            "shrink it"
        )
    if isinstance(exc, UnidentifiedImageError):
        return "not an image Pillow can identify"
    text = " ".join(str(exc).split())
    if not text or " object at 0x" in text:
        return f"unreadable ({type(exc).__name__})"
    return f"{type(exc).__name__}: {text}"


@contextmanager
def opened(source: str | Path | bytes) -> Iterator[Image.Image]:
    """``Image.open`` of a path or bytes, checked against the pixel limit; every failure is a
    ``BadImage`` with a readable reason."""
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():  # Pillow's size warning: the limit here is checked
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(fp)
        with im:
            check_pixels(im)
            yield im
    except BAD_ERRORS as exc:
        if isinstance(exc, BadImage):
            raise
        raise BadImage(reason(exc)) from exc


def check_image_file(path: str | Path) -> os.stat_result:
    """The status of an image file that may be read: a regular file (a link to one is
    followed) within the archive member limit; a device, fifo or folder is a ``BadImage``."""
    return _checked(os.stat(path))


def _checked(st: os.stat_result) -> os.stat_result:
    if not stat.S_ISREG(st.st_mode):
        raise BadImage("not a regular file (a device, fifo, socket or folder); list image files")
    _check_size(st.st_size)
    return st


def _check_size(size: int) -> None:
    limit = archive.limits()[0]
    if size > limit:
        raise BadImage(
            f"{size / 2**20:.0f} MiB, above the limit of {limit / 2**20:g} MiB; shrink it "
            "or raise RESNETLAB_MAX_MEMBER_MIB"
        )


def _nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)  # a fifo is not waited on


@contextmanager
def open_image_file(path: str | Path) -> Iterator[io.BufferedReader]:
    """An image file opened for reading, checked as :func:`check_image_file` checks it but on
    the open file itself (so nothing swapped in after a check is read)."""
    with open(path, "rb", opener=_nonblocking) as handle:
        _checked(os.fstat(handle.fileno()))
        yield handle


def read_image_file(path: str | Path) -> bytes:
    """The bytes of an image file: a regular file, at most the member limit read."""
    with open_image_file(path) as handle:
        data = handle.read(archive.limits()[0] + 1)
    _check_size(len(data))  # it may have grown since it was checked
    return data


def is_image_name(name: str) -> bool:
    """An image file by its suffix; hidden files (``.DS_Store``, ``._x.jpg``) are not."""
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_SUFFIXES)


def decode(data: bytes, min_side: int | None = None) -> np.ndarray:
    """Decode image bytes to a uint8 array (H, W, 1) for grey images or (H, W, 3).

    With ``min_side`` a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps
    both sides at least ``min_side``, which bounds the memory large photos need.
    """
    with opened(data) as im:
        if min_side and im.format == "JPEG":
            im.draft(im.mode, (min_side, min_side))
        im.load()
        im = im.convert("L" if im.mode in GREY_MODES else "RGB")
        array = np.array(im, dtype=np.uint8)  # a writable copy
    return array[:, :, None] if array.ndim == 2 else array


def layout(
    source: str, files: list[str], dirs: list[str]
) -> tuple[dict[str, dict[str, list[str]]], list[str]]:
    """Group relative image names as {split: {class: [names]}} and return the sorted classes.

    Accepts ``<prefix>/<split>/<class>/<image>`` or, as a train split alone,
    ``<prefix>/<class>/<image>``; anything else is an error naming the fix.
    """
    if not files:
        raise ResnetlabError(
            f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) found; expected "
            "<root>/<split>/<class>/<image>"
        )
    parts = [name.split("/") for name in files]
    depths = {len(p) for p in parts}
    depth = min(depths)
    split_layout = depth >= 3 and all(p[-3] in SPLIT_ALIASES for p in parts)
    head = depth - (3 if split_layout else 2)
    prefixes = {tuple(p[:head]) for p in parts}
    if len(depths) != 1 or len(prefixes) != 1 or depth < 2:
        example = min(files, key=lambda f: (f.count("/"), f))
        raise ResnetlabError(
            f"{source}: images sit at different folder depths (e.g. {example}); "
            "arrange them as <root>/<split>/<class>/<image>"
        )
    groups: dict[str, dict[str, list[str]]] = {}
    for name, p in zip(files, parts, strict=True):
        split = SPLIT_ALIASES[p[-3]] if split_layout else "train"
        groups.setdefault(split, {}).setdefault(p[-2], []).append(name)
    prefix = list(prefixes.pop())
    for d in dirs:  # class folders with no images are almost always a mistake
        p = d.split("/")
        if len(p) == depth - 1 and p[:head] == prefix:
            folder_split = SPLIT_ALIASES.get(p[-2]) if split_layout else "train"
            if folder_split is not None and p[-1] not in groups.get(folder_split, {}):
                raise ResnetlabError(
                    f"{source}: class folder {d}/ has no images; remove it or add images"
                )
    if "train" not in groups:
        raise ResnetlabError(
            f"{source}: no train split (found {', '.join(sorted(groups))}); add a train/ folder"
        )
    classes = sorted(groups["train"])
    for split, by_class in groups.items():
        extra = sorted(set(by_class) - set(classes))
        if extra:
            raise ResnetlabError(
                f"{source}: {split} split has classes not in train: {', '.join(extra[:5])}; "
                "every class needs training images"
            )
    for by_class in groups.values():
        for names in by_class.values():
            names.sort()
    return groups, classes


def _size(data: bytes) -> tuple[int, int] | None:
    try:
        with opened(data) as im:
            return im.size[1], im.size[0]
    except BAD_ERRORS:
        return None


def _size_of_file(path: Path) -> tuple[int, int] | None:
    try:
        return _size(read_image_file(path))
    except BAD_ERRORS:
        return None


def _scan(
    source: Path, small_max: int
) -> tuple[list[str], list[str], dict[str, bytes] | None, tuple[int, int] | None]:
    """Relative image names, folder names, the bytes of small images in an archive (else
    None), and the size (H, W) of the first readable image."""
    files: list[str] = []
    dirs: list[str] = []
    size = None
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            rel = path.relative_to(source).as_posix()
            if path.is_dir():
                dirs.append(rel)
            elif is_image_name(rel):
                files.append(rel)
                size = size or _size_of_file(path)
        return files, dirs, None, size
    blobs: dict[str, bytes] | None = {}
    for name, read in archive.iter_files(source):
        if read is None:
            dirs.append(name)
        elif is_image_name(name):
            files.append(name)
            if blobs is not None:
                blobs[name] = read()
                size = size or _size(blobs[name])
                if size is not None and max(size) > small_max:
                    blobs = None  # large images: keep names only, extract later
    # Folders implied by file paths count too (zip files often lack folder entries).
    implied = {n.rsplit("/", 1)[0] for n in files if "/" in n}
    return files, sorted(set(dirs) | implied), blobs, size


def report_bad(source: str, bad: list[str], on_bad: str, total: int | None = None) -> None:
    """Raise (on_bad="error") or warn (on_bad="skip") about unreadable images, by path;
    ``total`` is how many were skipped in all, when ``bad`` is only the latest of them."""
    if not bad:
        return
    bad = list(dict.fromkeys(bad))
    show = SHOW_BAD if on_bad == "error" else SHOW_SKIPPED
    more = len(bad) - show
    first = ", ".join(bad[:show]) + (f" and {more} more" if more > 0 else "")
    if on_bad == "error":
        raise ResnetlabError(
            f"{source}: {len(bad)} unreadable, truncated or oversized image(s): {first}; "
            "replace them or pass --on-bad skip (on_bad='skip') to leave them out"
        )
    count = f" ({total} skipped in all)" if total is not None and total != len(bad) else ""
    warnings.warn(
        f"{source}: skipped {len(bad)} unreadable, truncated or oversized image(s): {first}{count}",
        stacklevel=3,
    )


def _build_small(
    source: Path, groups: dict[str, dict[str, list[str]]], classes: list[str], blobs
) -> dict[str, Any]:
    """Decode every image once into uint8 tensors per split (the cache's content)."""
    todo = [
        (split, name, label)
        for split, by_class in groups.items()
        for label, cls in enumerate(classes)
        for name in by_class.get(cls, [])
    ]
    arrays: dict[str, list[np.ndarray]] = {split: [] for split in groups}
    labels: dict[str, list[int]] = {split: [] for split in groups}
    bad: dict[str, list[str]] = {split: [] for split in groups}
    first: tuple[str, tuple[int, int]] | None = None
    for split, name, label in tqdm(todo, desc=f"decoding {source.name}", unit="img"):
        try:
            data = blobs[name] if blobs is not None else read_image_file(source / name)
            array = decode(data)
        except BAD_ERRORS:
            bad[split].append(f"{source}/{name}" if blobs is None else f"{source}:{name}")
            continue
        if first is None:
            first = (name, array.shape[:2])
        elif array.shape[:2] != first[1]:
            raise ResnetlabError(
                f"{source}: image {name} is {array.shape[0]}x{array.shape[1]} but {first[0]} is "
                f"{first[1][0]}x{first[1][1]}; resize the images to one size"
            )
        arrays[split].append(array)
        labels[split].append(label)
    if first is None:
        raise ResnetlabError(f"{source}: none of the images could be decoded; check the files")
    channels = max(a.shape[2] for parts in arrays.values() for a in parts)
    splits = {}
    for split in groups:
        stack = [np.repeat(a, channels // a.shape[2], axis=2) for a in arrays[split]]
        images = torch.from_numpy(np.stack(stack)) if stack else torch.empty(0, *first[1], 1)
        splits[split] = {
            "images": images.to(torch.uint8).permute(0, 3, 1, 2).contiguous(),
            "labels": torch.tensor(labels[split], dtype=torch.int64),
            "bad": bad[split],
        }
    return {"classes": classes, "splits": splits}


def _grey(path: Path) -> bool:
    try:
        with opened(path) as im:
            return im.mode in GREY_MODES
    except BAD_ERRORS:
        return False


def open_folder(
    source: Path, *, on_bad: str = "error", root: Path | None = None, small_max: int = SMALL_MAX
) -> tuple[dict[str, ImageSet | FileImageSet], list[str]]:
    """Open an image folder (directory or archive) as {split: set} and its class names."""
    source = Path(source)
    content = tensors.load_cache(source, root)
    if content is None:
        files, dirs, blobs, size = _scan(source, small_max)
        groups, classes = layout(str(source), files, dirs)
        if size is None:
            raise ResnetlabError(f"{source}: none of the images could be read; check the files")
        if max(size) <= small_max:
            content = _build_small(source, groups, classes, blobs)
            tensors.save_cache(source, content, root)
    if content is not None:
        classes = list(content["classes"])
        sets: dict[str, ImageSet | FileImageSet] = {}
        for split, part in content["splits"].items():
            report_bad(f"{source} ({split})", list(part["bad"]), on_bad)
            sets[split] = ImageSet(part["images"], part["labels"], classes, f"{source} [{split}]")
        return sets, classes
    folder = source
    if source.is_file():  # large images in an archive: extract once, safely
        key = tensors.fingerprint(source)[:16]
        folder = archive.extract(source, data_home(root) / "extracted" / f"{source.name}-{key}")
    first = folder / groups["train"][classes[0]][0]
    channels = 1 if _grey(first) else 3
    sets = {}
    for split, by_class in groups.items():
        pairs = [
            (folder / name, label)
            for label, cls in enumerate(classes)
            for name in by_class.get(cls, [])
        ]
        sets[split] = FileImageSet(
            [p for p, _ in pairs],
            torch.tensor([y for _, y in pairs], dtype=torch.int64),
            classes,
            f"{source} [{split}]",
            in_channels=channels,
            on_bad=on_bad,
        )
    return sets, classes
