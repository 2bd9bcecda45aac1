"""What a CKA study found, in words computed from its matrices: corresponding layers of two nets
of one architecture (Kornblith et al. 2019), the similarity by stage, and the block structure of
a net with itself (Nguyen, Raghu & Kornblith 2021)."""

from __future__ import annotations

from typing import Any

import torch

from ..reports.findings import finding

KORNBLITH = (
    "Kornblith, Norouzi, Lee & Hinton 2019, Similarity of Neural Network Representations Revisited"
)
NGUYEN = (
    "Nguyen, Raghu & Kornblith 2021, Do Wide and Deep Networks Learn the Same Things? "
    "Uncovering How Neural Network Representations Vary with Width and Depth"
)
MATCH = 0.9  # "nearly every layer" finds its counterpart: at least 90 % of them
BLOCK_CKA = 0.9  # a block: consecutive layers whose every pair has at least this CKA
BLOCK_MIN = 3  # ... and at least this many of them


def _ordered(stages: list[str]) -> list[str]:
    return list(dict.fromkeys(stages))


def stage_rows(cka: torch.Tensor, stages: list[list[str]], same_layers: bool) -> list[dict]:
    """Per stage both nets have: the mean CKA of its layers in A against its layers in B, and,
    for nets of the same layers, the mean of the diagonal (each layer against its counterpart)."""
    rows = []
    for stage in _ordered(stages[0]):
        a = [i for i, s in enumerate(stages[0]) if s == stage]
        b = [j for j, s in enumerate(stages[1]) if s == stage]
        if not b:
            continue
        row: dict[str, Any] = {"stage": stage, "layers_a": len(a), "layers_b": len(b),
                               "mean_cka": round(float(cka[a][:, b].mean()), 4)}  # fmt: skip
        if same_layers:
            row["diagonal_cka"] = round(float(torch.stack([cka[i, i] for i in a]).mean()), 4)
        rows.append(row)
    return rows


def correspondence_finding(cka: torch.Tensor, names: list[str], stages: list[str],
                           labels: list[str]) -> dict[str, Any]:  # fmt: skip
    """Whether each layer of A is most similar to its counterpart in B, and the diagonal by
    stage (two nets with the same layers)."""
    best = cka.argmax(1)
    hits = int((best == torch.arange(len(names))).sum())
    share = hits / len(names)
    by_stage = {r["stage"]: r["diagonal_cka"] for r in stage_rows(cka, [stages, stages], True)}
    stage_text = ", ".join(f"{s} {v:.2f}" for s, v in by_stage.items())
    low = min(by_stage, key=lambda s: by_stage[s])
    measured = (
        f"{labels[0]} against {labels[1]}: for {hits} of {len(names)} layers "
        f"({100 * share:.0f} %) the most similar layer of {labels[1]} is the counterpart; "
        f"CKA of each layer with its counterpart, mean by stage: {stage_text}."
    )
    holds = share >= MATCH
    if holds:
        relation = ("As the paper reports for nets of one architecture trained from different "
                    "initialisations: CKA finds each layer's counterpart.")  # fmt: skip
    else:
        relation = (
            f"Fewer counterparts than the paper's nets (at least {100 * MATCH:.0f} % taken as "
            f"'nearly every'); the nets part most in {low} (CKA {by_stage[low]:.2f}). The claim "
            "is about nets of one architecture trained alike from different seeds; a plain twin, "
            "an untrained net or another recipe may differ."
        )
    return finding(
        "CKA identifies corresponding layers: the layer of one net most similar to a layer of "
        "another net of the same architecture, trained from another initialisation, is its "
        "counterpart, for nearly every layer.", f"{KORNBLITH}, Table 2", measured, relation, holds,
        f"Corresponding layers (Kornblith et al. 2019): {hits}/{len(names)} layers of {labels[0]} "
        f"find their counterpart in {labels[1]}; counterpart CKA by stage {stage_text}.",
    )  # fmt: skip


