"""The stacking meta-learner: L2-penalized logistic regression on the members' logits.

Binary problems only. The features are logit(p) of each member's positive-class probability, in
the members' name order; the fit is a damped Newton-Raphson in float64 with every sum taken by
`math.fsum` and the small (k+1)x(k+1) system solved by Gaussian elimination in Python floats: no
BLAS call, so the coefficients are the same bits for any thread count or machine
(tests/unit/test_ensemble_meta.py). The penalty `l2` applies to the members' weights, not the
intercept, and keeps the fit finite when the members separate the validation split.

`out_of_fold` gives validation probabilities that no fit saw: patients are dealt to `folds`
folds per class (the patient's label: its largest), in an order drawn from a generator keyed on
(seed, purpose, class), so the threshold locked on them is not chosen on the fit's own data.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pathtrail.core.errors import PathTrailError
from pathtrail.ensemble.params import MetaParams
from pathtrail.evaluation.calibration import logit

MAX_ITER = 100
MAX_HALVINGS = 30
TOL = 1e-10  # converged when each Newton step is below TOL * max(1, |coefficient|)
GRAD_NOISE = 1e-13  # or when the score is zero to within its rounding error (per sample)
FOLD_PURPOSE = zlib.crc32(b"ensemble.meta.folds")


class MetaInputError(PathTrailError, ValueError):
    """The members' probabilities or labels cannot support a meta-learner fit."""


@dataclass(frozen=True)
class LogisticMeta:
    """intercept + sum_j coef[j] * logit(p_j); `members` names the feature columns."""
    members: tuple[str, ...]
    coef: tuple[float, ...]
    intercept: float
    l2: float
    iterations: int

    def predict(self, probs: np.ndarray) -> np.ndarray:
        """Positive-class probabilities (n,) of the members' positive-class probabilities (n, k)."""
        x = features(probs, len(self.members))
        return _sigmoid(_eta([self.intercept, *self.coef], x))

    def to_json(self) -> dict[str, Any]:
        return {"kind": "logistic", "members": list(self.members), "coef": list(self.coef),
                "intercept": self.intercept, "l2": self.l2, "iterations": self.iterations,
                "features": "logit of each member's positive-class probability, in `members` order"}


