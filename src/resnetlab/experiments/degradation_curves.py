"""The degradation experiment's numbers and figure: its learning curves read from a net's
``metrics.jsonl``, the final errors and their tables (one seed and over seeds), the verdict on
He et al. 2015's two claims, and the plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..evaluation.seeds import difference, spread
from ..figures import pyplot, save_figure
from ..runfolder import read_jsonl
from .variants import base_kind

FINAL_WINDOW = 0.1  # final training error: mean over the last 10 % of iterations
LABEL = {"plain": "plain", "residual": "ResNet"}
SPLITS = ("train", "val", "test")


def display(kind: str, depth: int) -> str:
    return f"{LABEL.get(kind, kind)}-{depth}"


def net_name(kind: str, depth: int) -> str:
    if kind not in LABEL:  # an extra arm, e.g. plain-dirac20
        return f"{kind}{depth}"
    return f"{'resnet' if kind == 'residual' else 'plain'}{depth}"


def read_curves(folder: Path) -> dict[str, dict[str, list]]:
    """Training error (per log interval) and val/test error (per evaluation) from metrics.jsonl."""
    curves: dict[str, dict[str, list]] = {s: {"step": [], "error": []} for s in SPLITS}
    for r in read_jsonl(folder / "metrics.jsonl"):
        for split in SPLITS:
            key = "error" if split == "train" else f"{split}_error"
            if r.get("kind") == ("train" if split == "train" else "eval") and key in r:
                curves[split]["step"].append(int(r["step"]))
                curves[split]["error"].append(float(r[key]))
        if r.get("kind") == "train" and "time_s" in r:
            curves["train"].setdefault("time_s", []).append(float(r["time_s"]))
    return curves


def final_errors(curves: dict[str, dict[str, list]], iterations: int) -> dict[str, Any]:
    """Final training error (mean over the last ``FINAL_WINDOW`` of iterations) and the last
    val/test errors, all fractions; None where a curve is empty."""
    train = curves["train"]
    start = iterations - max(1, round(FINAL_WINDOW * iterations))
    window = [e for s, e in zip(train["step"], train["error"], strict=True) if s > start]
    window = window or train["error"][-1:]
    out: dict[str, Any] = {"train": float(np.mean(window)) if window else None}
    for split in ("val", "test"):
        out[split] = curves[split]["error"][-1] if curves[split]["error"] else None
    out["steps"] = max([0, *train["step"], *curves["test"]["step"], *curves["val"]["step"]])
    return out


def final_row(r: dict[str, Any]) -> dict[str, Any]:
    """One line of the final-error table (errors in %)."""
    row = {"model": display(r["kind"], r["depth"]), "kind": r["kind"], "depth": r["depth"]}
    row |= {"seed": r.get("seed"), "iterations": r["steps"]}
    row |= {f"{s} error %": None if r[s] is None else round(100 * r[s], 2) for s in SPLITS}
    row["train time s"] = (r["curves"]["train"].get("time_s") or [None])[-1]
    return row


def by_net(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each net's final errors: its one run's, or over several seeds the mean, with the
    per-seed errors under ``seeds`` and their spread (mean, sd, 95 % interval) under
    ``spread``."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results.values():
        groups.setdefault(net_name(r["kind"], r["depth"]), []).append(r)
    nets = {}
    for name, runs in groups.items():
        if len(runs) == 1:
            nets[name] = runs[0]
            continue
        unfinished = [r["status"] for r in runs if r["status"] != "completed"]
        net = {"kind": runs[0]["kind"], "depth": runs[0]["depth"], "seed": None,
               "status": unfinished[0] if unfinished else "completed",
               "steps": min(r["steps"] for r in runs), "curves": runs[0]["curves"],
               "seeds": {}, "spread": {}}  # fmt: skip
        for split in SPLITS:
            values = [r[split] for r in runs if r[split] is not None]
            net["seeds"][split], net["spread"][split] = values, spread(values)
            net[split] = net["spread"][split]["mean"]
        nets[name] = net
    return nets


def seed_row(net: dict[str, Any]) -> dict[str, Any]:
    """One line of the table over seeds: mean, sd and 95 % interval of each error (in %)."""
    row: dict[str, Any] = {"model": display(net["kind"], net["depth"]), "seeds": None}
    for split in SPLITS:
        s = net["spread"][split]
        row["seeds"] = s["n"]
        for key in ("mean", "sd", "lo", "hi"):
            row[f"{split} error % {key}"] = None if s[key] is None else round(100 * s[key], 2)
    return row


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def _versus(deep: dict, shallow: dict, key: str, lower: bool, name: str = "") -> tuple[bool, str]:
    """Whether the deeper net's ``key`` error is lower (or higher) than the shallower's, and
    the comparison in words, e.g. ``"12.3 % > plain-20 8.1 %"``. Over several seeds (a
    ``seeds`` entry of per-seed errors) it holds only when the 95 % interval of the difference
    of the means excludes zero, and the words give that interval."""
    a, b = deep[key], shallow[key]
    if a is None or b is None:
        return False, "n/a"
    ok = a < b if lower else a > b
    sign = ("<" if ok else ">=") if lower else (">" if ok else "<=")
    words = f"{_pct(a)} {sign} {name}{_pct(b)}"
    per_seed: list[list[float]] = [(net.get("seeds") or {}).get(key) or [] for net in
                                   (deep, shallow)]  # fmt: skip
    if min(len(v) for v in per_seed) >= 2:
        d = difference(per_seed[0], per_seed[1])
        ok = ok and d["excludes_zero"]
        words += (f" (means of {len(per_seed[0])} and {len(per_seed[1])} seeds; difference "
                  f"{100 * d['mean']:+.1f} points, 95 % CI {100 * d['lo']:+.1f} to "
                  f"{100 * d['hi']:+.1f}{'' if d['excludes_zero'] else ', which includes 0'}"
                  f"{'; the seeds disagree' if d['seeds_disagree'] else ''})")  # fmt: skip
    return ok, words


def verdict(finals: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's two claims, each checked on the deepest vs the shallowest net of its kind.

    ``finals`` maps a net's name to ``kind``, ``depth`` and its final errors (fractions).
    """
    claims = []
    for number, kind in ((1, "plain"), (2, "residual")):
        nets = [f for f in finals.values() if f["kind"] == kind and f["train"] is not None]
        nets.sort(key=lambda f: f["depth"])
        if len(nets) < 2:
            continue
        deep, shallow = nets[-1], nets[0]
        d, s = display(kind, deep["depth"]), display(kind, shallow["depth"])
        train_ok, train_words = _versus(deep, shallow, "train", kind == "residual", f"{s} ")
        extra, facts = "", {"deep": deep["depth"], "shallow": shallow["depth"], "label": (d, s)}
        facts["train_gap"] = deep["train"] - shallow["train"]
        if kind == "plain":
            holds = train_ok
            text = f"Claim 1, the deeper plain net has the higher training error: {d} final "
            text += f"training error {train_words}"
            if len(nets) > 2:
                errors = [f["train"] for f in nets]
                rises = all(a < b for a, b in zip(errors, errors[1:], strict=False))
                extra = (
                    f" (training error rises with every step in depth: {'yes' if rises else 'no'})"
                )
        else:
            held = "test" if deep["test"] is not None and shallow["test"] is not None else "val"
            held_ok, held_words = _versus(deep, shallow, held, True)
            holds = train_ok and held_ok
            text = f"Claim 2, the deeper ResNet has the lower training and {held} error: {d} final "
            text += f"training error {train_words}, {held} error {held_words}"
            facts |= {"held_out": held, "train_holds": train_ok, f"{held}_holds": held_ok}
        text += f": {'holds' if holds else 'does not hold'}{extra}."
        claims.append({"claim": number, "holds": holds, "text": text, **facts})
    return claims


