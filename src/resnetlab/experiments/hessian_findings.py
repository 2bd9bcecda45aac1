"""What the Hessian study's numbers say about the papers' claims: a plain net against its
residual twin of one depth, the growth of curvature with depth, and the shape of the spectrum.
Each finding states the claim with its source, the measured figures and how they relate."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..reports.findings import finding, verdict_word

LI2018 = "Li, Xu, Taylor, Studer & Goldstein 2018, Visualizing the Loss Landscape of Neural Nets"
GHORBANI2019 = (
    "Ghorbani, Krishnan & Xiao 2019, An Investigation into Neural Net Optimization "
    "via Hessian Eigenvalue Density"
)
YAO2020 = (
    "Yao, Gholami, Keutzer & Mahoney 2020, PyHessian: Neural Networks Through the Lens "
    "of the Hessian"
)
BULK = 1 / 20  # "near zero": within λ1/20 of it
OUTLIER = 1 / 10  # "large": above λ1/10
SE = 2.0  # a trace difference counts when it exceeds this many combined standard errors


def _kind(net: dict[str, Any]) -> str:
    return "residual" if net["skips"] else "plain"


def _untrained(*nets: dict[str, Any]) -> str:
    names = [n["name"] for n in nets if not n.get("trained", True)]
    if not names:
        return ""
    return f" Untrained here: {', '.join(names)}; the papers' claims are about trained nets."


def pairs(nets: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(residual, plain) of each depth that has both, the first of each kind, by depth."""
    out = []
    for depth in sorted({n["depth"] for n in nets if n["depth"]}):
        res = next((n for n in nets if n["depth"] == depth and n["skips"]), None)
        plain = next((n for n in nets if n["depth"] == depth and not n["skips"]), None)
        if res is not None and plain is not None:
            out.append((res, plain))
    return out


def _trace_order(a: dict[str, Any], b: dict[str, Any]) -> int:
    """+1 when a's trace exceeds b's by more than SE combined standard errors, -1 below, 0."""
    margin = SE * math.hypot(a["trace_se"], b["trace_se"])
    difference = a["trace"] - b["trace"]
    return 0 if abs(difference) <= margin else (1 if difference > 0 else -1)


def _pair_relation(top: float, order: int, holds: bool | None) -> str:
    """The pair's relation in words, from the top-eigenvalue ratio and the trace order."""
    if holds:
        return "The plain net sits in the sharper region by both measures, as the papers report."
    trace = {1: "larger", -1: "smaller", 0: f"within {SE:g} standard errors of it"}[order]
    if holds is None:
        return (
            f"The plain net's top eigenvalue is ×{top:.3g} the residual net's, but its trace "
            f"is {trace}: more probes would tell."
        )
    if top <= 1 and order <= 0:
        return (
            f"Here the plain net is the flatter one (top eigenvalue ×{top:.3g}, trace "
            f"{trace}), against the papers' report."
        )
    return (
        f"Mixed: the plain net's top eigenvalue is ×{top:.3g} the residual net's and its "
        f"trace {trace}, so it is not sharper by both measures."
    )


