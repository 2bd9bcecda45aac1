"""What the studies that sample share over several seeds (``--seeds N``, seeds ``--seed`` to
``--seed + N - 1``): the seeds of a run and its measurement ids (one seed keeps the ids of a
run from before ``--seeds``), a quantity's spread as a table row, a verdict decided on the 95 %
interval in words, and a mean drawn with its min-max band. The statistics are
``evaluation.seeds``'s."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..evaluation.seeds import LEVEL, describe, difference, spread

BAND = "the band spans the lowest to the highest seed's value"


def seeds_of(config: Any) -> list[int]:
    """The seeds of a run: ``seed``, ``seed + 1``, ... (``seeds`` of them)."""
    return list(range(config.seed, config.seed + config.seeds))


def seeded(key: str, seed: int, config: Any) -> str:
    """A measurement's id: ``key`` with one seed (a one-seed run's ids stay as they were),
    ``key:seedS`` with several."""
    return key if config.seeds == 1 else f"{key}:seed{seed}"


def seeds_line(config: Any, varies: str) -> str:
    """The summary line that says what the seeds vary and how the figures are read."""
    last = config.seed + config.seeds - 1
    return (f"Over {config.seeds} seeds ({config.seed} to {last}), each {varies}: figures are "
            f"means over the seeds, ± their sd, with the {100 * LEVEL:.0f} % t-interval of the "
            "mean; a verdict holds only where that interval does.")  # fmt: skip


def spread_row(keys: dict[str, Any], values: Sequence[float | None]) -> dict[str, Any]:
    """One line of a ``*_seeds.csv`` table: ``keys``, then the number of seeds, mean, sd and
    the 95 % interval of ``values`` (None where there is no spread to give)."""
    s = spread(values)
    return {**keys, "seeds": s["n"], "mean": s["mean"], "sd": s["sd"], "lo": s["lo"],
            "hi": s["hi"]}  # fmt: skip


def within(values: Sequence[float], bound: float, *, strict: bool = False) -> dict[str, Any]:
    """Whether the 95 % interval of the mean of ``values`` lies at or below ``bound`` (with
    ``strict``, below it; one value: the value itself), and whether the seeds disagree (some
    on each side of the bound)."""
    s = spread(values)
    if s["mean"] is None:
        return {"holds": None, "spread": s, "disagree": False}
    edge = s["mean"] if s["hi"] is None else s["hi"]
    inside = (lambda v: v < bound) if strict else (lambda v: v <= bound)
    sides = {inside(v) for v in s["values"]}
    return {"holds": inside(edge), "spread": s, "disagree": len(sides) > 1}


def compared(a: Sequence[float], b: Sequence[float], scale: float = 100.0,
             unit: str = " points", digits: int = 1) -> tuple[bool, str]:  # fmt: skip
    """Whether ``a`` exceeds ``b`` over the seeds (the 95 % Welch interval of the difference of
    the means above zero), and the difference in words, saying when the seeds disagree."""
    d = difference(a, b)
    holds = bool(d["excludes_zero"] and d["mean"] > 0)
    words = f"difference {scale * d['mean']:+.{digits}f}{unit}"
    if d["lo"] is not None:
        words += (f", {100 * LEVEL:.0f} % CI {scale * d['lo']:+.{digits}f} to "
                  f"{scale * d['hi']:+.{digits}f}")  # fmt: skip
        words += "" if d["excludes_zero"] else ", which includes 0"
    if d["seeds_disagree"]:
        words += "; the seeds disagree (a seed's own difference has the other sign)"
    return holds, words


def words(values: Sequence[float | None], scale: float = 100.0, unit: str = " %",
          digits: int = 1) -> str:  # fmt: skip
    """``"33.1 ± 0.4 % (95 % CI 32.0 to 34.2, 3 seeds)"`` of ``values``."""
    return describe(spread(values), scale, unit, digits)


def draw_band(ax: Any, x: Sequence[float] | np.ndarray, runs: Sequence[Sequence[float]],
              scale: float = 1.0, **style: Any) -> None:  # fmt: skip
    """The mean of ``runs`` (one sequence per seed) against ``x``, with a band from the lowest to
    the highest seed's value at each x."""
    values = scale * np.asarray(runs, dtype=float)
    line = ax.plot(x, values.mean(0), **style)
    ax.fill_between(x, values.min(0), values.max(0), alpha=0.2, color=line[0].get_color(),
                    linewidth=0)  # fmt: skip


__all__ = ["BAND", "compared", "draw_band", "seeded", "seeds_line", "seeds_of", "spread_row",
           "within", "words"]  # fmt: skip
