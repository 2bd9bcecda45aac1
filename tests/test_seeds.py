"""Results over seeds (resnetlab.evaluation.seeds) against statsmodels' t-intervals."""

from __future__ import annotations

import pytest
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from resnetlab.evaluation.seeds import describe, difference, spread


def test_spread_is_the_t_interval_of_the_mean() -> None:
    values = [0.31, 0.29, 0.35, 0.30]
    s = spread(values)
    lo, hi = DescrStatsW(values).tconfint_mean(alpha=0.05)
    assert s["n"] == 4 and s["mean"] == pytest.approx(0.3125)
    assert (s["lo"], s["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    assert s["sd"] == pytest.approx(DescrStatsW(values).std * (4 / 3) ** 0.5)


def test_one_seed_has_no_spread() -> None:
    s = spread([0.4, None])
    assert s["n"] == 1 and s["sd"] is None and s["lo"] is None
    assert describe(s) == "40.0 %"


def test_difference_is_welchs_interval() -> None:
    a, b = [0.55, 0.52, 0.57], [0.40, 0.41, 0.36]
    d = difference(a, b)
    lo, hi = CompareMeans(DescrStatsW(a), DescrStatsW(b)).tconfint_diff(usevar="unequal")
    assert (d["lo"], d["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    assert d["excludes_zero"] and not d["seeds_disagree"]


def test_seeds_that_disagree_are_named() -> None:
    d = difference([0.50, 0.30], [0.40, 0.35])  # seed 0: +0.10, seed 1: -0.05
    assert d["seeds_disagree"] and not d["excludes_zero"]
    assert "2 seeds" in describe(spread([0.5, 0.3]))
