"""What a reviewer looks at besides the numbers: plot data for DVC and the worst failure cases.

Plot functions return lists of flat records (JSON-ready, finite floats) for DVC's templates:
``simple`` with x=fpr, y=tpr (ROC) or x=recall, y=precision (PR), and ``confusion`` with
x=actual, y=predicted. They take a binary problem; for K classes call them one-vs-rest
(``labels == k``, ``probs[:, k]``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch


def _binary_arrays(
    labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 1 or p.shape != y.shape:
        raise ValueError("plot data needs labels (n,) and positive-class probs (n,)")
    return y, p


def roc_counts(
    labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive counts calling ``prob >= t`` for each distinct t, highest first.

    Exact integers (torchmetrics' curves are float32 rates), so thresholds chosen from them and
    the plotted points are not disturbed by rounding.
    """
    y, p = _binary_arrays(labels, probs)
    order = np.argsort(-p, kind="stable")
    s = p[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last sample of each distinct score
    tps = np.cumsum(y[order])[last]
    return last + 1 - tps, tps, s[last]


def roc_points(
    labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray
) -> list[dict[str, float]]:
    """ROC points (fpr, tpr, threshold) from (0, 0) to (1, 1), as scikit-learn's roc_curve.

    Points inside a straight run are dropped (scikit-learn's drop_intermediate). The (0, 0) row
    carries threshold 1.0 (torchmetrics' convention) instead of +inf, so every value is finite.
    Empty when one class is missing (the curve is undefined).
    """
    fps, tps, thresholds = roc_counts(labels, probs)
    if tps[-1] == 0 or fps[-1] == 0:
        return []
    keep = np.r_[True, (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0), True]
    fps, tps, thresholds = np.r_[0, fps[keep]], np.r_[0, tps[keep]], np.r_[1.0, thresholds[keep]]
    return [
        {"fpr": float(f), "tpr": float(t), "threshold": float(h)}
        for f, t, h in zip(fps / fps[-1], tps / tps[-1], thresholds, strict=True)
    ]


def pr_points(
    labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray
) -> list[dict[str, float]]:
    """Precision-recall points (recall, precision) as scikit-learn's precision_recall_curve,
    from the lowest threshold to the final (0, 1); empty without positives."""
    fps, tps, _ = roc_counts(labels, probs)
    if tps[-1] == 0:
        return []
    precision = np.r_[(tps / (tps + fps))[::-1], 1.0]
    recall = np.r_[(tps / tps[-1])[::-1], 0.0]
    return [
        {"recall": float(r), "precision": float(q)} for r, q in zip(recall, precision, strict=True)
    ]


def operating_point(
    labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray, threshold: float
) -> dict[str, float | None]:
    """The operating point ``prob >= threshold``: fpr, tpr (ROC) and recall, precision (PR).

    The same confusion counts as `metrics.binary_metrics` (tpr = recall = sensitivity, fpr =
    1 - specificity, precision = PPV), so the point is a vertex of the ROC and PR curves above.
    A rate without a denominator (no negatives, no positives, no predicted positives) is None.
    """
    y, p = _binary_arrays(labels, probs)
    called, positive = p >= threshold, y == 1
    tp, fp = int((called & positive).sum()), int((called & ~positive).sum())
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    tpr = tp / n_pos if n_pos else None
    return {
        "threshold": float(threshold),
        "fpr": fp / n_neg if n_neg else None,
        "tpr": tpr,
        "recall": tpr,
        "precision": tp / (tp + fp) if tp + fp else None,
    }


def calibration_bins(
    labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray, n_bins: int = 10
) -> list[dict[str, float]]:
    """Reliability diagram rows (bin, mean_predicted, fraction_positive, count), non-empty bins.

    Bin b holds probs in [b/n_bins, (b+1)/n_bins); a prob of exactly 1.0 forms bin ``n_bins``.
    This is torchmetrics' binning, so ``sum |mean_predicted - fraction_positive| * count / n``
    equals the reported binary ECE.
    """
    y, p = _binary_arrays(labels, probs)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)  # the edges torchmetrics uses
    scores = torch.from_numpy(np.ascontiguousarray(p))  # a column of (n, 2) probs is strided
    index = (torch.bucketize(scores, edges, right=True) - 1).numpy()
    count = np.bincount(index, minlength=n_bins + 1)
    prob_sum = np.bincount(index, weights=p, minlength=n_bins + 1)
    pos_sum = np.bincount(index, weights=y.astype(np.float64), minlength=n_bins + 1)
    return [
        {
            "bin": int(b),
            "mean_predicted": float(prob_sum[b] / count[b]),
            "fraction_positive": float(pos_sum[b] / count[b]),
            "count": int(count[b]),
        }
        for b in np.flatnonzero(count)
    ]


def confusion_rows(
    labels: Sequence[int] | np.ndarray,
    probs: Sequence[float] | np.ndarray,
    threshold: float | None = None,
) -> list[dict[str, int]]:
    """One (actual, predicted) row per sample for DVC's confusion template.

    Predicted is ``prob >= threshold`` for binary probs (n,), argmax for an (n, K) matrix.
    """
    probs = np.asarray(probs, dtype=np.float64)
    predicted = probs.argmax(axis=1) if probs.ndim == 2 else (probs >= threshold).astype(np.int64)
    return [{"actual": int(a), "predicted": int(b)} for a, b in zip(labels, predicted, strict=True)]


def most_confident_errors(
    df: pd.DataFrame,
    threshold: float,
    k: int = 16,
    *,
    prob_col: str = "prob",
    label_col: str = "label",
) -> pd.DataFrame:
    """The k misclassified rows whose wrong call was most confident, most confident first.

    Confidence of the wrong call is ``prob`` for a false positive and ``1 - prob`` for a false
    negative. Columns: path, patient_id, label, prob, predicted, confidence; ties by path.
    """
    prob = df[prob_col].to_numpy(dtype=np.float64)
    predicted = (prob >= threshold).astype(np.int64)
    wrong = predicted != df[label_col].to_numpy()
    out = df.loc[wrong, ["path", "patient_id", label_col, prob_col]].copy()
    out["predicted"] = predicted[wrong]
    out["confidence"] = np.where(predicted[wrong] == 1, prob[wrong], 1.0 - prob[wrong])
    out = out.sort_values(["confidence", "path"], ascending=[False, True], kind="stable")
    return out.head(k).reset_index(drop=True)
