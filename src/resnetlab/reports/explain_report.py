"""``explain``'s report (``report.html`` + ``report.md``): the verdicts of the explanation
checks first, then the randomisation curves and deletion / insertion curves with captions, the
areas against the random map as a table, and the overlays of the first images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..figures import pyplot, save_figure
from ..files import write_text_atomic
from .pages import RunSection, render_html, render_markdown

OVERLAYS = 8  # overlays shown in the report (all are in the folder)


def plot_randomisation(checks: dict[str, Any], path: Path) -> Path:
    """Mean rank correlation per block reset, head first, one line per method."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for entry in checks["methods"].values():
        curve = entry["randomisation"]  # the trained model's maps first: 1 with themselves
        ax.plot(range(len(curve) + 1), [1.0, *(s["mean"] for s in curve)], marker="o",
                label=entry["label"])  # fmt: skip
        ax.set_xticks(range(len(curve) + 1), ["none", *(s["block"] for s in curve)],
                      rotation=60, fontsize=7)  # fmt: skip
    ax.axhline(checks["similar_below"], color="grey", linestyle="--", linewidth=1)
    ax.set_ylabel("mean Spearman ρ with the trained maps")
    ax.set_xlabel("re-initialised from the head down to")
    ax.set_ylim(-1.05, 1.05)
    ax.legend()
    return save_figure(fig, path)


def plot_perturbation(checks: dict[str, Any], kind: str, path: Path) -> Path:
    """Mean target probability as pixels are deleted or inserted, per method and random."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    rows = [(e["label"], e[kind]["curve"]) for e in checks["methods"].values()]
    for label, curve in [*rows, ("random map", checks["random"][kind]["curve"])]:
        fraction = [i / (len(curve) - 1) for i in range(len(curve))]
        ax.plot(fraction, curve, label=label, linestyle=":" if label == "random map" else "-")
    ax.set_xlabel(f"fraction of pixels {'deleted' if kind == 'deletion' else 'inserted'}")
    ax.set_ylabel("mean probability of the explained class")
    ax.set_ylim(0, 1)
    ax.legend()
    return save_figure(fig, path)


def area_rows(checks: dict[str, Any]) -> list[dict[str, str]]:
    """One row per map and kind: mean area, gain over random with its interval, verdict."""
    rows = []
    for entry in checks["methods"].values():
        for kind in ("deletion", "insertion"):
            part, gain = entry[kind], entry[kind]["gain_over_random"]
            interval = "-" if gain["lo"] is None else f"{gain['lo']:+.3f} to {gain['hi']:+.3f}"
            chance = checks["random"][kind]["auc"]
            rows.append({"map": entry["label"], "curve": kind,
                         "area": f"{sum(part['auc']) / len(part['auc']):.3f}",
                         "random area": f"{sum(chance) / len(chance):.3f}",
                         "gain": f"{gain['mean']:+.3f}", "95 % CI": interval,
                         "verdict": part["verdict"]})  # fmt: skip
    return rows


def write_explain_report(out: Path, summary: dict[str, Any], overlays: list[Path]) -> Path:
    """``report.html`` and ``report.md`` in ``out``; the plots beside them. ``summary`` is
    explain.json's content (``checks`` where they ran)."""
    checks = summary.get("checks")
    images: list[Path] = []
    captions: dict[str, str] = {}
    verdict: list[str] = []
    tables: list[tuple[str, list[dict]]] = []
    if checks:
        verdict = list(checks["verdicts"])
        images += [plot_randomisation(checks, out / "randomisation.png"),
                   plot_perturbation(checks, "deletion", out / "deletion.png"),
                   plot_perturbation(checks, "insertion", out / "insertion.png")]  # fmt: skip
        captions |= {
            "randomisation.png": (
                "Cascading model-parameter randomisation (Adebayo et al. 2018): the layers are "
                "re-initialised from the head down and after each block the maps are compared "
                "with the trained model's by Spearman rank correlation (mean over "
                f"{checks['images']} images). A map that explains the model falls away; the "
                f"dashed line ({checks['similar_below']}) is where the verdict calls it moved."
            ),
            "deletion.png": (
                "Deletion (Petsiuk et al. 2018): the most salient pixels first are set to the "
                f"image's minimum, {checks['pixels_per_step']} at a time; a faithful map makes "
                "the probability fall faster (a lower area) than the random map."
            ),
            "insertion.png": (
                "Insertion: the most salient pixels first are put back onto the blank image; "
                "a faithful map makes the probability rise faster (a higher area) than random."
            ),
        }
        tables.append(("Deletion and insertion areas against the random map (gain: "
                       "bootstrap 95 % interval over the images)", area_rows(checks)))  # fmt: skip
    else:
        verdict = [summary.get("checks_skipped") or "explanation checks not run."]
    images += overlays[:OVERLAYS]
    records = summary["images"]
    tables.append(("Images", [{"image": Path(r["image"]).name, "class": r["class"],
                               "probability": f"{r['probability']:.3f}", "layer": r["layer"]}
                              for r in records]))  # fmt: skip
    section = RunSection(
        folder=out, config={}, verdict=verdict, tables=tables, images=images,
        captions=captions, run={k: summary.get(k) for k in ("command", "machine", "versions")},
        data=[("images", str(len(records))), ("source", str(summary["source"]))],
    )  # fmt: skip
    title = f"Explanations of {summary['source']}"
    write_text_atomic(out / "report.md", render_markdown([section], title, out, captions))
    return write_text_atomic(out / "report.html", render_html([section], title, captions))