def pair_findings(nets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Is the plain net sharper (top eigenvalue and trace) than the residual net of its depth?"""
    claim = (
        "Without skip connections the loss surface is sharper: a plain net's top Hessian "
        "eigenvalue and trace exceed those of the residual net of the same depth."
    )
    source = f"{YAO2020} (residual connections); {LI2018} (published)"
    found = pairs(nets)
    if not found:
        return [
            finding(
                claim,
                source,
                "no plain and residual net of one depth in this run",
                "Study a net with its twin (e.g. resnet20 and plain20) to test this.",
                None,
                "Plain vs residual at one depth: cannot tell (no pair of one depth in this run).",
            )
        ]
    out = []
    for res, plain in found:
        top = plain["eigenvalues"][0] / res["eigenvalues"][0]
        order = _trace_order(plain, res)
        holds = (top > 1 and order > 0) if order != 0 else (False if top <= 1 else None)
        measured = (
            f"depth {res['depth']}: λ1 {plain['eigenvalues'][0]:.4g} (plain) against "
            f"{res['eigenvalues'][0]:.4g} (residual), ×{top:.3g}; trace "
            f"{plain['trace']:.4g} ± {plain['trace_se']:.2g} against {res['trace']:.4g}"
            f" ± {res['trace_se']:.2g}"
        )
        relation = _pair_relation(top, order, holds)
        ratio = plain["trace"] / res["trace"] if res["trace"] else math.nan
        verdict = (
            f"Plain sharper than residual at depth {res['depth']}: {verdict_word(holds)} "
            f"(λ1 ×{top:.3g}, trace ×{ratio:.3g})."
        )
        out.append(
            finding(claim, source, measured, relation + _untrained(res, plain), holds, verdict)
        )
    return out


def growth(nets: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Top eigenvalue and trace by depth, per kind of net (the first net of each depth)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for kind in ("residual", "plain"):
        rows: dict[int, dict[str, Any]] = {}
        for n in nets:
            if _kind(n) == kind and n["depth"] and n["depth"] not in rows:
                rows[n["depth"]] = {
                    "depth": n["depth"],
                    "top": n["eigenvalues"][0],
                    "trace": n["trace"],
                    "trace_se": n["trace_se"],
                }
        if rows:
            out[kind] = [rows[d] for d in sorted(rows)]
    return out


def _factor(rows: list[dict[str, Any]], key: str) -> float:
    return float(rows[-1][key] / rows[0][key]) if rows[0][key] else math.nan


def depth_findings(nets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """How the top eigenvalue and trace grow from the shallowest to the deepest net of a kind."""
    claim = (
        "Without skips the curvature grows with depth (the surface turns chaotic); with "
        "skips it stays nearly flat, so a plain net's top eigenvalue grows faster with "
        "depth than a residual net's."
    )
    source = f"{LI2018}; {YAO2020} (published)"
    rows = {k: v for k, v in growth(nets).items() if len(v) >= 2}
    if not rows:
        return []
    parts = []
    for kind, r in rows.items():
        steps = [b["top"] - a["top"] for a, b in zip(r, r[1:], strict=False)]
        shape = (
            "rising at every step"
            if all(d > 0 for d in steps)
            else "falling at every step"
            if all(d < 0 for d in steps)
            else "not monotone"
        )
        tops = " → ".join(f"{x['top']:.4g}" for x in r)
        parts.append(
            f"{kind} {r[0]['depth']} → {r[-1]['depth']} layers: λ1 "
            f"{tops} (×{_factor(r, 'top'):.3g}, "
            f"{shape}), trace "
            f"×{_factor(r, 'trace'):.3g}"
        )
    measured = "; ".join(parts)
    if len(rows) == 2:
        plain, res = _factor(rows["plain"], "top"), _factor(rows["residual"], "top")
        holds: bool | None = plain > res
        relation = (
            f"The plain nets' top eigenvalue grows ×{plain:.3g} over their depths, the "
            f"residual nets' ×{res:.3g}: "
            + (
                "depth sharpens the plain nets more, as reported."
                if holds
                else "depth does not sharpen the plain nets more here."
            )
        )
    else:
        holds = None
        kind = next(iter(rows))
        relation = (
            f"Only {kind} nets of several depths here; the claim compares the two "
            "kinds, so it needs the twins too."
        )
    verdict = f"Curvature against depth: {verdict_word(holds)}; {measured}."
    return [finding(claim, source, measured, relation + _untrained(*nets), holds, verdict)]


def spectrum_mass(net: dict[str, Any]) -> tuple[float, float]:
    """The quadrature's mass near zero (|λ| ≤ λ1·BULK) and above λ1·OUTLIER, mean over runs."""
    top = net["eigenvalues"][0]
    near, above = [], []
    for nodes, weights in zip(net["nodes"], net["weights"], strict=True):
        theta, tau = np.asarray(nodes), np.asarray(weights)
        near.append(float(tau[np.abs(theta) <= BULK * top].sum()))
        above.append(float(tau[theta > OUTLIER * top].sum()))
    return float(np.mean(near)), float(np.mean(above))


def spectrum_findings(nets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Is the spectrum a bulk near zero with a few large outliers?"""
    claim = (
        "A trained net's Hessian spectrum is a bulk near zero with a few isolated large "
        "outliers: nearly all of the density's mass lies near zero."
    )
    masses = [(n, *spectrum_mass(n)) for n in nets]
    measured = "; ".join(
        f"{n['label']}: {100 * near:.1f} % of the mass within λ1/20 of zero, "
        f"{100 * above:.3g} % above λ1/10"
        for n, near, above in masses
    )
    holds = all(near >= 0.9 and above < 0.01 for _, near, above in masses)
    relation = (
        "Every net's spectrum has that shape (at least 90 % of the mass near zero, "
        "under 1 % above λ1/10)."
        if holds
        else "Not every net's spectrum has that shape (at least 90 % of the mass near zero, "
        "under 1 % above λ1/10)."
    )
    return [
        finding(
            claim,
            f"{GHORBANI2019} (published)",
            measured,
            relation + _untrained(*nets),
            holds,
            f"Bulk near zero with outliers: {verdict_word(holds)}.",
        )
    ]


def findings(nets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every finding of a Hessian study, the pairs first."""
    return pair_findings(nets) + depth_findings(nets) + spectrum_findings(nets)
