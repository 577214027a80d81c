"""External-cohort evaluation: threshold, patient-clustered CIs, aggregation, domain shift.

Pure functions (arrays and data frames in, plain values out, no file I/O) called by the `evaluate`
stage. Point metrics live in `metrics` (conventions there: ``prob >= threshold`` is
positive; data conditions become None plus a sentence in ``warnings``), resampling in `bootstrap`,
ROC counts, plot data and failure cases in `diagnostics`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import structlog

from pathtrail.core.errors import PathTrailError
from pathtrail.evaluation import bootstrap
from pathtrail.evaluation.diagnostics import roc_counts
from pathtrail.evaluation.metrics import binary_metrics, multiclass_metrics, validate_inputs

log = structlog.get_logger(__name__)

ThresholdRule = Literal["youden", "target_sensitivity", "fixed"]


class DegenerateDataError(PathTrailError, ValueError):
    """The data cannot support the requested computation (e.g. a one-class validation split)."""


def choose_threshold(
    labels: Sequence[int] | np.ndarray,
    probs: Sequence[float] | np.ndarray,
    rule: ThresholdRule,
    target_sensitivity: float = 0.9,
    fixed: float = 0.5,
) -> float:
    """Operating threshold chosen on VALIDATION data only (the caller locks it before test).

    youden: the observed score maximizing sensitivity + specificity - 1 (highest on ties);
    target_sensitivity: the highest observed score whose sensitivity >= target (hence the best
    specificity meeting the target); fixed: ``fixed``. Raises ``DegenerateDataError`` when the
    validation split has a single class, as no data-driven threshold exists then.
    """
    if rule == "fixed":
        if not 0.0 <= fixed <= 1.0:
            raise ValueError(f"fixed threshold {fixed} is not in [0, 1]")
        return float(fixed)
    if rule not in ("youden", "target_sensitivity"):
        raise ValueError(
            f"unknown threshold rule {rule!r}: use youden, target_sensitivity or fixed"
        )
    y, p = validate_inputs(labels, probs)
    if p.ndim != 1:
        raise ValueError("threshold selection applies to binary probabilities only")
    if y.min() == y.max():
        raise DegenerateDataError(
            f"validation split has only class {y[0]}: cannot choose by {rule}"
        )
    fps, tps, thresholds = roc_counts(y, p)  # exact counts, highest threshold first
    n_pos, n_neg = tps[-1], fps[-1]
    if rule == "youden":
        index = int(np.argmax(tps * n_neg - fps * n_pos))  # J * n_pos * n_neg, in integers
    else:
        if not 0.0 < target_sensitivity <= 1.0:
            raise ValueError(f"target_sensitivity {target_sensitivity} is not in (0, 1]")
        index = int(np.argmax(tps >= target_sensitivity * n_pos - 1e-9))
    threshold = float(thresholds[index])
    log.info(
        "threshold.chosen",
        rule=rule,
        threshold=threshold,
        sensitivity=tps[index] / n_pos,
        specificity=1.0 - fps[index] / n_neg,
        n_val=len(y),
    )
    return threshold


def aggregate(
    df: pd.DataFrame,
    by: str = "patient_id",
    prob_cols: Sequence[str] = ("prob",),
    label_col: str = "label",
) -> pd.DataFrame:
    """One row per ``by`` value: mean probabilities, max label, sample count, mixed-label flag.

    Keeps ``patient_id`` (first value) when grouping by something else, so slide-level rows can
    still be resampled by patient.
    """
    grouped = df.groupby(by, sort=True)
    out = grouped[list(prob_cols)].mean()
    out[label_col] = grouped[label_col].max()
    out["mixed_labels"] = grouped[label_col].nunique() > 1
    out["n_samples"] = grouped.size()
    if by != "patient_id" and "patient_id" in df.columns:
        out["patient_id"] = grouped["patient_id"].first()
        out["mixed_patients"] = grouped["patient_id"].nunique() > 1
    return out.reset_index()


@dataclass(frozen=True)
class Cohort:
    """Predictions of one cohort: labels (n,), probs (n,) or (n, K), patient id per sample."""

    labels: np.ndarray
    probs: np.ndarray
    patient_ids: np.ndarray


def _codes(ids: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, int]:
    """Patient index 0..P-1 per sample, and P."""
    codes, uniques = pd.factorize(pd.Series(np.asarray(ids)), sort=True)
    if (codes < 0).any():
        raise ValueError("patient_ids contain missing values")
    return codes.astype(np.int64), len(uniques)


def _bootstrap_warnings(replicates: dict[str, np.ndarray]) -> list[str]:
    out = []
    for name, values in replicates.items():
        dropped = int((~np.isfinite(values)).sum())
        if dropped:
            out.append(
                f"{name}: {dropped} of {len(values)} resamples undefined (e.g. one class "
                "drawn) and left out of the CI"
            )
    return out


def _evaluate_level(
    y: np.ndarray,
    p: np.ndarray,
    patient_ids: np.ndarray,
    threshold: float | None,
    *,
    n_bootstrap: int,
    rng: np.random.Generator,
    ece_bins: int,
    confidence: float,
) -> dict[str, Any]:
    codes, n_patients = _codes(patient_ids)
    if p.ndim == 1:
        metrics, warnings = binary_metrics(y, p, threshold, ece_bins=ece_bins)
        metrics["auroc_delong_ci_low"], metrics["auroc_delong_ci_high"] = bootstrap.delong_ci(
            y, p, confidence
        )
        metrics |= {"n_positive": int(y.sum()), "n_negative": int((y == 0).sum())}
    else:
        metrics, warnings = multiclass_metrics(y, p, ece_bins=ece_bins)
        metrics["n_classes"] = p.shape[1]
    names = bootstrap.BINARY_METRICS if p.ndim == 1 else bootstrap.MULTICLASS_METRICS
    replicates = {name: np.empty(0) for name in names}  # no resamples: CIs None, keys stable
    if n_bootstrap > 0:
        replicates = bootstrap.bootstrap_replicates(
            y, p, codes, threshold, n_resamples=n_bootstrap, rng=rng
        )
        warnings += _bootstrap_warnings(replicates)
    for name, values in replicates.items():
        low, high = bootstrap.percentile_ci(values, confidence)
        metrics[f"{name}_ci_low"], metrics[f"{name}_ci_high"] = low, high
    metrics |= {
        "n_samples": len(y),
        "n_patients": n_patients,
        "threshold": threshold,
        "n_bootstrap": n_bootstrap,
        "ci_level": confidence,
        "warnings": warnings,
    }
    return metrics


def _json_ready(value: Any) -> Any:
    """Plain Python types with sorted keys; NaN and infinities become None."""
    if isinstance(value, dict):
        return {str(k): _json_ready(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


def evaluate_cohort(
    labels: Sequence[int] | np.ndarray,
    probs: Sequence[float] | np.ndarray,
    patient_ids: Sequence[Any] | np.ndarray,
    threshold: float | None,
    *,
    n_bootstrap: int = 2000,
    seed: int = 0,
    ece_bins: int = 10,
    slide_ids: Sequence[Any] | np.ndarray | None = None,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """All metrics of a cohort with patient-clustered percentile CIs, JSON-ready.

    Sample level resamples patients; ``patient_level`` (mean probability per patient, max label)
    is a plain bootstrap of patients; ``slide_level`` (when ``slide_ids`` is given; mean per
    slide) again resamples patients. Aggregated levels apply the same threshold to the mean
    probability. Each level gets the full ``n_bootstrap`` (they are cheap next to the sample
    level) from its own stream spawned from ``seed``. The DeLong interval treats rows as
    independent, so at sample level it ignores clustering (a cross-check, typically narrower).
    Undefined values are None, explained in that level's ``warnings``. For K > 2 classes the
    threshold is not used and ``auroc`` is the macro one-vs-rest AUROC.
    """
    started = time.perf_counter()
    y, p = validate_inputs(labels, probs)
    ids = np.asarray(patient_ids)
    if len(ids) != len(y) or (slide_ids is not None and len(slide_ids) != len(y)):
        raise ValueError("patient_ids and slide_ids need one entry per sample")
    if p.ndim == 1 and threshold is None:
        raise ValueError("a binary cohort needs an operating threshold")
    if p.ndim == 2:
        threshold = None
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]
    kwargs = {"n_bootstrap": n_bootstrap, "ece_bins": ece_bins, "confidence": confidence}
    result = _evaluate_level(y, p, ids, threshold, rng=rngs[0], **kwargs)

    prob_cols = ["prob"] if p.ndim == 1 else [f"prob_{k}" for k in range(p.shape[1])]
    frame = pd.DataFrame(p.reshape(len(y), -1), columns=prob_cols)
    frame["label"], frame["patient_id"] = y, ids
    levels = [("patient_level", "patient_id", rngs[1])]
    if slide_ids is not None:
        frame["slide_id"] = np.asarray(slide_ids)
        levels.append(("slide_level", "slide_id", rngs[2]))
    for key, by, rng in levels:
        agg = aggregate(frame, by=by, prob_cols=prob_cols)
        agg_p = agg[prob_cols].to_numpy().squeeze(1) if p.ndim == 1 else agg[prob_cols].to_numpy()
        level = _evaluate_level(
            agg["label"].to_numpy(),
            agg_p,
            agg["patient_id"].to_numpy(),
            threshold,
            rng=rng,
            **kwargs,
        )
        if agg["mixed_labels"].any():
            level["warnings"].append(
                f"{int(agg['mixed_labels'].sum())} {by} groups mix labels; "
                "the group takes the highest label"
            )
        if by != "patient_id" and agg["mixed_patients"].any():
            level["warnings"].append(
                f"{int(agg['mixed_patients'].sum())} slides span several "
                "patients; resampled with their first patient"
            )
        result[key] = level
    log.info(
        "evaluate.done",
        n_samples=len(y),
        n_bootstrap=n_bootstrap,
        auroc=result["auroc"],
        warnings=len(result["warnings"]),
        seconds=round(time.perf_counter() - started, 3),
    )
    return _json_ready(result)


def domain_shift(
    internal: Cohort,
    external: Cohort,
    threshold: float | None,
    *,
    n_bootstrap: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """External minus internal, per bootstrapped metric, with a percentile CI of the difference.

    The two cohorts are resampled independently (patients within each), B times each, and the
    difference is taken replicate by replicate. Keys: ``{metric}_internal``, ``_external``,
    ``_difference``, ``_difference_ci_low``, ``_difference_ci_high``.
    """
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2)]
    points, replicates, warnings = [], [], []
    for cohort, rng, which in zip(
        (internal, external), rngs, ("internal", "external"), strict=True
    ):
        y, p = validate_inputs(cohort.labels, cohort.probs)
        if p.ndim == 1 and threshold is None:
            raise ValueError("a binary cohort needs an operating threshold")
        codes, _ = _codes(cohort.patient_ids)
        points.append(bootstrap.point_metrics(y, p, codes, threshold))
        replicates.append(
            bootstrap.bootstrap_replicates(y, p, codes, threshold, n_resamples=n_bootstrap, rng=rng)
        )
        warnings += [f"{which} {w}" for w in _bootstrap_warnings(replicates[-1])]
    if set(points[0]) != set(points[1]):
        raise ValueError("internal and external cohorts have different numbers of classes")
    out: dict[str, Any] = {"n_bootstrap": n_bootstrap, "ci_level": confidence, "warnings": warnings}
    for name in points[0]:
        low, high = bootstrap.percentile_ci(replicates[1][name] - replicates[0][name], confidence)
        out |= {
            f"{name}_internal": points[0][name],
            f"{name}_external": points[1][name],
            f"{name}_difference": points[1][name] - points[0][name],
            f"{name}_difference_ci_low": low,
            f"{name}_difference_ci_high": high,
        }
    return _json_ready(out)
