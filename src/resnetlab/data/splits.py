"""Stratified *and* grouped splits: a group (e.g. a patient id) never straddles two parts.

Groups are assigned greedily, largest first (ties in a seeded random order), each to the part
that keeps every class's share closest to the part's target share, as scikit-learn's
``StratifiedGroupKFold`` does; without groups every image is its own group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..errors import ResnetlabError


def group_ids(groups: Sequence[str] | None, n: int) -> np.ndarray:
    """Integer group ids 0..G-1 per image; ``None`` makes every image its own group."""
    if groups is None:
        return np.arange(n)
    _, ids = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    return ids.reshape(-1)


def assign_groups(
    labels: torch.Tensor | np.ndarray,
    groups: Sequence[str] | None,
    weights: Sequence[float],
    seed: int,
) -> np.ndarray:
    """The part (0..len(weights)-1) of each image; whole groups only, classes stratified."""
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    ids = group_ids(groups, len(y))
    n_groups, n_classes = int(ids.max()) + 1, int(y.max()) + 1
    counts = np.zeros((n_groups, n_classes))
    np.add.at(counts, (ids, y), 1)
    target = np.asarray(weights, dtype=np.float64)
    target = target / target.sum()
    totals = counts.sum(0)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_groups)
    order = order[np.argsort(-counts[order].sum(1), kind="stable")]
    filled = np.zeros((len(target), n_classes))
    part_of_group = np.empty(n_groups, dtype=np.int64)
    for g in order:
        # Squared gap between each part's class shares and its target, after adding g there.
        trial = filled[None] + np.eye(len(target))[:, :, None] * counts[g][None, None]
        gap = ((trial / totals - target[None, :, None]) ** 2).sum((1, 2))
        size = trial.sum(2)[np.arange(len(target)), np.arange(len(target))]
        best = np.lexsort((size / target, gap))[0]  # the tightest fit; the emptiest on ties
        filled[best] += counts[g]
        part_of_group[g] = best
    return part_of_group[ids]


def check_folds(labels: torch.Tensor, groups: Sequence[str] | None, folds: int, classes) -> None:
    """Every class needs at least ``folds`` groups, or some fold would lack it."""
    y = np.asarray(labels).reshape(-1)
    ids = group_ids(groups, len(y))
    for c in np.unique(y):
        have = len(np.unique(ids[y == c]))
        if have < folds:
            what = "groups" if groups is not None else "images"
            raise ResnetlabError(
                f"class {classes[int(c)]!r} has {have} {what}, fewer than --folds {folds}; "
                f"use --folds {max(2, have)} or fewer, or add data for that class."
            )


def grouped_holdout(
    labels: torch.Tensor, groups: Sequence[str] | None, size: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held-out) indices: about ``size`` of the images held out, by whole groups."""
    if not 0.0 < size < 1.0:
        raise ResnetlabError(f"hold-out size {size} must be a fraction in (0, 1).")
    part = assign_groups(labels, groups, [1 - size, size], seed)
    held = torch.from_numpy(np.flatnonzero(part == 1))
    kept = torch.from_numpy(np.flatnonzero(part == 0))
    if len(held) == 0 or len(kept) == 0:
        raise ResnetlabError(
            f"holding out {size:g} of {len(part)} images by group left one side empty; "
            "use a larger size or data with more groups."
        )
    return kept, held


def grouped_folds(
    labels: torch.Tensor, groups: Sequence[str] | None, folds: int, seed: int, classes
) -> np.ndarray:
    """The fold (0..folds-1) of each image: stratified, grouped k-fold assignment."""
    if folds < 2:
        raise ResnetlabError(f"--folds {folds}: cross-validation needs at least 2 folds.")
    check_folds(labels, groups, folds, classes)
    return assign_groups(labels, groups, [1.0] * folds, seed)


def straddling(parts: Mapping[str, Sequence[str]]) -> list[str]:
    """Groups found in more than one of the named parts (should be none)."""
    seen: dict[str, str] = {}
    bad = []
    for name, groups in parts.items():
        for g in set(groups):
            if g in seen and seen[g] != name:
                bad.append(g)
            seen.setdefault(g, name)
    return sorted(set(bad))
