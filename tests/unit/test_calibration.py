"""Calibration slope and calibration-in-the-large: the float64 Newton solver and its edge cases.

References: scikit-learn's unpenalized logistic regression (a different solver) for the line and
SciPy's brentq on the score equation for the intercept with slope fixed at 1.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.optimize import brentq
from sklearn.linear_model import LogisticRegression

from pathtrail.evaluation import calibration
from pathtrail.evaluation.calibration import calibration_fit, logit
from pathtrail.evaluation.metrics import binary_metrics
from pathtrail.evaluation.report import evaluate_cohort


def sample(n: int = 800, seed: int = 0, slope: float = 0.7, shift: float = 0.3):
    """Labels drawn from a known calibration line on logit(p): y ~ Bernoulli(sigmoid(shift +
    slope * logit p)); p uniform on (0.01, 0.99), a few exact 0s and 1s clipped by the fit."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.01, 0.99, n)
    p[:3], p[3:6] = 0.0, 1.0
    eta = shift + slope * logit(p)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-eta))).astype(np.int64)
    return y, p


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def bits(fit: calibration.CalibrationFit) -> tuple[str, ...]:
    return tuple(float(v).hex() for v in (fit.slope, fit.intercept_joint, fit.intercept_in_the_large))


# --- agreement with references ----------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_line_matches_sklearn_unpenalized_logistic_regression(seed):
    y, p = sample(seed=seed)
    x = logit(p)
    ref = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-14, max_iter=1000)
    ref.fit(x[:, None], y)
    fit = calibration_fit(y, p)
    assert fit.warnings == ()
    assert fit.slope == pytest.approx(ref.coef_[0, 0], abs=1e-6)
    assert fit.intercept_joint == pytest.approx(ref.intercept_[0], abs=1e-6)
    # and the solution is a stationary point of the log-likelihood
    r = y - sigmoid(fit.intercept_joint + fit.slope * x)
    assert abs(r.sum()) < 1e-9 * len(y) and abs((r * x).sum()) < 1e-9 * len(y)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibration_in_the_large_solves_its_score_equation(seed):
    y, p = sample(seed=seed, slope=1.0, shift=-0.4)
    x = logit(p)
    a = calibration_fit(y, p).intercept_in_the_large
    assert abs(np.sum(y - sigmoid(a + x))) < 1e-9 * len(y)
    reference = brentq(lambda t: np.sum(y - sigmoid(t + x)), -30, 30, xtol=1e-14, rtol=1e-15)
    assert a == pytest.approx(reference, abs=1e-9)
    assert a == pytest.approx(-0.4, abs=0.25)  # the shift the labels were drawn with


def test_binary_metrics_report_slope_and_both_intercepts():
    y, p = sample()
    got, warnings = binary_metrics(y, p, 0.5)
    fit = calibration_fit(y, p)
    assert not any("calibration" in w for w in warnings)
    assert got["calibration_slope"] == fit.slope
    assert got["calibration_intercept"] == fit.intercept_in_the_large  # slope fixed at 1
    assert got["calibration_intercept_joint"] == fit.intercept_joint
    assert got["calibration_intercept"] != got["calibration_intercept_joint"]


def test_perfectly_calibrated_sample_gives_identity_line():
    rng = np.random.default_rng(3)
    p = rng.uniform(0.02, 0.98, 20_000)
    y = (rng.random(p.size) < p).astype(int)
    fit = calibration_fit(y, p)
    assert fit.slope == pytest.approx(1.0, abs=0.06)
    assert fit.intercept_joint == pytest.approx(0.0, abs=0.05)
    assert fit.intercept_in_the_large == pytest.approx(0.0, abs=0.05)


def test_over_confident_scores_give_slope_below_one():
    y, p = sample(n=5000, slope=0.5, shift=0.0)
    assert calibration_fit(y, p).slope == pytest.approx(0.5, abs=0.1)


# --- determinism --------------------------------------------------------------------------------


