"""Results over several seeds: the mean, the standard deviation and a 95 % t-interval of one
figure, and the Welch interval of a difference, so that a verdict rests on the spread between
seeds rather than on one run."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

LEVEL = 0.95


def spread(values: Sequence[float | None], level: float = LEVEL) -> dict[str, Any]:
    """``n``, ``mean``, ``sd`` (n - 1) and the t-interval ``lo``-``hi`` of the mean; sd and the
    interval are None for one value (one seed says nothing about the spread)."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    n = len(x)
    out: dict[str, Any] = {"n": n, "mean": float(x.mean()) if n else None, "sd": None,
                           "lo": None, "hi": None, "values": [float(v) for v in x]}  # fmt: skip
    if n >= 2:
        sd = float(x.std(ddof=1))
        half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
        out |= {"sd": sd, "lo": out["mean"] - half, "hi": out["mean"] + half}
    return out


def difference(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> dict[str, Any]:
    """Mean of ``a`` minus mean of ``b`` with Welch's t-interval (None with fewer than two
    values on either side), and whether the seeds disagree: some seed's ``a - b`` (paired by
    position) has the other sign than the mean difference."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(x.mean() - y.mean())
    out: dict[str, Any] = {"mean": diff, "lo": None, "hi": None}
    if len(x) >= 2 and len(y) >= 2:
        vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
        se = math.sqrt(vx + vy)
        if se == 0:
            out |= {"lo": diff, "hi": diff}
        else:
            dof = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
            half = float(stats.t.ppf(0.5 + level / 2, dof)) * se
            out |= {"lo": diff - half, "hi": diff + half}
    paired = [p - q for p, q in zip(x, y, strict=False)]
    out["seeds_disagree"] = any(np.sign(d) != np.sign(diff) for d in paired if d != 0)
    out["excludes_zero"] = out["lo"] is not None and (out["lo"] > 0 or out["hi"] < 0)
    return out


def describe(
    s: dict[str, Any], scale: float = 100.0, unit: str = " %", digits: int = 1, of: str = "seeds"
) -> str:
    """``"33.1 ± 0.4 % (95 % CI 32.0 to 34.2, 3 seeds)"``; one seed: the value alone; ``of``
    names what was repeated (``runs`` where they may differ in more than the seed)."""
    if s["mean"] is None:
        return "n/a"
    mean = f"{scale * s['mean']:.{digits}f}"
    if s.get("sd") is None:
        return f"{mean}{unit}"
    lo, hi = f"{scale * s['lo']:.{digits}f}", f"{scale * s['hi']:.{digits}f}"
    sd = f"{scale * s['sd']:.{digits}f}"
    return f"{mean} ± {sd}{unit} ({100 * LEVEL:.0f} % CI {lo} to {hi}, {s['n']} {of})"


__all__ = ["LEVEL", "describe", "difference", "spread"]