def features(probs: np.ndarray, k: int | None = None) -> np.ndarray:
    """logit of the members' probabilities (n, k), float64; bad input raises MetaInputError."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or (k is not None and p.shape[1] != k):
        want = f"(n, {k})" if k is not None else "(n, members)"
        raise MetaInputError(f"members' probabilities must be a non-empty {want} array, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(p > 1):
        raise MetaInputError("members' probabilities must be finite and within [0, 1]")
    return logit(p)


def fit_logistic(probs: np.ndarray, labels: Sequence[int] | np.ndarray, members: Sequence[str],
                 l2: float) -> LogisticMeta:
    """The penalized maximum-likelihood fit on (n, k) probabilities and 0/1 labels."""
    x = features(probs, len(members))
    y = _labels(labels, x.shape[0])
    if l2 <= 0:
        raise MetaInputError(f"l2 must be > 0, got {l2}")
    n_pos = math.fsum(y.tolist())
    beta = [math.log(n_pos / (len(y) - n_pos))] + [0.0] * x.shape[1]
    objective = _penalized(y, x, beta, l2)
    for it in range(1, MAX_ITER + 1):
        eta = _eta(beta, x)
        mu, w = _sigmoid(eta), _weight(eta)
        r = y - mu
        cols = [np.ones_like(y), *(x[:, j] for j in range(x.shape[1]))]
        grad = [math.fsum((r * c).tolist()) - (l2 * beta[i] if i else 0.0) for i, c in enumerate(cols)]
        hess = [[math.fsum((w * a * b).tolist()) + (l2 if i == j and i else 0.0) for j, b in enumerate(cols)]
                for i, a in enumerate(cols)]
        if all(abs(g) <= GRAD_NOISE * math.fsum(np.abs(c).tolist()) for g, c in zip(grad, cols, strict=True)):
            return LogisticMeta(tuple(members), tuple(beta[1:]), beta[0], float(l2), it)
        step = _solve(hess, grad)
        converged = all(abs(d) <= TOL * max(1.0, abs(b)) for d, b in zip(step, beta, strict=True))
        for _ in range(MAX_HALVINGS):  # never accept a lower penalized likelihood
            trial = [b + d for b, d in zip(beta, step, strict=True)]
            value = _penalized(y, x, trial, l2)
            if value >= objective:
                break
            step = [d / 2.0 for d in step]
        else:
            converged = True  # no ascent left in the step's direction: at the optimum to rounding
            trial, value = beta, objective
        beta, objective = trial, value
        if converged:
            return LogisticMeta(tuple(members), tuple(beta[1:]), beta[0], float(l2), it)
    raise MetaInputError(f"the meta-learner's fit did not converge in {MAX_ITER} Newton iterations; "
                         "raise ensemble.meta.l2")


def patient_folds(patient_ids: Sequence[Any] | np.ndarray, labels: Sequence[int] | np.ndarray, folds: int,
                  seed: int) -> np.ndarray:
    """Fold 0..folds-1 of each sample; a patient's samples share a fold; each class's patients are
    dealt round-robin in a keyed random order. Fewer patients of a class than folds is an error."""
    ids = np.asarray(patient_ids).astype(str)
    y = _labels(labels, len(ids))
    patients = sorted(set(ids.tolist()))
    label_of = {p: int(y[ids == p].max()) for p in patients}
    fold_of: dict[str, int] = {}
    for cls in (0, 1):
        group = [p for p in patients if label_of[p] == cls]
        if len(group) < folds:
            raise MetaInputError(f"the validation split has {len(group)} patient(s) of class {cls}, fewer than "
                                 f"ensemble.meta.folds={folds}: lower the folds or enlarge the validation split")
        order = np.random.default_rng([seed, FOLD_PURPOSE, cls]).permutation(len(group))
        for i, j in enumerate(order.tolist()):
            fold_of[group[j]] = i % folds
    return np.array([fold_of[p] for p in ids.tolist()], dtype=np.int64)


def out_of_fold(probs: np.ndarray, labels: Sequence[int] | np.ndarray, patient_ids: Sequence[Any] | np.ndarray,
                members: Sequence[str], meta: MetaParams) -> np.ndarray:
    """Each validation sample's meta probability from the fit on the other folds' patients."""
    y = _labels(labels, np.asarray(probs).shape[0] if np.ndim(probs) == 2 else -1)
    fold = patient_folds(patient_ids, y, meta.folds, meta.seed)
    out = np.empty(len(y), dtype=np.float64)
    for f in range(meta.folds):
        held = fold == f
        model = fit_logistic(np.asarray(probs)[~held], y[~held], members, meta.l2)
        out[held] = model.predict(np.asarray(probs)[held])
    return out


def _labels(labels: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != n:
        raise MetaInputError(f"labels must be a vector of the {n} samples' labels, got shape {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise MetaInputError("the meta-learner is binary: labels must be 0 or 1")
    if len(np.unique(y)) < 2:
        raise MetaInputError("the meta-learner needs both classes in its data; one class only was given")
    return y.astype(np.float64)


def _eta(beta: Sequence[float], x: np.ndarray) -> np.ndarray:
    eta = np.full(x.shape[0], beta[0], dtype=np.float64)
    for j in range(x.shape[1]):  # column by column: elementwise, no reduction order
        eta = eta + beta[j + 1] * x[:, j]
    return eta


def _sigmoid(eta: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(eta))
    return np.where(eta >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _weight(eta: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(eta))
    return e / (1.0 + e) ** 2


def _penalized(y: np.ndarray, x: np.ndarray, beta: Sequence[float], l2: float) -> float:
    eta = _eta(beta, x)
    return -math.fsum((np.logaddexp(0.0, eta) - y * eta).tolist()) - 0.5 * l2 * math.fsum(b * b for b in beta[1:])


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """a x = b by Gaussian elimination with partial pivoting (a is symmetric positive definite)."""
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        if not (math.isfinite(m[pivot][col]) and m[pivot][col] != 0.0):
            raise MetaInputError("the meta-learner's Newton system is singular; raise ensemble.meta.l2")
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(col + 1, n):
            f = m[r][col] / m[col][col]
            m[r] = [v - f * p for v, p in zip(m[r], m[col], strict=True)]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (m[r][n] - math.fsum(m[r][c] * x[c] for c in range(r + 1, n))) / m[r][r]
    return x
