"""Calibration as a reviewer asks for it: the calibration slope and intercept of logistic
recalibration and calibration-in-the-large (Cox 1958; Van Calster et al. 2019), with stratified
bootstrap intervals.

For the predicted probability ``p`` of the positive class and its logit ``lp``:
- logistic recalibration fits ``logit P(y = 1) = a + b * lp``: ``b`` is the calibration slope
  (1 is ideal; below 1 the predictions are too extreme, as overfitted models' are) and ``a`` the
  intercept of that fit;
- calibration-in-the-large fits ``logit P(y = 1) = a' + lp`` (``lp`` an offset): ``a'`` is 0 when
  the mean prediction matches the observed rate, positive when the model under-predicts.
Both are maximum-likelihood fits by Newton's method, done for all bootstrap resamples at once
(a resample is a row of per-image counts, as in ``evaluation.uncertainty``). The bootstrap here
resamples images, not each class apart: a stratified one would hold the observed rate fixed
and so hide most of the uncertainty of the intercepts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .uncertainty import resample_counts

EPS = 1e-12  # probabilities are clipped to [EPS, 1 - EPS] before taking the logit


def _newton(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, offset: np.ndarray, iters: int = 50
) -> np.ndarray:
    """Weighted logistic regression of ``y`` on the columns of ``x`` (n, k) with an offset,
    for each row of weights ``w`` (B, n): coefficients (B, k)."""
    beta = np.zeros((w.shape[0], x.shape[1]))
    ridge = 1e-10 * np.eye(x.shape[1])
    for _ in range(iters):
        eta = offset + beta @ x.T
        mu = 1 / (1 + np.exp(-eta))
        grad = (w * (y - mu)) @ x
        hess = np.einsum("bn,ni,nj->bij", w * mu * (1 - mu), x, x) + ridge
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        beta += step
        if np.max(np.abs(step)) < 1e-10:
            break
    return beta


def recalibration(
    probability: np.ndarray, positive: np.ndarray, weights: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Calibration slope, intercept and calibration-in-the-large, one value per row of
    ``weights`` (per-image counts; ``None`` is the data itself)."""
    p = np.clip(np.asarray(probability, np.float64), EPS, 1 - EPS)
    y = np.asarray(positive, np.float64)
    w = np.ones((1, len(p))) if weights is None else np.asarray(weights, np.float64)
    lp = np.log(p / (1 - p))
    joint = _newton(np.stack([np.ones_like(lp), lp], 1), y, w, np.zeros_like(lp))
    large = _newton(np.ones((len(lp), 1)), y, w, lp)
    return {"slope": joint[:, 1], "intercept": joint[:, 0], "in_the_large": large[:, 0]}


def recalibration_intervals(
    probability: np.ndarray,
    positive: np.ndarray,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Each figure of :func:`recalibration` with a percentile bootstrap interval."""
    p, y = np.asarray(probability, np.float64), np.asarray(positive, bool)
    point = recalibration(p, y)
    draws = recalibration(p, y, resample_counts(len(p), n_resamples, np.random.default_rng(seed)))
    tail = (1 - level) / 2 * 100
    out: dict[str, Any] = {}
    for name, value in point.items():
        low, high = np.nanpercentile(draws[name], [tail, 100 - tail])
        out[name] = {"value": float(value[0]), "low": float(low), "high": float(high)}
    out["bootstrap"] = {"resamples": n_resamples, "seed": seed, "level": level,
                        "method": "percentile"}  # fmt: skip
    return out
