"""Findings in words, computed from the numbers: each says what the lesson or the paper claims
(with its source), what was measured here, and how the two relate, so a learner never has to
reconcile a plot with the lesson alone. Used by degradation, gradient flow, compare and demo.

A finding is a dict: ``claim``, ``source``, ``measured``, ``relation``, ``holds`` (True, False,
or None when the run cannot tell) and ``verdict``, its one-line summary for the report's top.
"""

from __future__ import annotations

import math
from typing import Any

HE2015 = "He et al. 2015, Deep Residual Learning for Image Recognition"
IDENTITY = "He et al. 2016, Identity Mappings in Deep Residual Networks, Eq. 5"
BN_EXPLODES = (
    "This is the known behaviour of plain nets with BatchNorm at initialisation: BatchNorm keeps "
    "the forward signal normalised, but the gradient grows geometrically with depth (Yang et "
    "al. 2019, A Mean Field Theory of Batch Normalization), and in deep plain nets it shatters "
    "into noise (Balduzzi et al. 2017, The Shattered Gradients Problem)."
)


def finding(claim: str, source: str, measured: str, relation: str, holds: bool | None,
            verdict: str) -> dict[str, Any]:  # fmt: skip
    """One finding (see the module's docstring)."""
    return {"claim": claim, "source": source, "measured": measured, "relation": relation,
            "holds": holds, "verdict": verdict}  # fmt: skip


def _pts(value: float) -> str:
    return f"{100 * value:+.1f} points"


def _times(value: float) -> str:
    """A factor in words: ×12.3 or ×1/45 (a shrinkage), two or three significant digits."""
    if not math.isfinite(value) or value <= 0:
        return "×n/a"
    return f"×{value:.3g}" if value >= 1 else f"×1/{1 / value:.3g}"


def degradation_findings(claims: list[dict], iterations: int, recipe_iters: int) -> list[dict]:
    """Claims 1 and 2 of He et al. 2015 from ``degradation.verdict``'s checks, claim 2 set
    against the plain nets' cost of depth (how much of the degradation the shortcuts remove)."""
    by_number = {c["claim"]: c for c in claims}
    budget = (f"This run trained {iterations:,} of the recipe's {recipe_iters:,} iterations"
              f" ({100 * iterations / recipe_iters:.1f} %)")  # fmt: skip
    out = []
    plain: dict[str, Any] = by_number.get(1) or {}
    res: dict[str, Any] = by_number.get(2) or {}
    if plain:
        d, s = plain["label"]
        gap = plain["train_gap"]
        measured = f"final training error {s} → {d}: {_pts(gap)}"
        if plain["holds"]:
            relation = (
                f"The deeper plain net trains worse ({_pts(gap)}), as the paper reports: "
                "the degradation problem, seen on the training set, so not overfitting."
            )
        else:
            relation = (
                f"The deeper plain net did not train worse here ({_pts(gap)}). {budget}; "
                "the paper's gap opens over full training, so this run cannot confirm it."
            )
        out.append(finding(
            "A deeper plain net has a higher training error than a shallower one (the "
            "degradation problem, not overfitting).", f"{HE2015}, §4.2, Fig. 6 left", measured,
            relation, plain["holds"],
            f"Claim 1 (deeper plain nets train worse): {verdict_word(plain['holds'])}; {s} → {d} "
            f"{_pts(gap)} training error.",
        ))  # fmt: skip
    if res:
        d, s = res["label"]
        gap, held = res["train_gap"], res["held_out"]
        measured = (f"final training error {s} → {d}: {_pts(gap)}; {held} error "
                    f"{'lower' if res[f'{held}_holds'] else 'not lower'} for {d}")  # fmt: skip
        versus = ""
        if plain:
            measured += f"; the plain nets: {_pts(plain['train_gap'])}"
            if plain["train_gap"] > 0:
                removed = 1 - max(gap, 0.0) / plain["train_gap"]
                versus = (f"depth cost the ResNets {_pts(gap)} against the plain nets' "
                          f"{_pts(plain['train_gap'])}: the shortcuts removed "
                          f"{100 * removed:.0f} % of the degradation")  # fmt: skip
        if res["holds"]:
            relation = "The deeper ResNet is the better one, as the paper reports"
            relation += f"; {versus}." if versus else "."
            short = f"{s} → {d} {_pts(gap)} training error"
        elif versus and gap < plain["train_gap"]:
            relation = (f"Not in full: the deeper ResNet is not yet the better one ({_pts(gap)}),"
                        f" but {versus}, which is the paper's point about shortcuts. {budget}; "
                        "the paper's deeper ResNets overtake over full training.")  # fmt: skip
            share = 1 - max(gap, 0.0) / plain["train_gap"]
            short = (f"{s} → {d} {_pts(gap)}, against the plain nets' "
                     f"{_pts(plain['train_gap'])}: shortcuts removed {100 * share:.0f} % of the "
                     "cost of depth")  # fmt: skip
        else:
            relation = (f"The deeper ResNet is not the better one ({_pts(gap)}) and depth cost "
                        f"it no less than the plain nets. {budget}; this run shows no benefit "
                        "of the shortcuts yet.")  # fmt: skip
            short = f"{s} → {d} {_pts(gap)} training error"
        out.append(finding(
            f"With shortcuts the degradation goes away: the deeper ResNet has the lower training "
            f"and {held} error.", f"{HE2015}, §4.2, Fig. 6 middle", measured, relation,
            res["holds"],
            f"Claim 2 (deeper ResNets train better): {verdict_word(res['holds'])}; {short}.",
        ))  # fmt: skip
    return out


