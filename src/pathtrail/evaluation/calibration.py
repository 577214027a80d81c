"""Logistic calibration of binary probabilities: slope and calibration-in-the-large.

With ``x = logit(p)`` (p clipped to [1e-12, 1 - 1e-12]):

* the calibration line is the maximum-likelihood fit of ``logit P(y=1) = b0 + b1 * x``; ``b1`` is
  the calibration slope (1 when calibrated, < 1 for over-confident scores), ``b0`` the joint
  intercept;
* calibration-in-the-large is ``a`` in ``logit P(y=1) = a + x`` (slope fixed at 1, x an offset):
  0 when the mean prediction matches the event rate on the logit scale.

Both are solved by Newton-Raphson (IRLS) in float64 NumPy with a fixed start and a fixed
iteration cap: the line with step halving (the log-likelihood never decreases) and its 2x2 system
solved in closed form (no BLAS, no LAPACK), the intercept safeguarded by bisection on a bracket of
its root. Every sum over samples is taken with ``math.fsum`` (exactly rounded, so the result does
not depend on the order of the samples nor on how a library blocks a reduction). Elementwise
exp/log are NumPy's, which may differ in the last bit between CPUs with different SIMD kernels.

The calibration line has no finite maximum when the classes are separated on x: every positive
above every negative or every positive below every negative (complete separation), or the same
with the two classes touching only at tied scores (quasi-separation). This is checked exactly
before fitting; the slope is then NaN with a sentence saying why, instead of the large finite
number an iterative solver stops at.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

EPS = 1e-12  # probabilities are clipped to [EPS, 1 - EPS] before the logit
MAX_ITER = 100  # Newton iterations (a well-posed fit needs fewer than 30)
MAX_HALVINGS = 60  # step halvings per iteration
TOL = 1e-10  # converged when each Newton step is below TOL * max(1, |coefficient|)
GRAD_NOISE = 2.0**-50  # per sample: a score below this is indistinguishable from zero


@dataclass(frozen=True)
class CalibrationFit:
    """Calibration slope, joint intercept and calibration-in-the-large; NaN where undefined."""

    slope: float
    intercept_joint: float
    intercept_in_the_large: float
    warnings: tuple[str, ...] = ()


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) of p clipped to [EPS, 1 - EPS], float64."""
    clipped = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(clipped / (1.0 - clipped))


def _fsum(values: np.ndarray) -> float:
    return math.fsum(values.tolist())


