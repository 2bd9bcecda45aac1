"""The clinical figures against references: the stratified bootstrap against
``scipy.stats.bootstrap``, DeLong against a direct O(m·n) implementation of DeLong et al.
(1988), PR-AUC and Brier against scikit-learn, temperature against scipy's optimiser, and the
stratified grouped splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import optimize, stats
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from resnetlab.data.splits import assign_groups, grouped_folds, grouped_holdout
from resnetlab.errors import ResnetlabError
from resnetlab.evaluation.calibration import (
    brier_score,
    calibration_errors,
    calibration_summary,
    fit_temperature,
)
from resnetlab.evaluation.metrics import average_precision
from resnetlab.evaluation.operating_point import binary_rates, choose_threshold, parse_threshold
from resnetlab.evaluation.uncertainty import bootstrap_intervals, delong_test, weighted_metrics


def scores_and_labels(n: int = 400, seed: int = 0, ties: bool = True):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.35
    s = rng.random(n) + 0.6 * y
    return (np.round(s, 2) if ties else s), y


def test_point_metrics_match_scikit_learn():
    s, y = scores_and_labels()
    m = weighted_metrics(s, y, 0.7)
    assert m["roc_auc"][0] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m["pr_auc"][0] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert average_precision(torch.tensor(s), torch.tensor(y)) == pytest.approx(
        average_precision_score(y, s), abs=1e-12
    )
    rates = binary_rates(s, y, 0.7)
    assert m["sensitivity"][0] == pytest.approx(rates["sensitivity"])
    assert m["specificity"][0] == pytest.approx(rates["specificity"])
    assert rates["ppv"] == pytest.approx(((s >= 0.7) & y).sum() / (s >= 0.7).sum())


@pytest.mark.parametrize("metric", ["roc_auc", "accuracy", "sensitivity"])
def test_stratified_bootstrap_agrees_with_scipy(metric):
    s, y = scores_and_labels(300, seed=1)
    ours = bootstrap_intervals(s, y, 0.7, n_resamples=4000, seed=0)[metric]

    def statistic(pos, neg, axis=-1):
        # scipy resamples each sample separately: a class-stratified bootstrap.
        scores = np.concatenate([pos, neg], axis=axis)
        labels = np.r_[np.ones(pos.shape[-1], bool), np.zeros(neg.shape[-1], bool)]
        weights = np.ones((1, pos.shape[-1])), np.ones((1, neg.shape[-1]))
        return weighted_metrics(scores, labels, 0.7, weights)[metric][0]

    ref = stats.bootstrap(
        (s[y], s[~y]), statistic, n_resamples=4000, method="percentile", vectorized=False,
        paired=False, random_state=np.random.default_rng(1),
    ).confidence_interval  # fmt: skip
    assert ours["low"] == pytest.approx(ref.low, abs=0.012)
    assert ours["high"] == pytest.approx(ref.high, abs=0.012)
    assert ours["low"] < ours["value"] < ours["high"]


def test_bootstrap_is_seeded_and_keeps_class_counts():
    s, y = scores_and_labels(200)
    a = bootstrap_intervals(s, y, 0.5, n_resamples=1000, seed=3)
    b = bootstrap_intervals(s, y, 0.5, n_resamples=1000, seed=3)
    assert a == b and a["bootstrap"]["resamples"] == 1000


def delong_reference(a: np.ndarray, b: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """DeLong, DeLong & Clarke-Pearson (1988) written out: psi kernel, V10, V01, S10, S01."""
    v10, v01, aucs = [], [], []
    for s in (a, b):
        x, z = s[y], s[~y]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        aucs.append(psi.mean())
        v10.append(psi.mean(1))
        v01.append(psi.mean(0))
    s10, s01 = np.cov(np.array(v10)), np.cov(np.array(v01))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / y.sum() + (
        s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]
    ) / (~y).sum()
    z = (aucs[0] - aucs[1]) / np.sqrt(var)
    return aucs[0], aucs[1], 2 * stats.norm.sf(abs(z))


def test_delong_matches_the_direct_formula():
    s, y = scores_and_labels(300, seed=2)
    other = np.round(s + np.random.default_rng(5).normal(0, 0.4, len(s)), 2)
    ours = delong_test(s, other, y)
    auc_a, auc_b, p = delong_reference(s, other, y)
    assert ours["auc_a"] == pytest.approx(auc_a, abs=1e-12)
    assert ours["auc_b"] == pytest.approx(roc_auc_score(y, other), abs=1e-12)
    assert ours["p_value"] == pytest.approx(p, rel=1e-9)
    assert 0 < ours["p_value"] < 0.05  # the noisier scores really are worse here


def test_threshold_rules_on_validation():
    s, y = scores_and_labels(500, seed=4, ties=False)
    youden = choose_threshold(s, y, "youden", split="val")
    grid = np.unique(s)
    j = [binary_rates(s, y, t)["sensitivity"] + binary_rates(s, y, t)["specificity"] for t in grid]
    assert youden["threshold"] == pytest.approx(grid[int(np.argmax(j))])
    sens = choose_threshold(s, y, "sensitivity=0.95", split="val")
    assert binary_rates(s, y, sens["threshold"])["sensitivity"] >= 0.95
    above = grid[grid > sens["threshold"]]
    assert binary_rates(s, y, above.min())["sensitivity"] < 0.95  # the highest such threshold
    spec = choose_threshold(s, y, "specificity=0.9", split="val")
    assert binary_rates(s, y, spec["threshold"])["specificity"] >= 0.9
    assert choose_threshold(s, y, "0.3", split="val")["threshold"] == 0.3
    with pytest.raises(ResnetlabError, match="--threshold"):
        parse_threshold("sensitivity=2")


def test_temperature_matches_scipy_and_improves_calibration():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(600, 2, generator=g) * 4
    labels = (torch.rand(600, generator=g) < torch.softmax(logits / 3, 1)[:, 1]).long()
    t = fit_temperature(logits, labels)

    def nll(temp: float) -> float:
        return torch.nn.functional.cross_entropy(logits.double() / temp, labels).item()

    ref = optimize.minimize_scalar(nll, bounds=(0.05, 20), method="bounded",
                                   options={"xatol": 1e-9}).x  # fmt: skip
    assert t == pytest.approx(ref, rel=1e-4)
    summary = calibration_summary(logits, labels, t)
    assert summary["after"]["ece"] < summary["before"]["ece"]
    assert summary["after"]["nll"] < summary["before"]["nll"]


def test_ece_mce_and_brier_against_a_loop_and_scikit_learn():
    rng = np.random.default_rng(0)
    p1 = rng.random(1000)
    y = (rng.random(1000) < p1**1.5).astype(int)
    probs = np.stack([1 - p1, p1], 1)
    conf, correct = probs.max(1), probs.argmax(1) == y
    gaps, weights = [], []
    for lo, hi in zip(np.linspace(0, 1, 16)[:-1], np.linspace(0, 1, 16)[1:], strict=True):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            gaps.append(abs(correct[inside].mean() - conf[inside].mean()))
            weights.append(inside.mean())
    ece, mce = calibration_errors(probs, y)
    assert ece == pytest.approx(float(np.dot(gaps, weights)), abs=1e-12)
    assert mce == pytest.approx(max(gaps), abs=1e-12)
    assert brier_score(probs, y) == pytest.approx(brier_score_loss(y, p1), abs=1e-12)
    ece_mass, _ = calibration_errors(probs, y, scheme="mass")
    assert 0 < ece_mass < 0.5


def test_grouped_splits_keep_groups_whole_and_classes_stratified():
    groups = [f"p{i}" for i in range(60) for _ in range(1 + i % 4)]
    labels = torch.tensor([int(g[1:]) % 3 == 0 for g in groups], dtype=torch.long)
    folds = grouped_folds(labels, groups, 5, seed=0, classes=["a", "b"])
    for g in set(groups):
        assert len({folds[i] for i, h in enumerate(groups) if h == g}) == 1
    share = labels.float().mean().item()
    for k in range(5):
        assert abs(labels[folds == k].float().mean().item() - share) < 0.12
    kept, held = grouped_holdout(labels, groups, 0.2, seed=1)
    assert not {groups[i] for i in kept.tolist()} & {groups[i] for i in held.tolist()}
    assert 0.12 < len(held) / len(groups) < 0.28
    assert len(set(assign_groups(labels, None, [1, 1], 0).tolist())) == 2


def test_too_few_groups_for_the_folds_is_one_clear_error():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    groups = ["a", "a", "b", "c", "d", "e"]
    with pytest.raises(ResnetlabError, match="class 'no' has 2 groups, fewer than --folds 3"):
        grouped_folds(labels, groups, 3, seed=0, classes=["no", "yes"])