def stage_match_finding(cka: torch.Tensor, names: list[list[str]], stages: list[list[str]],
                        labels: list[str]) -> dict[str, Any]:  # fmt: skip
    """For nets of other depths or widths with the same stages: whether each layer of A finds
    its most similar layer of B in the same stage, and how similar that is."""
    best = cka.argmax(1)
    same = [stages[0][i] == stages[1][int(j)] for i, j in enumerate(best)]
    tops = cka.max(1).values
    share = sum(same) / len(same)
    pairs = ", ".join(f"{a} → {names[1][int(j)]}" for a, j in zip(names[0], best, strict=True))
    measured = (
        f"{labels[0]} against {labels[1]}: for {sum(same)} of {len(same)} layers the most similar "
        f"layer of {labels[1]} is in the same stage, with CKA {float(tops.min()):.2f} to "
        f"{float(tops.max()):.2f} ({pairs})."
    )
    holds = share >= MATCH
    relation = (
        "As the paper reports: each layer of one net has a similar counterpart, at the same "
        "relative depth, in the other."
        if holds
        else f"Fewer than {100 * MATCH:.0f} % of the layers find their best match in the same "
        "stage; the nets' representations part."
    )
    return finding(
        "Representations outside the block structure are often similar across architectures "
        "of different width and depth; the block structure is unique to each model.",
        f"{NGUYEN}, abstract", measured, relation, holds,
        f"Across depths (Nguyen et al. 2021): {sum(same)}/{len(same)} layers of {labels[0]} find "
        f"their most similar layer of {labels[1]} in the same stage (CKA {float(tops.min()):.2f}"
        f" to {float(tops.max()):.2f}).",
    )  # fmt: skip


def largest_block(matrix: torch.Tensor) -> tuple[int, int] | None:
    """The longest run of consecutive layers [start, stop) whose every pair has CKA of at least
    BLOCK_CKA, if it has BLOCK_MIN layers or more (the earliest of equal runs)."""
    size, found = matrix.shape[0], None
    for start in range(size):
        stop = start + 1
        while stop < size and bool((matrix[start : stop + 1, start : stop + 1] >= BLOCK_CKA).all()):
            stop += 1
        if stop - start >= BLOCK_MIN and (found is None or stop - start > found[1] - found[0]):
            found = (start, stop)
    return found


def _block_text(net: dict[str, Any], block: tuple[int, int] | None) -> str:
    layers = net["layers"]
    if block is None:
        return (f"{net['label']}: no {BLOCK_MIN} consecutive layers of {len(layers)} have "
                f"pairwise CKA >= {BLOCK_CKA}")  # fmt: skip
    start, stop = block
    return (f"{net['label']}: largest block of layers with pairwise CKA >= {BLOCK_CKA}: "
            f"{layers[start]} to {layers[stop - 1]} ({stop - start} of {len(layers)} layers, "
            f"{100 * (stop - start) / len(layers):.0f} %)")  # fmt: skip


def block_finding(matrices: list[torch.Tensor], nets: list[dict[str, Any]],
                  same: bool) -> dict[str, Any]:  # fmt: skip
    """The largest block of each net with itself; with two nets of different size, whether the
    larger one has the larger block, as the paper's trend with capacity says."""
    blocks = [largest_block(m) for m in matrices]
    texts = [_block_text(n, b) for n, b in zip(nets, blocks, strict=False)]
    lengths = [0 if b is None else b[1] - b[0] for b in blocks]
    holds: bool | None = None
    if len(blocks) == 1:
        relation = ("One net cannot show the trend with capacity; compare a shallower or "
                    "narrower sibling (e.g. resnet20 against resnet56) to see it.")  # fmt: skip
    elif nets[0]["parameters"] == nets[1]["parameters"]:
        relation = ("The two nets are of one size, so the paper's trend with capacity does "
                    "not apply; the blocks, where present, are each net's own.")  # fmt: skip
    elif not any(lengths):
        relation = "Neither net shows a block here, so the trend cannot be read."
    else:
        big = 0 if nets[0]["parameters"] > nets[1]["parameters"] else 1
        holds = lengths[big] > lengths[1 - big]
        relation = (f"The larger net ({nets[big]['label']}, {nets[big]['parameters']:,} "
                    f"parameters) has the {'larger' if holds else 'smaller or equal'} block: "
                    + ("as the paper's trend with capacity says." if holds else
                       "not the paper's trend with capacity."))  # fmt: skip
    measured = "; ".join(texts) + "."
    return finding(
        "A block structure (a large contiguous set of layers with very similar representations) "
        "appears in the CKA of a net with itself as nets get wider or deeper, i.e. when their "
        "capacity is large relative to the training set.", f"{NGUYEN}, Fig. 1", measured,
        relation, holds,
        f"Block structure (Nguyen et al. 2021): {measured[:-1]}" + (
            "" if same or holds is None else f"; larger net, larger block: {holds}") + ".",
    )  # fmt: skip
