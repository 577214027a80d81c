"""ROC and PR figures of the evaluate stage: AUROC / AUPRC with CI and the locked operating point."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from pathtrail.core import figures
from pathtrail.evaluation import diagnostics
from pathtrail.evaluation.metrics import binary_metrics
from pathtrail.evaluation.plots import (
    cohort_plots,
    curve_figures,
    metric_with_ci,
    operating_markers,
)
from pathtrail.evaluation.report import evaluate_cohort


def cohort(n: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(np.int64)
    p = np.round(1 / (1 + np.exp(-(1.5 * y - 0.6 + rng.normal(0, 1, n)))), 2)
    return y, p, np.arange(n) // 3


@pytest.mark.parametrize("threshold", [0.37, 0.4, 0.55, 0.999])
def test_operating_point_is_the_metrics_point_and_lies_on_both_curves(threshold):
    y, p, _ = cohort()
    point = diagnostics.operating_point(y, p, threshold)
    got, _ = binary_metrics(y, p, threshold)
    assert point["threshold"] == threshold
    assert point["tpr"] == point["recall"] == pytest.approx(got["sensitivity"], abs=1e-15)
    assert point["fpr"] == pytest.approx(1 - got["specificity"], abs=1e-15)
    fps, tps, _ = diagnostics.roc_counts(y, p)  # every vertex of the ROC curve
    vertices = set(zip(fps / fps[-1], tps / tps[-1], strict=True)) | {(0.0, 0.0)}
    assert (point["fpr"], point["tpr"]) in vertices
    if point["precision"] is None:  # nothing called positive
        assert np.isnan(got["ppv"]) and threshold > p.max()
    else:
        assert point["precision"] == pytest.approx(got["ppv"], abs=1e-15)
        on_pr = {(r["recall"], r["precision"]) for r in diagnostics.pr_points(y, p)}
        assert (point["recall"], point["precision"]) in on_pr


def test_marker_labels_name_the_threshold_and_skip_undefined_points():
    point = {"threshold": 0.5721, "fpr": 0.125, "tpr": 0.8, "recall": 0.8, "precision": None}
    ((x, y, label),) = operating_markers(point, "fpr", "tpr", "FPR", "TPR")
    assert (x, y) == (0.125, 0.8) and label.startswith("threshold 0.572 ")
    assert operating_markers(point, "recall", "precision", "recall", "precision") == []
    assert operating_markers(None, "fpr", "tpr", "FPR", "TPR") == []


def test_metric_with_ci_text():
    metrics = {"auroc": 0.91234, "auroc_ci_low": 0.8801, "auroc_ci_high": 0.94, "ci_level": 0.95}
    assert metric_with_ci(metrics, "auroc", "AUROC") == "AUROC 0.912 (95% CI 0.880–0.940)"
    assert metric_with_ci(metrics | {"ci_level": 0.9}, "auroc", "AUROC").endswith("(90% CI 0.880–0.940)")
    assert metric_with_ci(metrics | {"auroc_ci_low": None}, "auroc", "AUROC") == "AUROC 0.912 (no CI)"
    assert metric_with_ci({"auroc": None}, "auroc", "AUROC") == "AUROC n/a"


def capture_figures(monkeypatch) -> dict[str, dict]:
    """Legend texts and single-point lines (markers) of every figure saved, by file name."""
    seen: dict[str, dict] = {}
    save = figures.save

    def recording_save(fig, path):
        ax = fig.axes[0]
        seen[Path(path).name] = {
            "title": ax.get_title(),
            "legend": [t.get_text() for t in ax.get_legend().get_texts()],
            "markers": [(float(line.get_xdata()[0]), float(line.get_ydata()[0]), line.get_label())
                        for line in ax.get_lines() if len(line.get_xdata()) == 1],
        }
        return save(fig, path)

    monkeypatch.setattr(figures, "save", recording_save)
    return seen


def test_roc_and_pr_figures_show_metric_ci_and_operating_point(monkeypatch, tmp_path):
    y, p, patients = cohort()
    threshold = 0.43
    metrics = evaluate_cohort(y, p, patients, threshold, n_bootstrap=200, seed=0)
    seen = capture_figures(monkeypatch)
    curve_figures("internal_test", y, p, threshold, tmp_path, metrics)
    point = diagnostics.operating_point(y, p, threshold)

    roc = seen["roc_internal_test.png"]
    auroc = f"AUROC {metrics['auroc']:.3f} (95% CI {metrics['auroc_ci_low']:.3f}–"
    assert any(auroc in text and f"{metrics['auroc_ci_high']:.3f})" in text for text in roc["legend"])
    ((x, yy, label),) = roc["markers"]
    assert (x, yy) == (point["fpr"], point["tpr"]) and label.startswith("threshold 0.43 ")
    assert label in roc["legend"]

    pr = seen["pr_internal_test.png"]
    auprc = f"AUPRC (AP) {metrics['auprc']:.3f} (95% CI {metrics['auprc_ci_low']:.3f}–"
    assert any(auprc in text for text in pr["legend"])
    ((x, yy, label),) = pr["markers"]
    assert (x, yy) == (point["recall"], point["precision"]) and label.startswith("threshold 0.43 ")


def test_cohort_plots_are_byte_identical_and_work_without_metrics(monkeypatch, tmp_path):
    y, p, patients = cohort()
    table = pd.DataFrame({"label": y, "path": [f"p{i}.png" for i in range(len(y))],
                          "patient_id": patients})
    probs = np.column_stack([1 - p, p])
    ev = SimpleNamespace(ece_bins=10, n_failures=0)  # no failure grid: the store is not read
    metrics = evaluate_cohort(y, p, patients, 0.5, n_bootstrap=100, seed=0)
    outputs = []
    for run in ("a", "b"):
        figs = tmp_path / run / "figs"
        cohort_plots("external", table, probs, 0.5, ev, tmp_path / run / "plots", figs, None,
                     metrics=metrics)
        outputs.append({f.name: f.read_bytes() for f in sorted(figs.iterdir())})
    assert outputs[0] == outputs[1] and {"roc_external.png", "pr_external.png"} <= set(outputs[0])
    assert b"matplotlib" not in outputs[0]["roc_external.png"]  # no version stamp in the PNG

    seen = capture_figures(monkeypatch)
    cohort_plots("external", table, probs, 0.5, ev, tmp_path / "c", tmp_path / "c", None)
    assert seen["roc_external.png"]["legend"][0] == "external"
    assert seen["roc_external.png"]["markers"][0][2].startswith("threshold 0.5 ")
