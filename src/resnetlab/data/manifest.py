"""CSV manifests ``path,label[,group][,split][,other columns]`` for image folders and archives.

A folder or archive with ``manifest.csv`` at its root (or a ``.csv`` file given as the data)
is opened from the manifest instead of the folder layout: paths are relative to the root,
``group`` (e.g. a patient id) keeps images together, and ``split`` (train/val/test) assigns
them; a group found in two splits is an error. Any other column (site, sex, scanner) is kept
per image (``columns``), for subgroup metrics. Every image is listed once: a path on two rows,
two rows naming one file, or two files with the same bytes in different splits is an error
naming the rows. Rows must name regular image files within the size limit ``folder`` applies
(a link to ``/dev/zero`` is never read). Images are decoded as ``folder`` decodes them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..errors import ResnetlabError
from . import archive, folder, tensors
from .base import FileImageSet, ImageSet, data_home
from .splits import straddling

MANIFEST_NAME = "manifest.csv"
REQUIRED = ("path", "label")
KNOWN = (*REQUIRED, "group", "split")  # the columns with a meaning; others are kept as they are
EXTRA = "column:"  # a row's key prefix for the other columns (internal keys never clash)
ENCODING = "utf-8-sig"  # UTF-8, with or without the byte-order mark spreadsheets write


@dataclass
class GroupedImageSet(ImageSet):
    """An in-memory split whose images carry a group id and the manifest's other columns each
    (kept through ``subset``)."""

    groups: list[str] = field(default_factory=list)
    columns: dict[str, list[str]] = field(default_factory=dict)

    def subset(self, index: torch.Tensor, source: str) -> GroupedImageSet:
        picked = [self.groups[i] for i in index.tolist()]
        return GroupedImageSet(self.images[index], self.labels[index], self.classes, source,
                               picked, pick_columns(self.columns, index))  # fmt: skip


@dataclass
class GroupedFileImageSet(FileImageSet):
    """A split of image files whose images carry a group id and the manifest's other columns
    each."""

    groups: list[str] = field(default_factory=list)
    columns: dict[str, list[str]] = field(default_factory=dict)

    def subset(self, index: torch.Tensor, source: str) -> GroupedFileImageSet:
        picked = [self.groups[i] for i in index.tolist()]
        paths = [self.paths[i] for i in index.tolist()]
        return GroupedFileImageSet(
            paths, self.labels[index], self.classes, source, self.in_channels, self.on_bad, picked,
            pick_columns(self.columns, index),
        )  # fmt: skip


def pick_columns(columns: dict[str, list[str]], index: torch.Tensor) -> dict[str, list[str]]:
    """The other columns' values of the images at ``index``."""
    keep = index.tolist()
    return {name: [values[i] for i in keep] for name, values in columns.items()}


def columns_of(part: object) -> dict[str, list[str]]:
    """The manifest's other columns of a split, {name: value per image}; empty without a
    manifest or other columns."""
    return dict(getattr(part, "columns", None) or {})


def groups_of(part: object) -> list[str] | None:
    """The group of each image of a split, or ``None`` when the data has no groups."""
    groups = getattr(part, "groups", None)
    return list(groups) if groups else None


def find_manifest(path: Path) -> Path | str | None:
    """The manifest for a data path: the .csv itself, ``manifest.csv`` in a folder, or the
    member name of one at an archive's root; ``None`` when there is none."""
    if path.is_file() and path.suffix.lower() == ".csv":
        return path
    if path.is_dir():
        return path / MANIFEST_NAME if (path / MANIFEST_NAME).is_file() else None
    if archive.is_archive(path):
        for name, read in archive.iter_files(path):
            top = name.count("/") <= 1  # at the root, or in the archive's one top folder
            if read is not None and top and name.rsplit("/", 1)[-1] == MANIFEST_NAME:
                return name
    return None


def read_text(path: Path, where: str) -> str:
    """The manifest's text; bytes that are not UTF-8 are one error naming the encoding."""
    data = path.read_bytes()
    try:
        return data.decode(ENCODING)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ResnetlabError(
            f"{where}, line {line}: byte 0x{data[exc.start]:02x} is not UTF-8; save the manifest "
            "as UTF-8 (e.g. iconv -f latin1 -t utf-8 OLD.csv > NEW.csv)."
        ) from None