def plot_degradation(curves: dict[str, dict], title: str, path: Path) -> Path:
    """The paper's figure: plain (left) and ResNet (right), one colour per depth, training
    error dashed and test error bold, error % against iterations."""
    plt = pyplot()
    depths = sorted({c["depth"] for c in curves.values()})
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    labelled: set[str] = set()
    for ax, kind in zip(axes, ("plain", "residual"), strict=True):
        for c in sorted(
            (c for c in curves.values() if base_kind(c["kind"]) == kind),
            key=lambda c: (c["depth"], c["kind"]),
        ):
            colour = colours((depths.index(c["depth"]) + 3 * (c["kind"] not in LABEL)) % 10)
            name = display(c["kind"], c["depth"])
            first = name not in labelled  # several seeds: one legend entry, a line per seed
            labelled.add(name)
            train, test = c["curves"]["train"], c["curves"]["test"]
            ax.plot(train["step"], [100 * e for e in train["error"]], "--", color=colour,
                    linewidth=0.9, label=f"{name} train" if first else None)  # fmt: skip
            if test["step"]:
                ax.plot(test["step"], [100 * e for e in test["error"]], "-", color=colour,
                        linewidth=2.2, label=f"{name} test" if first else None)  # fmt: skip
        ax.set_title(f"{LABEL[kind]} nets", fontsize=10)
        ax.set_xlabel("iterations")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    axes[0].set_ylabel("error (%)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
