"""Point metrics of one cohort from torchmetrics: binary at an operating threshold, or multi-class.

Conventions shared by the evaluation modules:

* ``probs`` is the positive-class probability (n,) for a binary task, or an (n, K) matrix; an
  (n, 2) matrix is reduced to its second column. K > 2 is multi-class (argmax predictions).
* A sample is called positive when ``prob >= threshold`` (the scikit-learn ROC convention, so a
  threshold read off the ROC curve means what it says).
* A data condition (one class only, no predicted positives, ...) never raises: the metric is NaN
  and a sentence goes into the returned warnings. Malformed inputs raise ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics.functional import mean_squared_error
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_calibration_error,
    binary_confusion_matrix,
    multiclass_accuracy,
    multiclass_calibration_error,
    multiclass_confusion_matrix,
)

from pathtrail.evaluation.calibration import calibration_fit


def validate_inputs(
    labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validated int64 labels (n,) and float64 probs, (n,) for binary or (n, K>2)."""
    y = np.array(labels)  # copies: torch needs writable arrays (pandas 3 hands out read-only ones)
    p = np.array(probs, dtype=np.float64, order="C")
    if p.ndim == 2 and p.shape[1] == 2:
        p = p[:, 1]
    if p.ndim == 2 and p.shape[1] < 3:
        raise ValueError(f"a probability matrix needs at least 2 columns, got {p.shape[1]}")
    if y.ndim != 1 or p.ndim not in (1, 2) or len(p) != len(y):
        raise ValueError(f"labels {y.shape} and probs {p.shape} do not describe the same samples")
    if len(y) == 0:
        raise ValueError("empty cohort: nothing to evaluate")
    if not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0:
        raise ValueError("probs must be finite probabilities in [0, 1]")
    n_classes = 2 if p.ndim == 1 else p.shape[1]
    if y.dtype.kind not in "iub" and (y.dtype.kind != "f" or np.any(np.mod(y, 1) != 0)):
        raise ValueError("labels must be integer class indices")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must lie in 0..{n_classes - 1}")
    return y, p


def _tensors(y: np.ndarray, p: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(p), torch.from_numpy(y)


def predict(probs: np.ndarray, threshold: float | None) -> np.ndarray:
    """Predicted class: ``prob >= threshold`` for binary probs (n,), argmax for (n, K)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 2:
        return probs.argmax(axis=1)
    return (probs >= threshold).astype(np.int64)


def _curve_metric(value: torch.Tensor) -> float:
    """torchmetrics integrates curves of float32 rates: clip the rounding excess beyond [0, 1]."""
    return min(1.0, max(0.0, float(value)))


def _div(num: float, den: float) -> float:
    return num / den if den else float("nan")


def binary_metrics(
    labels: np.ndarray, probs: np.ndarray, threshold: float, *, ece_bins: int = 10
) -> tuple[dict[str, float], list[str]]:
    """Point metrics of a binary cohort at ``threshold``; NaN where undefined, with reasons.

    ``ece`` is the binary positive-class ECE: equal-width bins of the positive-class probability,
    ``sum_b |mean prob - fraction positive| * share of samples`` (torchmetrics binning).
    ``calibration_slope`` and ``calibration_intercept_joint`` are the logistic fit of label on
    logit(prob); ``calibration_intercept`` is calibration-in-the-large (slope fixed at 1), see
    `pathtrail.evaluation.calibration`. A separated or constant logit(prob) makes the slope NaN.
    """
    y, p = validate_inputs(labels, probs)
    if isinstance(ece_bins, bool) or not isinstance(ece_bins, int | np.integer) or ece_bins < 1:
        raise ValueError(f"ece_bins must be a positive integer, got {ece_bins!r}")
    # validate_inputs has checked what torchmetrics' validate_args would (a torch.unique per call)
    checked = {"validate_args": False}
    t_prob, t_label = _tensors(y, p)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    warnings: list[str] = []
    both = n_pos > 0 and n_neg > 0
    if not both:
        warnings.append(
            f"only one class present ({n_pos} positive, {n_neg} negative): AUROC, "
            "calibration slope/intercept and the metrics needing the missing class are undefined"
        )
    (tn, fp), (fn, tp) = binary_confusion_matrix(
        torch.from_numpy(predict(p, threshold)), t_label, **checked
    ).tolist()
    if tp + fp == 0:
        warnings.append(f"no predicted positives at threshold {threshold:.6g}: PPV undefined")
    if tn + fn == 0:
        warnings.append(f"no predicted negatives at threshold {threshold:.6g}: NPV undefined")
    sensitivity, specificity = _div(tp, tp + fn), _div(tn, tn + fp)
    calibration = calibration_fit(y, p)
    warnings += calibration.warnings
    nan = float("nan")
    return {
        "auroc": _curve_metric(binary_auroc(t_prob, t_label, **checked)) if both else nan,
        "auprc": _curve_metric(binary_average_precision(t_prob, t_label, **checked)) if n_pos else nan,
        "accuracy": (tp + tn) / len(y),
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "ppv": _div(tp, tp + fp),
        "npv": _div(tn, tn + fn),
        "f1": _div(2 * tp, 2 * tp + fp + fn),
        "brier": float(mean_squared_error(t_prob, t_label.double())),
        "ece": float(binary_calibration_error(t_prob, t_label, n_bins=ece_bins, norm="l1", **checked)),
        "calibration_slope": calibration.slope,
        "calibration_intercept": calibration.intercept_in_the_large,
        "calibration_intercept_joint": calibration.intercept_joint,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }, warnings


def multiclass_metrics(
    labels: np.ndarray, probs: np.ndarray, *, ece_bins: int = 10
) -> tuple[dict[str, float], list[str]]:
    """Per-class one-vs-rest and macro AUROC, accuracy, Brier, top-label ECE, confusion counts.

    ``auroc`` is the macro mean over classes found in some but not all samples;
    ``brier`` is the mean over samples of sum_k (p_k - onehot_k)^2 (range 0..2); ``ece`` is
    top-label (confidence = max probability, correct = argmax is the label).
    """
    y, p = validate_inputs(labels, probs)
    if p.ndim != 2:
        raise ValueError("multiclass_metrics needs an (n, K>2) probability matrix")
    t_prob, t_label = _tensors(y, p)
    k = p.shape[1]
    warnings: list[str] = []
    out: dict[str, float] = {}
    for c in range(k):
        positive = y == c
        if positive.all() or not positive.any():
            warnings.append(
                f"class {c}: one-vs-rest AUROC undefined (class present in all or no samples)"
            )
            out[f"auroc_class_{c}"] = float("nan")
        else:
            auroc = binary_auroc(t_prob[:, c], torch.from_numpy(positive).long())
            out[f"auroc_class_{c}"] = _curve_metric(auroc)
    defined = [v for v in out.values() if not math.isnan(v)]
    out["auroc"] = float(np.mean(defined)) if defined else float("nan")
    out["accuracy"] = float(multiclass_accuracy(t_prob, t_label, num_classes=k, average="micro"))
    onehot = torch.nn.functional.one_hot(t_label, k).double()
    out["brier"] = float(mean_squared_error(t_prob, onehot)) * k
    out["ece"] = float(
        multiclass_calibration_error(t_prob, t_label, num_classes=k, n_bins=ece_bins)
    )
    matrix = multiclass_confusion_matrix(t_prob, t_label, num_classes=k).tolist()
    out |= {f"confusion_{a}_{b}": matrix[a][b] for a in range(k) for b in range(k)}
    return out, warnings