def read_rows(text: str, where: str) -> list[dict[str, str]]:
    """The manifest's rows, checked: the columns, no empty path or label, no path twice."""
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip().lower() for c in reader.fieldnames or []]
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise ResnetlabError(
            f"{where}: manifest lacks column(s) {', '.join(missing)}; the header must be "
            "path,label[,group][,split][,other columns]"
        )
    extra = [c for c in dict.fromkeys(columns) if c and c not in KNOWN]
    rows: list[dict[str, str]] = []
    seen: dict[str, dict[str, str]] = {}
    for number, raw in enumerate(reader, start=2):
        row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
        for name in extra:
            row[EXTRA + name] = row.pop(name, "")
        if not row.get("path") or not row.get("label"):
            raise ResnetlabError(f"{where}, line {number}: empty path or label; fill it in.")
        split = row.get("split", "") or "train"
        if split.lower() not in folder.SPLIT_ALIASES:
            raise ResnetlabError(
                f"{where}, line {number}: split {split!r} is unknown; use train, val or test."
            )
        row["split"] = folder.SPLIT_ALIASES[split.lower()]
        row["group"] = row.get("group") or f"image:{row['path']}"
        row["line"] = str(number)
        key = os.path.normpath(row["path"].replace("\\", "/"))
        if key in seen:  # at the first repeat, before any file is touched
            raise duplicate(where, seen[key], row, "list the same path")
        seen[key] = row
        rows.append(row)
    if not rows:
        raise ResnetlabError(f"{where}: the manifest lists no images; add rows.")
    return rows


def duplicate(
    where: str, first: dict[str, str], second: dict[str, str], how: str
) -> ResnetlabError:
    """The error for two rows that are one image: what differs, and the fix."""
    if first["split"] != second["split"]:
        what = f"in two splits ({first['split']} and {second['split']})"
    elif first["label"] != second["label"]:
        what = f"with two labels ({first['label']!r} and {second['label']!r})"
    else:
        what = "twice"
    return ResnetlabError(
        f"{where}: lines {first['line']} ({first['path']}) and {second['line']} "
        f"({second['path']}) {how} {what}; list each image once, in one split, with one label."
    )


def check_rows(rows: list[dict[str, str]], where: str) -> list[str]:
    """The sorted classes; a group in two splits or a class missing from train is an error."""
    by_split: dict[str, list[str]] = {}
    for r in rows:
        by_split.setdefault(r["split"], []).append(r["group"])
    bad = straddling(by_split)
    if bad:
        raise ResnetlabError(
            f"{where}: group {bad[0]!r} is in more than one split ({len(bad)} such groups); "
            "give all images of a group the same split, or leave the split column empty."
        )
    classes = sorted({r["label"] for r in rows if r["split"] == "train"})
    extra = sorted({r["label"] for r in rows} - set(classes))
    if not classes:
        raise ResnetlabError(f"{where}: no train rows; mark some rows split=train.")
    if extra:
        raise ResnetlabError(
            f"{where}: class {extra[0]!r} has no training images; every class needs some."
        )
    return classes


def open_manifest(
    source: Path, manifest: Path | str, *, on_bad: str = "error", root: Path | None = None
) -> tuple[dict[str, ImageSet | FileImageSet], list[str]]:
    """{split: set with groups} and the classes, from a manifest in a folder or an archive."""
    source = Path(source)
    if isinstance(manifest, Path):
        where, base, text_path = str(manifest), manifest.parent, manifest
    else:  # a member of an archive: extract safely once, then read files
        key = tensors.fingerprint(source)[:16]
        base = archive.extract(source, data_home(root) / "extracted" / f"{source.name}-{key}")
        base = base / manifest.rsplit("/", 1)[0] if "/" in manifest else base
        where, text_path = f"{source}:{manifest}", base / Path(manifest).name
    rows = read_rows(read_text(text_path, where), where)
    classes = check_rows(rows, where)
    for r in rows:
        member = archive.safe_member_name(Path(where), r["path"])  # no escaping the root
        r["file"] = str(base / member)
    rows = usable_rows(rows, where, on_bad)
    check_same_images(rows, where)
    return _load_sets(rows, classes, where, on_bad), classes


def usable_rows(rows: list[dict[str, str]], where: str, on_bad: str) -> list[dict[str, str]]:
    """The rows whose files may be read (regular files within the size limit, checked before
    anything is read), each with its file's identity and size; the others raise or, with
    ``on_bad="skip"``, are left out with a warning. A split left empty is an error."""
    keep, bad = [], []
    for r in rows:
        try:
            st = folder.check_image_file(r["file"])
        except (OSError, folder.BadImage) as exc:
            reason = "no such file" if isinstance(exc, FileNotFoundError) else folder.reason(exc)
            bad.append(f"{r['path']} (line {r['line']}: {reason})")
            continue
        r["inode"], r["size"] = f"{st.st_dev}:{st.st_ino}", str(st.st_size)
        keep.append(r)
    folder.report_bad(where, bad, on_bad)
    _check_not_empty(rows, keep, where)
    return keep


