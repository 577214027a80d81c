"""The per-sample formulation of the weighted AUROC / average precision that `evaluation.bootstrap`
replaced (tie groups and a sparse product): kept as the reference that the bench times against and
that `tests/unit/test_bootstrap_speed.py` compares bitwise.
"""

from __future__ import annotations

import numpy as np


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def reference_auroc_auprc(positive: np.ndarray, scores: np.ndarray, codes: np.ndarray,
                          counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and average precision per row of patient multiplicities `counts` (rows, patients)."""
    order = np.argsort(scores, kind="stable")
    s, y, c = scores[order], positive[order], codes[order]
    s_pos, s_neg = s[y], s[~y]
    pos_codes, neg_codes = c[y], c[~y]
    neg_lo = np.searchsorted(s_neg, s_pos, side="left")
    neg_hi = np.searchsorted(s_neg, s_pos, side="right")
    pos_lo = np.searchsorted(s_pos, s_pos, side="left")

    w_pos = counts[:, pos_codes]
    w_neg = counts[:, neg_codes]
    cum_neg = np.zeros((counts.shape[0], w_neg.shape[1] + 1))
    np.cumsum(w_neg, axis=1, out=cum_neg[:, 1:])
    cum_pos = np.zeros((counts.shape[0], w_pos.shape[1] + 1))
    np.cumsum(w_pos, axis=1, out=cum_pos[:, 1:])
    total_pos, total_neg = cum_pos[:, -1], cum_neg[:, -1]
    below = cum_neg[:, neg_lo] + cum_neg[:, neg_hi]
    auroc = _ratio(0.5 * np.einsum("ij,ij->i", w_pos, below), total_pos * total_neg)
    tp_at = total_pos[:, None] - cum_pos[:, pos_lo]
    fp_at = total_neg[:, None] - cum_neg[:, neg_lo]
    auprc = _ratio(np.einsum("ij,ij->i", w_pos, tp_at / (tp_at + fp_at + (w_pos == 0))), total_pos)
    return auroc, auprc


class ReferenceRanking:
    """Drop-in for `bootstrap._Ranking` computing with `reference_auroc_auprc` (bench: old vs new)."""

    def __init__(self, positive: np.ndarray, scores: np.ndarray, codes: np.ndarray) -> None:
        self.positive, self.scores, self.codes = positive, scores, codes

    @classmethod
    def build(cls, positive: np.ndarray, scores: np.ndarray, codes: np.ndarray,
              n_patients: int) -> ReferenceRanking:
        return cls(positive, scores, codes)

    def auroc_auprc(self, counts: np.ndarray, auprc: bool = True,
                    integral: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        return reference_auroc_auprc(self.positive, self.scores, self.codes, counts)
