"""Multi-label evaluation (`data.label_mode: multilabel`): each label, then macro and micro summaries.

Every label is evaluated as a binary problem by `report.evaluate_cohort` (AUROC, AUPRC,
sensitivity, specificity, calibration, ... with patient-clustered bootstrap CIs, and the patient
and slide levels), at its own operating threshold, chosen on the validation split by
`eval.threshold_rule` and locked before the test split is opened (`thresholds`).

The summaries: **macro** AUROC / AUPRC (the mean of the labels' values; the cohort's `auroc` and
`auprc`, which the release criteria and headline read) and **micro** (every (patch, label) pair
pooled: `micro_auroc`, `micro_auprc`). Their 95% CIs resample patients once per replicate for all
labels together (the labels of a patient move together), with the same draws as
`bootstrap.draw_patient_counts` makes everywhere else. Labels with one value in a cohort have no
AUROC; the macro mean skips them (`labels_undefined` names them). The point values agree with
scikit-learn's `roc_auc_score` / `average_precision_score` (per label, macro, micro) to 1e-6:
tests/unit/test_multilabel_eval.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pathtrail.evaluation.bootstrap import draw_patient_counts, percentile_ci, weighted_auroc_auprc
from pathtrail.evaluation.report import DegenerateDataError, choose_threshold, evaluate_cohort

SUMMARY_KEY = 0x4D4C  # keys the summaries' bootstrap stream ("ML")
_BLOCK_ELEMENTS = 2_000_000


def lock_thresholds(val_labels: np.ndarray, val_probs: np.ndarray, names: Sequence[str], rule: str,
                    target_sensitivity: float, fixed: float) -> tuple[dict[str, float], dict[str, str]]:
    """Each label's operating threshold from the validation split, and the rule each one used (a
    label with one value on validation falls back to `fixed`, recorded as such)."""
    thresholds, rules = {}, {}
    for k, name in enumerate(names):
        try:
            thresholds[name] = choose_threshold(val_labels[:, k].astype(np.int64), val_probs[:, k], rule,
                                                target_sensitivity, fixed)
            rules[name] = rule
        except DegenerateDataError:
            thresholds[name], rules[name] = float(fixed), "fixed (one value on the validation split)"
    return thresholds, rules


def decisions(probs: np.ndarray, thresholds: dict[str, float], names: Sequence[str]) -> np.ndarray:
    """(N, L) 0/1: a label is called present when its probability reaches its threshold."""
    return np.stack([probs[:, k] >= thresholds[n] for k, n in enumerate(names)], axis=1).astype(np.int64)


def summary_replicates(labels: np.ndarray, probs: np.ndarray, codes: np.ndarray, n_patients: int,
                       n_bootstrap: int, seed: int) -> dict[str, np.ndarray]:
    """(B,) replicates of macro and micro AUROC / AUPRC, patients resampled jointly for all labels."""
    n, n_labels = labels.shape
    rng = np.random.default_rng([seed, SUMMARY_KEY])
    out = {k: np.empty(n_bootstrap) for k in ("auroc", "auprc", "micro_auroc", "micro_auprc")}
    block = max(1, _BLOCK_ELEMENTS // max(1, n * n_labels))
    for start in range(0, n_bootstrap, block):
        stop = min(start + block, n_bootstrap)
        weights = draw_patient_counts(rng, n_patients, stop - start)[:, codes].astype(np.float64)
        per = [weighted_auroc_auprc(labels[:, k], probs[:, k], weights) for k in range(n_labels)]
        for key, idx in (("auroc", 0), ("auprc", 1)):
            stacked = np.stack([p[idx] for p in per], axis=1)
            finite = np.isfinite(stacked)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[key][start:stop] = np.where(finite.any(1), np.nansum(stacked, 1) / finite.sum(1), np.nan)
        micro = weighted_auroc_auprc(labels.ravel(), probs.ravel(), np.repeat(weights, n_labels, axis=1))
        out["micro_auroc"][start:stop], out["micro_auprc"][start:stop] = micro
    return out


def summary_points(labels: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    """Macro and micro AUROC / AUPRC on the cohort itself (None where undefined)."""
    per = [weighted_auroc_auprc(labels[:, k], probs[:, k], np.ones(len(labels))) for k in range(labels.shape[1])]
    au = np.array([p[0][0] for p in per])
    ap = np.array([p[1][0] for p in per])
    micro = weighted_auroc_auprc(labels.ravel(), probs.ravel(), np.ones(labels.size))

    def value(x: np.ndarray) -> float | None:
        x = x[np.isfinite(x)]
        return float(x.mean()) if x.size else None

    return {"auroc": value(au), "auprc": value(ap), "micro_auroc": value(micro[0]),
            "micro_auprc": value(micro[1])}


def evaluate_multilabel(labels: np.ndarray, probs: np.ndarray, names: Sequence[str],
                        patient_ids: Sequence[Any] | np.ndarray, thresholds: dict[str, float], *,
                        n_bootstrap: int = 2000, seed: int = 0, ece_bins: int = 10,
                        slide_ids: Sequence[Any] | np.ndarray | None = None) -> dict[str, Any]:
    """A cohort's per-label metrics (`labels`: name -> the binary evaluation) and its summaries."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    ids = np.asarray(patient_ids)
    if y.shape != p.shape or y.ndim != 2 or y.shape[1] != len(names) or len(ids) != len(y):
        raise ValueError(f"labels {y.shape}, probabilities {p.shape}, {len(names)} names and "
                         f"{len(ids)} patient ids do not fit together")
    per_label = {name: evaluate_cohort(y[:, k], p[:, k], ids, thresholds[name], n_bootstrap=n_bootstrap,
                                       seed=seed, ece_bins=ece_bins, slide_ids=slide_ids)
                 for k, name in enumerate(names)}
    uniq, codes = np.unique(ids, return_inverse=True)
    out: dict[str, Any] = {"label_mode": "multilabel", "average": "macro", **summary_points(y, p)}
    if n_bootstrap > 0:
        reps = summary_replicates(y, p, codes, len(uniq), n_bootstrap, seed)
        for key, values in reps.items():
            low, high = percentile_ci(values)
            out[f"{key}_ci_low"] = low if np.isfinite(low) else None
            out[f"{key}_ci_high"] = high if np.isfinite(high) else None
    undefined = [n for n in names if per_label[n].get("auroc") is None]
    out |= {"n_samples": len(y), "n_patients": len(uniq), "n_labels": len(names),
            "n_positive": {n: int(y[:, k].sum()) for k, n in enumerate(names)},
            "labels_undefined": undefined, "labels": per_label, "n_bootstrap": n_bootstrap,
            "warnings": [f"label {n!r} has one value here: left out of the macro mean" for n in undefined]}
    return out
