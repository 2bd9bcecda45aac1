"""The figures a reviewer asks for, each checked against its reference library: decision curves
(dcurves), calibration slope / intercept / in-the-large (statsmodels), split-conformal sets
(MAPIE), DeLong's midranks (scipy) and predictive values at a prevalence (counting)."""

from __future__ import annotations

import dcurves
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import torch
from mapie.classification import SplitConformalClassifier
from scipy.stats import rankdata
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import roc_auc_score

from resnetlab.errors import ResnetlabError
from resnetlab.evaluation.clinic import analyse, fit_on_val, summary_lines
from resnetlab.evaluation.conformal import fit_conformal, prediction_sets, set_summary
from resnetlab.evaluation.decision import decision_curve, predictive_values, useful_range
from resnetlab.evaluation.recalibration import recalibration, recalibration_intervals
from resnetlab.evaluation.uncertainty import _midrank, delong_test


def scored(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of an overconfident two-class model (its logits twice the true log-odds,
    so the calibration slope is about 0.5) and labels drawn from the true probabilities."""
    rng = np.random.default_rng(seed)
    log_odds = rng.normal(-0.6, 1.5, n)
    y = rng.random(n) < 1 / (1 + np.exp(-log_odds))
    return 1 / (1 + np.exp(-2 * log_odds)), y


def test_decision_curve_matches_dcurves() -> None:
    p, y = scored()
    ours = decision_curve(p, y)
    frame = pd.DataFrame({"outcome": y.astype(int), "model": p})
    theirs = dcurves.dca(data=frame, outcome="outcome", modelnames=["model"],
                         thresholds=np.array(ours["threshold"]))  # fmt: skip
    for name, key in (("model", "model"), ("all", "treat_all"), ("none", "treat_none")):
        rows = theirs[theirs["model"] == name].sort_values("threshold")
        np.testing.assert_allclose(rows["threshold"], ours["threshold"], atol=1e-12)
        np.testing.assert_allclose(rows["net_benefit"], ours[key], atol=1e-10)


def test_decision_curve_by_hand_and_useful_range() -> None:
    p = np.array([0.9, 0.8, 0.3, 0.6, 0.1])
    y = np.array([1, 1, 0, 0, 0], bool)
    curve = decision_curve(p, y, np.array([0.5]))
    assert curve["model"] == pytest.approx([2 / 5 - 1 / 5 * 1.0])  # TP 2, FP 1 (0.6), odds 1
    assert curve["treat_all"] == pytest.approx([0.4 - 0.6])
    assert useful_range(decision_curve(p, y)) is not None
    assert useful_range(decision_curve(np.full(5, 0.5), y)) is None  # no better than a coin
    with pytest.raises(ResnetlabError, match="between 0 and 1"):
        decision_curve(p, y, np.array([0.0, 0.5]))


def test_recalibration_matches_statsmodels() -> None:
    p, y = scored()
    ours = recalibration(p, y)
    lp = np.log(p / (1 - p))
    joint = sm.Logit(y.astype(float), sm.add_constant(lp)).fit(disp=0)
    large = sm.GLM(y.astype(float), np.ones((len(p), 1)), family=sm.families.Binomial(),
                   offset=lp).fit()  # fmt: skip
    assert ours["intercept"][0] == pytest.approx(joint.params[0], abs=1e-8)
    assert ours["slope"][0] == pytest.approx(joint.params[1], abs=1e-8)
    assert ours["in_the_large"][0] == pytest.approx(large.params[0], abs=1e-8)
    assert 0.35 < ours["slope"][0] < 0.7  # logits twice the true log-odds: slope near 0.5


def test_recalibration_of_calibrated_scores_is_ideal_and_intervals_cover_it() -> None:
    rng = np.random.default_rng(1)
    p = rng.uniform(0.02, 0.98, 4000)
    y = rng.random(4000) < p  # calibrated by construction
    out = recalibration_intervals(p, y, n_resamples=300, seed=0)
    for name, ideal in (("slope", 1.0), ("intercept", 0.0), ("in_the_large", 0.0)):
        assert out[name]["low"] <= ideal <= out[name]["high"], (name, out[name])
        assert out[name]["low"] < out[name]["value"] < out[name]["high"]
    # the vectorised bootstrap fits each resample as statsmodels fits it alone
    counts = np.random.default_rng(2).integers(0, 3, size=(1, 4000)).astype(float)
    lp = np.log(p / (1 - p))
    fit = sm.GLM(y.astype(float), sm.add_constant(lp), family=sm.families.Binomial(),
                 freq_weights=counts[0]).fit()  # fmt: skip
    assert recalibration(p, y, counts)["slope"][0] == pytest.approx(fit.params[1], abs=1e-8)


def test_conformal_sets_match_mapie_and_cover() -> None:
    rng = np.random.default_rng(3)
    n = 4000
    labels = rng.integers(0, 2, n)
    logit = rng.normal(1.0 * (2 * labels - 1), 1.3)
    probs = np.stack([1 / (1 + np.exp(logit)), 1 / (1 + np.exp(-logit))], 1)
    cal, test = slice(0, 1000), slice(1000, n)
    fit = fit_conformal(probs[cal], labels[cal], 0.9, split="val")
    sets = prediction_sets(probs[test], fit)

    class Fixed(ClassifierMixin, BaseEstimator):  # fitted; its input is its own probabilities
        def __init__(self) -> None:  # fitted attributes on the instance, as scikit-learn checks
            self.classes_ = np.array([0, 1])
            self.n_features_in_ = 2

        def fit(self, x, y):
            return self

        def predict_proba(self, x):
            return np.asarray(x)

        def predict(self, x):
            return np.asarray(x).argmax(1)

    conformal = SplitConformalClassifier(Fixed(), confidence_level=0.9,
                                         conformity_score="lac", prefit=True)  # fmt: skip
    conformal.conformalize(probs[cal], labels[cal])
    _, theirs = conformal.predict_set(probs[test])
    np.testing.assert_array_equal(sets, theirs[:, :, 0])
    summary = set_summary(sets, labels[test])
    assert summary["coverage_achieved"] >= 0.88  # >= 0.9 in expectation; 3000 test images
    assert summary["refer"] > 0  # overlapping classes: some images are referred
    with pytest.raises(ResnetlabError, match="too few"):
        fit_conformal(probs[:5], labels[:5], 0.95, split="val")


def test_predictive_values_at_prevalence_match_reweighted_counts() -> None:
    p, y = scored(n=2000, seed=4)
    cut = p >= 0.5
    sens, spec = cut[y].mean(), (~cut[~y]).mean()
    balanced = predictive_values(sens, spec, float(y.mean()))
    assert balanced["ppv"] == pytest.approx((cut & y).sum() / cut.sum())
    assert balanced["npv"] == pytest.approx((~cut & ~y).sum() / (~cut).sum())
    # at 5 % prevalence: weight the negatives so they make up 95 % of the images
    w_neg = 0.95 / 0.05 * y.sum() / (~y).sum()
    tp, fp = (cut & y).sum(), w_neg * (cut & ~y).sum()
    rare = predictive_values(sens, spec, 0.05)
    assert rare["ppv"] == pytest.approx(tp / (tp + fp))
    assert rare["ppv"] < balanced["ppv"] and rare["npv"] > balanced["npv"]
    with pytest.raises(ResnetlabError, match="prevalence"):
        predictive_values(0.9, 0.9, 1.0)


def test_midrank_matches_scipy_and_delong_is_unchanged() -> None:
    rng = np.random.default_rng(5)
    x = rng.integers(0, 50, 10_000).astype(float)  # many ties
    np.testing.assert_array_equal(_midrank(x), rankdata(x, method="average"))
    p, y = scored(n=500, seed=6)
    q = np.clip(p + rng.normal(0, 0.1, len(p)), 0, 1)
    out = delong_test(p, q, y)
    assert out["auc_a"] == pytest.approx(roc_auc_score(y, p))
    assert out["auc_b"] == pytest.approx(roc_auc_score(y, q))


def test_analyse_reports_the_reviewer_figures(tmp_path) -> None:
    def logits_of(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        p, y = scored(n=n, seed=seed)
        lp = torch.as_tensor(np.log(p / (1 - p)))
        return torch.stack([-lp / 2, lp / 2], 1).float(), torch.as_tensor(y.astype(np.int64))

    val, test = logits_of(7, 400), logits_of(8, 600)
    fit = fit_on_val(*val, "youden", ["normal", "pneumonia"], split="val")
    assert fit["conformal"]["calibration_images"] == 400  # fitted on validation only
    section = analyse(fit, {"val": val, "test": test}, ["normal", "pneumonia"], tmp_path,
                      prevalence=0.05)  # fmt: skip
    figures = section["test"]["reviewer"]
    # temperature scaling repairs the overconfident logits: the slope moves towards 1
    before, after = (figures["recalibration"][k]["slope"]["value"] for k in ("before", "after"))
    assert before < 0.7 and abs(after - 1) < abs(before - 1)
    assert figures["conformal"]["coverage_achieved"] >= 0.9
    assert figures["prevalence"]["ppv"] < section["test"]["at_threshold"]["ppv"]
    assert (tmp_path / "decision_curve_test.png").is_file()
    text = "\n".join(summary_lines(section))
    for words in ("calibration slope", "decision curve", "refer to a human", "prevalence of 5.0%"):
        assert words in text