def _fitted(eta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sigmoid(eta) and its derivative sigmoid * (1 - sigmoid), without overflow."""
    e = np.exp(-np.abs(eta))
    mu = np.where(eta >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return mu, e / (1.0 + e) ** 2


def _loglik(y: np.ndarray, eta: np.ndarray) -> float:
    """Bernoulli log-likelihood sum(y * eta - log(1 + exp(eta)))."""
    return -_fsum(np.logaddexp(0.0, eta) - y * eta)


def _calibration_line(y: np.ndarray, x: np.ndarray) -> tuple[float, float] | None:
    """Maximum likelihood (b0, b1) of ``logit P(y=1) = b0 + b1 * x``; None if not converged.

    Damped Newton from the intercept-only fit; the caller has ruled out separation.
    """
    n_pos = _fsum(y)
    b0, b1 = math.log(n_pos / (len(y) - n_pos)), 0.0
    noise0, noise1 = len(y) * GRAD_NOISE, _fsum(np.abs(x)) * GRAD_NOISE
    eta = b0 + b1 * x
    ll = _loglik(y, eta)
    for _ in range(MAX_ITER):
        mu, w = _fitted(eta)
        r = y - mu
        g0, g1 = _fsum(r), _fsum(r * x)
        if abs(g0) <= noise0 and abs(g1) <= noise1:
            return b0, b1  # the score is zero to within its rounding error
        h00, h01, h11 = _fsum(w), _fsum(w * x), _fsum(w * x * x)
        det = h00 * h11 - h01 * h01
        if not (math.isfinite(det) and det > 0.0):
            return None
        d0, d1 = (h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det
        converged = abs(d0) <= TOL * max(1.0, abs(b0)) and abs(d1) <= TOL * max(1.0, abs(b1))
        for _ in range(MAX_HALVINGS):  # step halving: never accept a lower log-likelihood
            new_eta = (b0 + d0) + (b1 + d1) * x
            new_ll = _loglik(y, new_eta)
            if new_ll >= ll:
                break
            d0, d1 = d0 / 2.0, d1 / 2.0
        else:
            return (b0, b1) if converged else None
        b0, b1, eta, ll = b0 + d0, b1 + d1, new_eta, new_ll
        if converged:
            return b0, b1
    return None


def _in_the_large(y: np.ndarray, x: np.ndarray) -> float:
    """The root a of ``sum(y - sigmoid(a + x)) = 0``: Newton safeguarded by bisection.

    The score decreases in a and changes sign on [logit(ybar) - max x, logit(ybar) - min x], so
    the root exists (both classes present) and stays bracketed; start at 0 (calibrated).
    """
    n_pos = _fsum(y)
    base = math.log(n_pos / (len(y) - n_pos))
    lo, hi = base - float(x.max()), base - float(x.min())
    a = min(max(0.0, lo), hi)
    for _ in range(MAX_ITER):
        if lo == hi:
            return lo
        mu, w = _fitted(a + x)
        g = _fsum(y - mu)
        if abs(g) <= len(y) * GRAD_NOISE:
            return a
        lo, hi = (a, hi) if g > 0 else (lo, a)
        h = _fsum(w)
        step = g / h if h > 0.0 else math.inf
        if abs(step) <= TOL * max(1.0, abs(a)):
            return a + step
        a = a + step if lo < a + step < hi else lo + (hi - lo) / 2.0
    return a  # not reached in practice: every step keeps a inside the shrinking bracket


def _separation(y: np.ndarray, x: np.ndarray) -> str | None:
    """Why the calibration line has no finite maximum-likelihood fit, or None if it has one."""
    pos, neg = x[y == 1], x[y == 0]
    for low, high, order in ((neg, pos, "above"), (pos, neg, "below")):
        if low.max() < high.min():
            return (f"calibration slope undefined: complete separation on logit(prob) (every "
                    f"positive scores {order} every negative), so the logistic calibration line "
                    "has no finite maximum-likelihood fit")
        if low.max() == high.min():
            return (f"calibration slope undefined: quasi-separation on logit(prob) (every "
                    f"positive scores {order} or tied with every negative; the classes overlap "
                    "only at ties), so the logistic calibration line has no finite "
                    "maximum-likelihood fit")
    return None


def calibration_fit(labels: np.ndarray, probs: np.ndarray) -> CalibrationFit:
    """Calibration slope and intercepts of binary labels (n,) against positive-class probs (n,).

    One class only: everything NaN and no sentence (the caller reports the missing class).
    Constant or separated logit(prob): slope and joint intercept NaN, with a sentence;
    calibration-in-the-large is still defined whenever both classes are present.
    """
    y = np.asarray(labels, dtype=np.float64)
    x = logit(probs)
    nan = float("nan")
    n_pos = _fsum(y)
    if n_pos == 0.0 or n_pos == len(y):
        return CalibrationFit(nan, nan, nan)
    a = _in_the_large(y, x)
    if x.min() == x.max():
        reason = (f"calibration slope undefined: every prob is the same ({float(x[0]):.6g} "
                  "on the logit scale after clipping)")
        return CalibrationFit(nan, nan, a, (reason,))
    reason = _separation(y, x)
    if reason:
        return CalibrationFit(nan, nan, a, (reason,))
    line = _calibration_line(y, x)
    if line is None:
        reason = (f"calibration slope fit did not converge in {MAX_ITER} Newton iterations: "
                  "slope undefined")
        return CalibrationFit(nan, nan, a, (reason,))
    return CalibrationFit(line[1], line[0], a)