def test_same_bits_on_repeated_calls_and_order_independent():
    y, p = sample(n=3000, seed=5)
    first = calibration_fit(y, p)
    assert bits(calibration_fit(y, p)) == bits(first)
    order = np.random.default_rng(9).permutation(len(y))
    shuffled = calibration_fit(y[order], p[order])
    for a, b in zip(bits(first), bits(shuffled), strict=True):
        assert float.fromhex(a) == pytest.approx(float.fromhex(b), abs=1e-12, rel=1e-12)


# --- separation and degenerate inputs -----------------------------------------------------------


@pytest.mark.parametrize("inverted", [False, True])
def test_complete_separation_in_either_direction_gives_no_slope(inverted):
    p = np.linspace(0.05, 0.95, 40)
    y = (p < 0.5) if inverted else (p > 0.5)
    got, warnings = binary_metrics(y.astype(int), p, 0.5)
    assert math.isnan(got["calibration_slope"]) and math.isnan(got["calibration_intercept_joint"])
    assert math.isfinite(got["calibration_intercept"])  # the offset model is still defined
    (reason,) = [w for w in warnings if "calibration" in w]
    assert "complete separation" in reason
    assert ("below" if inverted else "above") in reason


@pytest.mark.parametrize("inverted", [False, True])
def test_quasi_separation_overlap_only_at_ties_gives_no_slope(inverted):
    p = np.array([0.1, 0.2, 0.3, 0.5, 0.5, 0.7, 0.8, 0.9])
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    fit = calibration_fit(1 - y if inverted else y, p)
    assert math.isnan(fit.slope) and math.isnan(fit.intercept_joint)
    (reason,) = fit.warnings
    assert "quasi-separation" in reason and ("below" if inverted else "above") in reason


def test_one_overlapping_pair_is_not_separation():
    p = np.r_[np.linspace(0.05, 0.45, 50), 0.55, 0.45001, np.linspace(0.55, 0.95, 50)]
    y = np.r_[np.zeros(51), np.ones(51)].astype(int)
    fit = calibration_fit(y, p)
    ref = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-14, max_iter=1000)
    ref.fit(logit(p)[:, None], y)
    assert fit.warnings == () and fit.slope > 5
    assert fit.slope == pytest.approx(ref.coef_[0, 0], rel=1e-6)


def test_not_converging_is_reported_not_returned(monkeypatch):
    monkeypatch.setattr(calibration, "MAX_ITER", 1)
    fit = calibration_fit(*sample())
    assert math.isnan(fit.slope)
    assert any("did not converge" in w for w in fit.warnings)


def test_degenerate_inputs_do_not_crash():
    one_class = calibration_fit([1, 1, 1], [0.2, 0.5, 0.9])
    assert math.isnan(one_class.slope) and math.isnan(one_class.intercept_in_the_large)
    assert one_class.warnings == ()  # binary_metrics reports the missing class
    constant = calibration_fit([0, 1, 0, 1], [0.3] * 4)
    assert math.isnan(constant.slope) and "same" in constant.warnings[0]
    assert constant.intercept_in_the_large == pytest.approx(-logit(np.array([0.3]))[0], abs=1e-12)
    exact = calibration_fit([0, 1, 0, 1], [0.0, 1.0, 1.0, 0.0])  # clipped, both classes at both ends
    assert exact.slope == pytest.approx(0.0, abs=1e-9)
    assert exact.intercept_in_the_large == pytest.approx(0.0, abs=1e-9)
    exact_separated = calibration_fit([0, 1, 0, 1], [0.0, 1.0, 0.0, 1.0])
    assert math.isnan(exact_separated.slope) and "complete separation" in exact_separated.warnings[0]
    assert exact_separated.intercept_in_the_large == pytest.approx(0.0, abs=1e-9)


def test_evaluate_cohort_reports_undefined_slope_as_none_with_warning():
    p = np.linspace(0.05, 0.95, 40)
    y = (p < 0.5).astype(int)  # every positive scored below every negative
    report = evaluate_cohort(y, p, np.arange(40) // 2, 0.5, n_bootstrap=0)
    json.dumps(report, allow_nan=False)
    assert report["calibration_slope"] is None and report["calibration_intercept_joint"] is None
    assert isinstance(report["calibration_intercept"], float)
    assert any("complete separation" in w for w in report["warnings"])
