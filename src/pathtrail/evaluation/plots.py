"""The per-cohort plot files of the evaluate stage: ROC, PR, calibration, confusion, failure cases.

CSV tables (what `dvc plots` reads) and PNG figures (what the model card shows), binary tasks only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathtrail.config.sections import EvalParams
from pathtrail.core import figures
from pathtrail.core.files import write_csv
from pathtrail.data.store import PatchStore
from pathtrail.evaluation.diagnostics import (
    calibration_bins,
    confusion_rows,
    most_confident_errors,
    operating_point,
    pr_points,
    roc_points,
)


def _number(metrics: Mapping[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def metric_with_ci(metrics: Mapping[str, Any], key: str, label: str) -> str:
    """``"AUROC 0.912 (95% CI 0.880–0.940)"`` from `evaluate_cohort`'s keys; "n/a" if missing."""
    value = _number(metrics, key)
    if value is None:
        return f"{label} n/a"
    low, high = _number(metrics, f"{key}_ci_low"), _number(metrics, f"{key}_ci_high")
    level = _number(metrics, "ci_level") or 0.95
    ci = f"{level:.0%} CI {low:.3f}–{high:.3f}" if low is not None and high is not None else "no CI"
    return f"{label} {value:.3f} ({ci})"


def operating_markers(point: Mapping[str, float | None] | None, x: str, y: str,
                      x_label: str, y_label: str) -> list[tuple[float, float, str]]:
    """The operating point as a figure marker [(x, y, label)]; [] where it is undefined."""
    if point is None or point[x] is None or point[y] is None:
        return []
    values = f"{x_label} {point[x]:.2f}, {y_label} {point[y]:.2f}"
    return [(point[x], point[y], f"threshold {point['threshold']:.3g} ({values})")]


def curve_figures(name: str, y: np.ndarray, p: np.ndarray, threshold: float | None, figs: Path,
                  metrics: Mapping[str, Any] | None = None) -> None:
    """`roc_<name>.png` and `pr_<name>.png`: the curve, its AUROC / AUPRC with CI in the legend
    (when `metrics` is given) and the operating point at `threshold` marked on it."""
    roc, pr = roc_points(y, p), pr_points(y, p)
    point = operating_point(y, p, threshold) if threshold is not None else None
    roc_name = f"{name}: {metric_with_ci(metrics, 'auroc', 'AUROC')}" if metrics else name
    figures.line_plot({roc_name: ([r["fpr"] for r in roc], [r["tpr"] for r in roc])},
                      figs / f"roc_{name}.png", title=f"ROC: {name}", xlabel="false positive rate",
                      ylabel="true positive rate", diagonal=True,
                      points=operating_markers(point, "fpr", "tpr", "FPR", "TPR"))
    pr_name = f"{name}: {metric_with_ci(metrics, 'auprc', 'AUPRC (AP)')}" if metrics else name
    figures.line_plot({pr_name: ([r["recall"] for r in pr], [r["precision"] for r in pr])},
                      figs / f"pr_{name}.png", title=f"Precision-recall: {name}", xlabel="recall",
                      ylabel="precision",
                      points=operating_markers(point, "recall", "precision", "recall", "precision"))


def cohort_plots(name: str, table: pd.DataFrame, probs: np.ndarray, threshold: float | None,
                 ev: EvalParams, plots: Path, figs: Path, store: PatchStore, *,
                 metrics: Mapping[str, Any] | None = None) -> None:
    """Write `<kind>_<name>.csv` under `plots` and `<kind>_<name>.png` under `figs`.

    `metrics` (the cohort's `evaluate_cohort` result) puts AUROC and AUPRC with their CIs in the
    ROC and PR legends; the operating point at `threshold` is marked on both curves.
    """
    y = table.label.to_numpy()
    if probs.shape[1] != 2:
        return
    p = probs[:, 1]
    roc, pr, cal = roc_points(y, p), pr_points(y, p), calibration_bins(y, p, ev.ece_bins)
    write_csv(pd.DataFrame(roc, columns=["fpr", "tpr", "threshold"]), plots / f"roc_{name}.csv")
    write_csv(pd.DataFrame(pr, columns=["recall", "precision"]), plots / f"pr_{name}.csv")
    write_csv(pd.DataFrame(cal, columns=["bin", "mean_predicted", "fraction_positive", "count"]),
              plots / f"calibration_{name}.csv")
    write_csv(pd.DataFrame(confusion_rows(y, p, threshold), columns=["actual", "predicted"]),
              plots / f"confusion_{name}.csv")
    curve_figures(name, y, p, threshold, figs, metrics)
    figures.line_plot({name: ([r["mean_predicted"] for r in cal], [r["fraction_positive"] for r in cal])},
                      figs / f"calibration_{name}.png", title=f"Reliability: {name}",
                      xlabel="mean predicted probability", ylabel="fraction positive", diagonal=True)
    frame = table.assign(prob=p)
    worst = most_confident_errors(frame, threshold, ev.n_failures)
    write_csv(worst, plots / f"failures_{name}.csv")
    if len(worst):
        imgs = store.patches(store.rows_for(worst.path))
        titles = [f"y={int(r.label)} p={r.prob:.2f}" for r in worst.itertuples()]
        figures.image_grid([(f"{name}: most confident errors", imgs)], figs / f"failures_{name}.png", titles)