VERDICT_WORDS: dict[bool | None, str] = {True: "holds", False: "does not hold"}


def verdict_word(holds: bool | None) -> str:
    """A verdict in words: holds, does not hold, or cannot tell (None)."""
    return VERDICT_WORDS.get(holds, "cannot tell")


def seed_mlp_finding(rows: list[dict]) -> dict | None:
    """The seed lesson: the plain MLP stack's first-layer gradient vanishes with depth."""
    norms = {(r["depth"], r["kind"]): r["grad_norm"] for r in rows}
    depths = sorted({r["depth"] for r in rows})
    if len(depths) < 2:
        return None
    a, b = depths[0], depths[-1]
    plain = norms[(b, "plain")] / norms[(a, "plain")]
    res = norms[(b, "residual")] / norms[(a, "residual")]
    gap = norms[(b, "residual")] / norms[(b, "plain")]
    measured = (f"first layer's weight-gradient norm, {a} → {b} blocks: plain "
                f"{norms[(a, 'plain')]:.3g} → {norms[(b, 'plain')]:.3g} ({_times(plain)}), "
                f"residual {norms[(a, 'residual')]:.3g} → {norms[(b, 'residual')]:.3g} "
                f"({_times(res)})")  # fmt: skip
    holds = plain < 0.1 and res > 0.1
    relation = (
        f"The plain stack's gradient shrinks {_times(plain)} with {b - a} more blocks, the "
        f"residual one's changes {_times(res)}; at {b} blocks the residual first layer gets "
        f"{gap:.3g} times the plain one's gradient: the +1 in ∂x_(l+1)/∂x_l = 1 + ∂F/∂x_l "
        "carries it past the blocks." if holds else
        f"Not here: the plain stack's gradient changed {_times(plain)} and the residual one's "
        f"{_times(res)} from {a} to {b} blocks."
    )  # fmt: skip
    return finding(
        "Without a skip the gradient reaching the first layer of a deep stack vanishes; with "
        "x + F(x) it does not.", f"the seed lesson; {IDENTITY}", measured, relation, holds,
        f"Seed MLP: plain first-layer gradient {_times(plain)} from {a} to {b} blocks, residual "
        f"{_times(res)}: {verdict_word(holds)}.",
    )  # fmt: skip


def conv_gradient_finding(pairs: list[tuple[str, str, float, float]], at: str) -> dict | None:
    """Input-side gradient of plain vs residual conv nets: ``(plain, residual, plain ratio,
    residual ratio)`` per depth, ratio = ‖∂L/∂x‖ at the first block over the last."""
    if not pairs:
        return None
    measured = f"‖∂L/∂x_l‖ first block / last block {at} (1 = flat): " + "; ".join(
        f"{p} {rp:.3g}, {r} {rr:.3g}" for p, r, rp, rr in pairs
    )
    deepest = pairs[-1]
    vanish = all(rp < 1 for _, _, rp, _ in pairs)
    steadier = all(abs(math.log(rr)) < abs(math.log(rp)) for _, _, rp, rr in pairs)
    if vanish:
        relation = "The plain nets' input-side gradient is the smaller one: it vanishes, as the "
        relation += "lesson says" + ("; the ResNets' stays closer to flat." if steadier else ".")
    else:
        relation = (
            f"Opposite to the lesson's wording: the plain nets have the larger input-side "
            f"gradient, growing towards the input ({deepest[0]}: {_times(deepest[2])} from the "
            f"last block to the first): it explodes rather than vanishes. {BN_EXPLODES} "
        )
        relation += (
            f"What the lesson is about still holds: the ResNets keep the gradient nearer its size "
            f"({deepest[1]}: {_times(deepest[3])}), the +1 of each block bounding how far it "
            "can drift."
            if steadier
            else "Here the ResNets do not keep it flatter either."
        )
    return finding(
        "The lesson carries over to conv nets: without skips the gradient reaching the early "
        "layers of a deep net vanishes, with skips it does not.",
        f"the seed lesson; {HE2015}, §1; {IDENTITY}", measured, relation, vanish and steadier,
        f"Conv nets {at}: {deepest[0]}'s gradient {_times(deepest[2])} from the last block to "
        f"the first ({'vanishes' if vanish else 'explodes, not vanishes'}), {deepest[1]}'s "
        f"{_times(deepest[3])}: skips {'keep' if steadier else 'do not keep'} it in range.",
    )  # fmt: skip


