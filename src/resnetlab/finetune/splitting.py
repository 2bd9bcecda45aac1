"""Held-out and cross-validation splits for fine-tuning that never let a group (a patient)
leak: validation and test held out stratified and grouped, and the k-fold pool (train plus
any val) divided by ``data.splits.grouped_folds``.
"""

from __future__ import annotations

import torch

from ..data import DataBundle, FileImageSet, ImageSet, split_val
from ..data.manifest import GroupedFileImageSet, GroupedImageSet, columns_of, groups_of
from ..data.splits import grouped_folds, grouped_holdout, straddling
from ..errors import ResnetlabError


def hold_out(part, size: float, seed: int, what: str):
    """(kept, held out) of a split: whole groups when it has groups, else stratified."""
    groups = groups_of(part)
    if groups is None:
        return split_val(part, size, seed)
    kept, held = grouped_holdout(part.labels, groups, size, seed)
    tag = f"{size:g}, stratified by class and grouped, seed {seed}"
    return (
        part.subset(kept, f"{part.source} minus held-out {what} ({tag})"),
        part.subset(held, f"{part.source} held-out {what} ({tag})"),
    )


def concat(a, b, source: str):
    """Two splits of the same data as one (groups and the manifest's other columns kept)."""
    labels = torch.cat([a.labels, b.labels])
    groups = (groups_of(a) or []) + (groups_of(b) or [])
    more = columns_of(b)
    columns = {k: v + more[k] for k, v in columns_of(a).items() if k in more}
    if isinstance(a, ImageSet):
        images = torch.cat([a.images, b.images])
        if groups:
            return GroupedImageSet(images, labels, a.classes, source, groups, columns)
        return ImageSet(images, labels, a.classes, source)
    paths = list(a.paths) + list(b.paths)
    if groups:
        return GroupedFileImageSet(
            paths, labels, a.classes, source, a.in_channels, a.on_bad, groups, columns
        )
    return FileImageSet(paths, labels, a.classes, source, a.in_channels, a.on_bad)


def fold_split(bundle: DataBundle, folds: int, fold: int, seed: int) -> list[str]:
    """Make fold ``fold`` of ``folds`` the validation split and the others train (in place)."""
    pool = bundle.train if bundle.val is None else concat(bundle.train, bundle.val, "train+val")
    assignment = torch.from_numpy(
        grouped_folds(pool.labels, groups_of(pool), folds, seed, bundle.classes)
    )
    held = (assignment == fold).nonzero().flatten()
    kept = (assignment != fold).nonzero().flatten()
    bundle.train = pool.subset(kept, f"{bundle.source}: folds other than {fold + 1}/{folds}")
    bundle.val = pool.subset(held, f"{bundle.source}: fold {fold + 1}/{folds}")
    grouped = "stratified, grouped" if groups_of(pool) else "stratified"
    bundle.description += f"; cross-validation fold {fold + 1}/{folds} ({grouped}, seed {seed})"
    return [
        f"fold {fold + 1} of {folds} ({grouped}, seed {seed}): train {len(bundle.train):,}, "
        f"val {len(bundle.val):,} images out of a pool of {len(pool):,}"
    ]


def check_no_leak(bundle: DataBundle) -> str | None:
    """A note on the groups; a group in two splits is an error."""
    found = {n: groups_of(getattr(bundle, n)) for n in ("train", "val", "test")}
    parts = {n: g for n, g in found.items() if g}
    if not parts:
        return None
    bad = straddling(parts)
    if bad:
        raise ResnetlabError(
            f"group {bad[0]!r} has images in more than one split; a patient's images must stay "
            "in one split (fix the manifest's split column)."
        )
    count = len({g for gs in parts.values() for g in gs})
    return f"groups: {count:,} (from the manifest), none in two splits"