def _check_not_empty(before: list[dict[str, str]], after: list[dict[str, str]], where: str) -> None:
    """A split that had rows but has none left after skipping is an error, not an empty set."""
    emptied = sorted({r["split"] for r in before} - {r["split"] for r in after})
    if emptied:
        count = sum(r["split"] == emptied[0] for r in before)
        raise ResnetlabError(
            f"{where}: the {emptied[0]} split is empty after skipping its {count} unreadable "
            "image(s); fix their paths or files."
        )


def check_same_images(rows: list[dict[str, str]], where: str) -> None:
    """Refuse two rows naming one file (by its identity: links and ``a/../b`` resolve) and two
    files with the same bytes in different splits. Only files whose size is shared by files
    of another split are hashed."""
    by_inode: dict[str, dict[str, str]] = {}
    by_size: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        if r["inode"] in by_inode:
            raise duplicate(where, by_inode[r["inode"]], r, "name the same file")
        by_inode[r["inode"]] = r
        by_size[r["size"]].append(r)
    for same_size in by_size.values():
        if len({r["split"] for r in same_size}) < 2:
            continue
        by_hash: dict[str, dict[str, str]] = {}
        for r in same_size:
            with folder.open_image_file(r["file"]) as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
            first = by_hash.setdefault(digest, r)
            if first is not r and first["split"] != r["split"]:
                raise duplicate(where, first, r, "hold the same image (identical bytes)")


def _load_sets(rows, classes, where, on_bad) -> dict[str, ImageSet | FileImageSet]:
    """Small images decoded into tensors; large ones kept as files."""
    index = {c: i for i, c in enumerate(classes)}
    extra = [k for k in rows[0] if k.startswith(EXTRA)]
    first = rows[0]
    try:
        with folder.opened(folder.read_image_file(first["file"])) as im:
            small, grey = max(im.size) <= folder.SMALL_MAX, im.mode in folder.GREY_MODES
    except folder.BAD_ERRORS as exc:
        raise ResnetlabError(
            f"{where}, line {first['line']}: {first['path']} is not a readable image "
            f"({folder.reason(exc)}); replace it or remove its row."
        ) from None
    sets: dict[str, ImageSet | FileImageSet] = {}
    for split in ("train", "val", "test"):
        chosen = [r for r in rows if r["split"] == split]
        if not chosen:
            continue
        labels = torch.tensor([index[r["label"]] for r in chosen], dtype=torch.int64)
        groups = [r["group"] for r in chosen]
        columns = {k[len(EXTRA) :]: [r[k] for r in chosen] for k in extra}
        name = f"{where} [{split}]"
        if not small:
            channels = 1 if grey else 3
            paths = [Path(r["file"]) for r in chosen]
            sets[split] = GroupedFileImageSet(
                paths, labels, classes, name, channels, on_bad, groups, columns
            )
            continue
        arrays, keep, bad = [], [], []
        for i, r in enumerate(tqdm(chosen, desc=f"decoding {split}", unit="img", leave=False)):
            try:
                arrays.append(folder.decode(folder.read_image_file(r["file"])))
                keep.append(i)
            except folder.BAD_ERRORS:
                bad.append(r["path"])
        folder.report_bad(name, bad, on_bad)
        if not arrays:
            raise ResnetlabError(
                f"{where}: the {split} split is empty after skipping its {len(bad)} unreadable "
                "image(s); fix or replace them."
            )
        shapes = {a.shape[:2] for a in arrays}
        if len(shapes) > 1:
            raise ResnetlabError(
                f"{where}: images differ in size ({sorted(shapes)[:2]}); resize them to one size."
            )
        channels = max(a.shape[2] for a in arrays)
        stack = np.stack([np.repeat(a, channels // a.shape[2], axis=2) for a in arrays])
        images = torch.from_numpy(stack).permute(0, 3, 1, 2).contiguous()
        kept = torch.tensor(keep, dtype=torch.int64)
        sets[split] = GroupedImageSet(
            images, labels[kept], classes, name, [groups[i] for i in keep],
            pick_columns(columns, kept),
        )  # fmt: skip
    return sets