def response_finding(pairs: list[tuple[str, str, list, list]], at_init: bool) -> dict | None:
    """Layer responses (std of each 3×3 layer's output after BN): ``(plain, residual, plain
    stds, residual stds)`` per depth."""
    if not pairs:
        return None
    parts, larger, growth, plain_growth = [], [], [], []
    for p, r, ps, rs in pairs:
        pm, rm = sum(ps) / len(ps), sum(rs) / len(rs)
        below = sum(a < b for a, b in zip(rs, ps, strict=False))  # layer by layer, as Fig. 7
        larger.append(rm > pm or 2 * below <= len(rs))  # smaller in the mean and at most layers
        growth.append(rs[-1] / rs[0] if rs[0] else float("inf"))
        plain_growth.append(ps[-1] / ps[0] if ps[0] else float("inf"))
        parts.append(f"{p} mean {pm:.3g} (last/first layer {_times(plain_growth[-1])}), {r} "
                     f"mean {rm:.3g} (last/first layer {_times(growth[-1])}), {r} the smaller "
                     f"at {below} of {len(rs)} layers")  # fmt: skip
    measured = (
        "std of each 3×3 layer's response "
        + ("at initialisation, eval mode: " if at_init else "at the checkpoint, eval mode: ")
        + "; ".join(parts)
    )
    holds = not any(larger)
    if holds:
        relation = "The ResNets' responses are the smaller ones, as in Fig. 7."
        relation += " Here they are measured at initialisation, not after training." * at_init
    elif at_init:
        relation = (
            "Opposite to Fig. 7, and expected at initialisation: Fig. 7 is measured after "
            "training, when the residual branches have learnt to stay small next to the "
            "identity. Here the weights are random, BatchNorm in eval mode is the identity "
            "(running mean 0, variance 1), and each block adds its branch to the stream, "
            "x_(l+1) = x_l + F(x_l), so the stream's variance, and with it each next layer's "
            f"response, grows block by block ({_times(growth[-1])} over {pairs[-1][1]}), while "
            f"a plain net has no such sum ({pairs[-1][0]}: {_times(plain_growth[-1])} from its "
            "first layer to its last). To test Fig. 7, measure trained weights: resnetlab "
            "gradient-flow --checkpoint PATH."
        )
    else:
        relation = "At these weights the ResNets' responses are not the smaller ones: Fig. 7's "
        relation += "claim does not hold for this checkpoint."
    return finding(
        "ResNets have generally smaller layer responses than their plain counterparts: the "
        "residual functions are closer to zero.", f"{HE2015}, §4.2, Fig. 7 (after training)",
        measured, relation, holds,
        f"Layer responses {'at initialisation' if at_init else 'at the checkpoint'}: ResNets' "
        f"{'smaller' if holds else 'larger'} than plain nets' "
        f"({'as in' if holds else 'opposite to'} Fig. 7, which is after training).",
    )  # fmt: skip


def compare_finding(rows: list[dict], names: dict[str, str]) -> dict | None:
    """ResNets deeper than the largest VGG yet with fewer multiply-accumulates (§3.3)."""
    vggs = [r for r in rows if r["model"].startswith("vgg")]
    resnets = [r for r in rows if r["skips"] > 0]
    if not vggs or not resnets:
        return None
    vgg = max(vggs, key=lambda r: r["macs"])
    v = names[vgg["model"]]
    measured = "; ".join(
        f"{names[r['model']]} {r['depth']} layers, {r['params'] / 1e6:.1f}M parameters, "
        f"{r['macs'] / 1e9:.2f} GMACs"
        for r in [vgg, *resnets]
    )
    deeper = [r for r in resnets if r["depth"] > vgg["depth"]]
    cheaper = [r for r in deeper if r["macs"] < vgg["macs"]]
    holds: bool | None = bool(deeper) and len(cheaper) == len(deeper)
    if not deeper:
        relation = (f"No ResNet here is deeper than {v}, so the table cannot test the claim; "
                    "add resnet34 or deeper.")  # fmt: skip
        holds = None
    else:
        relation = (f"{len(cheaper)} of the {len(deeper)} ResNets deeper than {v} need fewer "
                    f"multiply-accumulates (counted here): depth comes from the cheap 3×3 and "
                    f"bottleneck blocks, not from wide layers.")  # fmt: skip
    return finding(
        "A ResNet can be deeper than VGG and still cost less: the 34-layer ResNet needs 3.6 "
        "billion FLOPs (multiply-adds), 18 % of VGG-19's 19.6 billion (published).",
        f"{HE2015}, §3.3", measured, relation, holds,
        f"Cost of depth: {len(cheaper)} of {len(deeper)} ResNets deeper than {v} have fewer "
        f"MACs ({verdict_word(holds)}).",
    )  # fmt: skip
