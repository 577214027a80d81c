"""Patient-clustered bootstrap and DeLong intervals, vectorized over resamples.

A resample draws patients with replacement and takes all of their samples, so it is fully described
by a multiplicity per patient. Every metric is then a weighted statistic of the original samples
(weight = multiplicity of the sample's patient), and a block of resamples is a (resamples, patients)
count matrix evaluated with matrix operations: one sort of the scores per cohort, none per resample.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from scipy import sparse

BINARY_METRICS = (
    "auroc",
    "auprc",
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "f1",
    "brier",
)
MULTICLASS_METRICS = ("auroc", "accuracy", "brier")

# Resamples x samples per block: keeps each temporary (float64) near 16 MB whatever the cohort size.
_BLOCK_ELEMENTS = 2_000_000
# Resamples x tie groups per step of the rank statistics: small enough to stay in a core's cache.
_CACHE_ELEMENTS = 65_536


def draw_patient_counts(rng: np.random.Generator, n_patients: int, n_resamples: int) -> np.ndarray:
    """Multiplicities (n_resamples, n_patients) of patients drawn with replacement."""
    drawn = rng.integers(0, n_patients, size=(n_resamples, n_patients))
    drawn += np.arange(n_resamples)[:, None] * n_patients
    flat = np.bincount(drawn.ravel(), minlength=n_resamples * n_patients)
    return flat.reshape(n_resamples, n_patients).astype(np.float64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN where den == 0 (an undefined metric, not an error)."""
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _distinct(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group index of each value of a sorted array (equal values share one), and the group values."""
    new = np.ones(len(sorted_values), dtype=bool)
    new[1:] = sorted_values[1:] != sorted_values[:-1]
    return np.cumsum(new) - 1, sorted_values[new]


@dataclass(frozen=True)
class _Ranking:
    """Sort-once structure for weighted AUROC and average precision of one binary problem.

    Positives and negatives are sorted by score and cut into tie groups (one per distinct score). A
    block of resamples gets its weight per group from one sparse product with the patient
    multiplicities, and cumulative weights over groups, not over samples. Multiplicities are
    integers, so these sums are exact (int64) and AUROC does not depend on their order; average
    precision sums its per-positive terms in the same order and with the same float64 operands as
    the per-sample formulation it replaced (`bench/bootstrap_reference.py`), so every replicate is
    bitwise the same (`tests/unit/test_bootstrap_speed.py`).
    """

    pos_codes: np.ndarray  # patient code of each positive, ascending score
    pos_group: np.ndarray  # tie group (among positives) of each positive
    neg_lo: np.ndarray  # per positive group: negative groups with a strictly lower score
    neg_hi: np.ndarray  # per positive group: negative groups with a lower or equal score
    pos_by_group: sparse.csr_matrix  # (positive groups, patients): member counts
    neg_by_group: sparse.csr_matrix  # (negative groups, patients): member counts

    @classmethod
    def build(cls, positive: np.ndarray, scores: np.ndarray, codes: np.ndarray,
              n_patients: int) -> _Ranking:
        order = np.argsort(scores, kind="stable")
        s, y, c = scores[order], positive[order], codes[order]
        pos_group, pos_values = _distinct(s[y])
        neg_group, neg_values = _distinct(s[~y])

        def members(group: np.ndarray, patients: np.ndarray, n_groups: int) -> sparse.csr_matrix:
            ones = np.ones(len(group), dtype=np.int64)
            matrix = sparse.csr_matrix((ones, (group, patients)), shape=(n_groups, n_patients))
            matrix.sum_duplicates()
            return matrix

        return cls(
            pos_codes=c[y],
            pos_group=pos_group,
            neg_lo=np.searchsorted(neg_values, pos_values, side="left"),
            neg_hi=np.searchsorted(neg_values, pos_values, side="right"),
            pos_by_group=members(pos_group, c[y], len(pos_values)),
            neg_by_group=members(neg_group, c[~y], len(neg_values)),
        )

    def auroc_auprc(self, counts: np.ndarray, auprc: bool = True,
                    integral: bool | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Weighted AUROC (Mann-Whitney, ties count 1/2) and average precision per count row.

        Rows are independent; they are taken a few at a time so that the temporaries stay in cache.
        Integer-valued counts (`integral`, checked when None) are summed as int64: exact, and
        several times faster to accumulate than float64.
        """
        if integral is None:
            integral = bool(np.all(counts == np.floor(counts)) and np.abs(counts).max(initial=0) < 2**31)
        auroc_out = np.empty(counts.shape[0])
        auprc_out = np.empty(counts.shape[0]) if auprc else None
        width = max(self.neg_by_group.shape[0] + self.pos_by_group.shape[0], len(self.pos_codes), 1)
        step = max(1, _CACHE_ELEMENTS // width)
        for start in range(0, counts.shape[0], step):
            rows = slice(start, start + step)
            self._rows(counts[rows], np.int64 if integral else np.float64, auroc_out[rows],
                       auprc_out[rows] if auprc_out is not None else None)
        return auroc_out, auprc_out

    def _rows(self, counts: np.ndarray, dtype: type, auroc: np.ndarray, auprc: np.ndarray | None) -> None:
        columns = np.ascontiguousarray(counts.T, dtype=dtype)  # (patients, rows)
        w_pos = np.ascontiguousarray((self.pos_by_group @ columns).T)  # (rows, positive groups)
        w_neg = np.ascontiguousarray((self.neg_by_group @ columns).T)
        # weight strictly below each group; the last column holds the total
        cum_neg = np.zeros((counts.shape[0], w_neg.shape[1] + 1), dtype=dtype)
        np.cumsum(w_neg, axis=1, out=cum_neg[:, 1:])
        cum_pos = np.zeros((counts.shape[0], w_pos.shape[1] + 1), dtype=dtype)
        np.cumsum(w_pos, axis=1, out=cum_pos[:, 1:])
        total_pos = cum_pos[:, -1].astype(np.float64)
        total_neg = cum_neg[:, -1].astype(np.float64)

        # negatives below a positive, plus half of those tied with it
        neg_below = cum_neg[:, self.neg_lo]
        below = neg_below + cum_neg[:, self.neg_hi]
        pairs = np.einsum("ij,ij->i", w_pos, below).astype(np.float64)
        auroc[:] = _ratio(0.5 * pairs, total_pos * total_neg)
        if auprc is None:
            return
        # precision at the threshold equal to each group's score (predict positive if >=); a group
        # without weight gets 0 / 1 (its positives then add 0 * 0, as they added 0 * finite before)
        tp_at = total_pos[:, None] - cum_pos[:, :-1]
        den = tp_at + (total_neg[:, None] - neg_below)
        den[den == 0] = 1
        per_positive = (tp_at / den)[:, self.pos_group]
        auprc[:] = _ratio(np.einsum("ij,ij->i", counts[:, self.pos_codes], per_positive), total_pos)


def weighted_auroc_auprc(
    labels: np.ndarray, scores: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and average precision with sample weights (n,) or (rows, n); NaN when undefined."""
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    ranking = _Ranking.build(
        np.asarray(labels) == 1, np.asarray(scores, dtype=np.float64), np.arange(len(labels)),
        len(labels),
    )
    return ranking.auroc_auprc(weights)


def _patient_sums(codes: np.ndarray, n_patients: int, columns: list[np.ndarray]) -> np.ndarray:
    """(n_patients, len(columns)) per-patient sums of per-sample columns."""
    return np.stack([np.bincount(codes, weights=col, minlength=n_patients) for col in columns], 1)


def _binary_from_sums(sums: np.ndarray) -> dict[str, np.ndarray]:
    """Threshold metrics and Brier score from weighted [pos, neg, tp, fp, squared error] sums."""
    pos, neg, tp, fp, sq_err = sums.T
    fn, tn = pos - tp, neg - fp
    sensitivity, specificity = _ratio(tp, pos), _ratio(tn, neg)
    return {
        "accuracy": _ratio(tp + tn, pos + neg),
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "brier": _ratio(sq_err, pos + neg),
    }


class _BinaryEngine:
    """Metrics of a binary cohort for any block of patient multiplicities."""

    names = BINARY_METRICS

    def __init__(self, labels: np.ndarray, probs: np.ndarray, codes: np.ndarray, threshold: float):
        self.n_patients = int(codes.max()) + 1
        positive = labels == 1
        predicted = probs >= threshold
        self.ranking = _Ranking.build(positive, probs, codes, self.n_patients)
        columns = [
            positive,
            ~positive,
            positive & predicted,
            ~positive & predicted,
            (probs - positive) ** 2,
        ]
        self.sums = _patient_sums(codes, self.n_patients, [c.astype(np.float64) for c in columns])

    def __call__(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        out = _binary_from_sums(counts @ self.sums)
        out["auroc"], out["auprc"] = self.ranking.auroc_auprc(counts, integral=True)
        return out


class _MulticlassEngine:
    """Macro one-vs-rest AUROC (over classes present in the resample), accuracy and Brier score."""

    names = MULTICLASS_METRICS

    def __init__(self, labels: np.ndarray, probs: np.ndarray, codes: np.ndarray):
        self.n_patients = int(codes.max()) + 1
        n_classes = probs.shape[1]
        self.rankings = [_Ranking.build(labels == k, probs[:, k], codes, self.n_patients)
                         for k in range(n_classes)]
        onehot = np.eye(n_classes)[labels]
        columns = [
            np.ones(len(labels)),
            (probs.argmax(1) == labels).astype(np.float64),
            ((probs - onehot) ** 2).sum(1),
        ]
        self.sums = _patient_sums(codes, self.n_patients, columns)

    def __call__(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        n, correct, sq_err = (counts @ self.sums).T
        per_class = np.stack(
            [r.auroc_auprc(counts, auprc=False, integral=True)[0] for r in self.rankings], axis=1
        )
        defined = np.isfinite(per_class).sum(1)
        macro = _ratio(np.nansum(per_class, axis=1), defined.astype(np.float64))
        return {"auroc": macro, "accuracy": _ratio(correct, n), "brier": _ratio(sq_err, n)}


def _engine(
    labels: np.ndarray, probs: np.ndarray, codes: np.ndarray, threshold: float | None
) -> _BinaryEngine | _MulticlassEngine:
    if probs.ndim == 1:
        return _BinaryEngine(labels, probs, codes, threshold)
    return _MulticlassEngine(labels, probs, codes)


def point_metrics(
    labels: np.ndarray, probs: np.ndarray, codes: np.ndarray, threshold: float | None
) -> dict[str, float]:
    """The bootstrapped metrics on the cohort itself (every patient once)."""
    engine = _engine(labels, probs, codes, threshold)
    return {k: float(v[0]) for k, v in engine(np.ones((1, engine.n_patients))).items()}


def bootstrap_replicates(
    labels: np.ndarray,
    probs: np.ndarray,
    codes: np.ndarray,
    threshold: float | None,
    *,
    n_resamples: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Patient-clustered bootstrap replicates (n_resamples,) per metric; NaN where undefined.

    labels: int (n,); probs: positive-class (n,) or class matrix (n, K>2); codes: patient index
    0..P-1 per sample; threshold: operating point (``probs >= threshold``), ignored for K > 2.
    """
    engine = _engine(labels, probs, codes, threshold)
    out = {name: np.empty(n_resamples) for name in engine.names}
    block = max(1, _BLOCK_ELEMENTS // max(len(labels), engine.n_patients))
    for start in range(0, n_resamples, block):
        stop = min(start + block, n_resamples)
        counts = draw_patient_counts(rng, engine.n_patients, stop - start)
        for name, values in engine(counts).items():
            out[name][start:stop] = values
    return out


def percentile_ci(replicates: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the finite replicates; (nan, nan) if there are none."""
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given the average of the ranks they span."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def delong_auroc_variance(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """AUROC and its DeLong variance via midranks (Sun & Xu 2014), O(n log n).

    Treats samples as independent: with several samples per patient it ignores the clustering
    and is typically too narrow; use it as a cross-check of the patient-level bootstrap.
    """
    positive = np.asarray(labels) == 1
    x, y = np.asarray(scores, dtype=np.float64)[positive], np.asarray(scores, np.float64)[~positive]
    m, n = len(x), len(y)
    if m == 0 or n == 0:
        return float("nan"), float("nan")
    tz = _midranks(np.concatenate([x, y]))
    v10 = (tz[:m] - _midranks(x)) / n  # per positive: share of negatives ranked below it
    v01 = 1.0 - (tz[m:] - _midranks(y)) / m  # per negative: share of positives ranked above it
    auc = float(v10.mean())
    s10 = v10.var(ddof=1) if m > 1 else 0.0
    s01 = v01.var(ddof=1) if n > 1 else 0.0
    return auc, float(s10 / m + s01 / n)


def delong_ci(
    labels: np.ndarray, scores: np.ndarray, confidence: float = 0.95
) -> tuple[float, float]:
    """Normal-approximation DeLong interval for AUROC, clipped to [0, 1]; (nan, nan) if undefined."""
    auc, var = delong_auroc_variance(labels, scores)
    if not np.isfinite(auc):
        return float("nan"), float("nan")
    half = NormalDist().inv_cdf(0.5 + confidence / 2.0) * np.sqrt(var)
    return float(max(0.0, auc - half)), float(min(1.0, auc + half))
