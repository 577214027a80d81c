"""The per-cohort plot files of the evaluate stage: ROC, PR, calibration, confusion, failure cases.

CSV tables (what `dvc plots` reads) and PNG figures (what the model card shows), binary tasks only.
"""

from __future__ import annotations

from pathlib import Path

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
    pr_points,
    roc_points,
)


def cohort_plots(name: str, table: pd.DataFrame, probs: np.ndarray, threshold: float | None,
                 ev: EvalParams, plots: Path, figs: Path, store: PatchStore) -> None:
    """Write `<kind>_<name>.csv` under `plots` and `<kind>_<name>.png` under `figs`."""
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
    figures.line_plot({name: ([r["fpr"] for r in roc], [r["tpr"] for r in roc])}, figs / f"roc_{name}.png",
                      title=f"ROC: {name}", xlabel="false positive rate", ylabel="true positive rate", diagonal=True)
    figures.line_plot({name: ([r["recall"] for r in pr], [r["precision"] for r in pr])}, figs / f"pr_{name}.png",
                      title=f"Precision-recall: {name}", xlabel="recall", ylabel="precision")
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
