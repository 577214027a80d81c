"""Evaluation metrics, patient-clustered bootstrap, DeLong, thresholds and plot data.

Oracles are scikit-learn or a few lines of NumPy written from the definition.
"""

from __future__ import annotations

import inspect
import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from pathtrail.evaluation import bootstrap, diagnostics
from pathtrail.evaluation.metrics import binary_metrics, multiclass_metrics
from pathtrail.evaluation.report import (
    Cohort,
    DegenerateDataError,
    aggregate,
    choose_threshold,
    domain_shift,
    evaluate_cohort,
)

TOL = 1e-6


def cohort(n: int = 600, n_patients: int = 120, seed: int = 0, decimals: int | None = 2):
    """Binary cohort with patient-level labels, a shared patient effect and (rounded) ties."""
    rng = np.random.default_rng(seed)
    patient = rng.integers(0, n_patients, n)
    label = (rng.random(n_patients) < 0.4).astype(np.int64)[patient]
    logit = 1.2 * label - 0.5 + rng.normal(0, 0.8, n_patients)[patient] + rng.normal(0, 0.8, n)
    prob = 1.0 / (1.0 + np.exp(-logit))
    return label, (np.round(prob, decimals) if decimals else prob), patient


def sklearn_binary(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    pred = (p >= threshold).astype(int)
    return {
        "auroc": skm.roc_auc_score(y, p),
        "auprc": skm.average_precision_score(y, p),
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "sensitivity": skm.recall_score(y, pred),
        "specificity": skm.recall_score(y, pred, pos_label=0),
        "ppv": skm.precision_score(y, pred),
        "npv": skm.precision_score(y, pred, pos_label=0),
        "f1": skm.f1_score(y, pred),
        "brier": skm.brier_score_loss(y, p),
    }


def ece_oracle(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    index = np.minimum(np.floor(confidence * n_bins).astype(int), n_bins)  # 1.0: its own bin
    total = 0.0
    for b in np.unique(index):
        in_bin = index == b
        total += abs(confidence[in_bin].mean() - correct[in_bin].mean()) * in_bin.mean()
    return total


def logistic_oracle(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Newton-Raphson maximum likelihood of y ~ intercept + slope * x."""
    design = np.column_stack([np.ones_like(x), x])
    beta = np.zeros(2)
    for _ in range(100):
        mu = 1.0 / (1.0 + np.exp(-design @ beta))
        step = np.linalg.solve(design.T @ (design * (mu * (1 - mu))[:, None]), design.T @ (y - mu))
        beta += step
        if np.abs(step).max() < 1e-13:
            break
    return float(beta[1]), float(beta[0])


# --- point metrics -----------------------------------------------------------------------------


@pytest.mark.parametrize("decimals", [None, 1])
def test_binary_metrics_match_sklearn(decimals):
    y, p, _ = cohort(decimals=decimals)
    got, warnings = binary_metrics(y, p, 0.4, ece_bins=10)
    assert warnings == []
    for name, expected in sklearn_binary(y, p, 0.4).items():
        assert got[name] == pytest.approx(expected, abs=TOL), name
    (tn, fp), (fn, tp) = skm.confusion_matrix(y, (p >= 0.4).astype(int))
    assert (got["tn"], got["fp"], got["fn"], got["tp"]) == (tn, fp, fn, tp)
    assert got["ece"] == pytest.approx(ece_oracle(p, y, 10), abs=TOL)
    clipped = np.clip(p, 1e-12, 1 - 1e-12)
    slope, intercept = logistic_oracle(np.log(clipped / (1 - clipped)), y)
    assert got["calibration_slope"] == pytest.approx(slope, abs=TOL)
    assert got["calibration_intercept_joint"] == pytest.approx(intercept, abs=TOL)
    logit = np.log(clipped / (1 - clipped))  # calibration-in-the-large: slope fixed at 1
    in_the_large = got["calibration_intercept"]
    assert abs(np.sum(y - 1 / (1 + np.exp(-(in_the_large + logit))))) < 1e-9 * len(y)


def test_calibration_line_of_calibrated_model_is_identity():
    rng = np.random.default_rng(3)
    p = rng.uniform(0.02, 0.98, 20_000)
    y = (rng.random(p.size) < p).astype(int)
    got, _ = binary_metrics(y, p, 0.5)
    assert got["calibration_slope"] == pytest.approx(1.0, abs=0.1)
    assert got["calibration_intercept"] == pytest.approx(0.0, abs=0.1)


def test_one_class_gives_nan_with_reason_not_an_exception():
    got, warnings = binary_metrics(np.zeros(5, int), np.linspace(0.1, 0.9, 5), 0.95)
    assert math.isnan(got["auroc"]) and math.isnan(got["sensitivity"])
    assert math.isnan(got["ppv"]) and math.isnan(got["calibration_slope"])
    assert got["specificity"] == 1.0
    assert any("one class" in w for w in warnings) and any("PPV" in w for w in warnings)


def test_multiclass_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 500)
    logits = rng.normal(size=(500, 4)) + 1.5 * np.eye(4)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    got, warnings = multiclass_metrics(y, p, ece_bins=10)
    assert warnings == []
    assert got["auroc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr"), abs=TOL)
    for k in range(4):
        assert got[f"auroc_class_{k}"] == pytest.approx(skm.roc_auc_score(y == k, p[:, k]), abs=TOL)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, p.argmax(1)), abs=TOL)
    assert got["brier"] == pytest.approx(((p - np.eye(4)[y]) ** 2).sum(1).mean(), abs=TOL)
    matrix = skm.confusion_matrix(y, p.argmax(1))
    assert all(got[f"confusion_{a}_{b}"] == matrix[a, b] for a in range(4) for b in range(4))
    conf = p.max(1).astype(np.float32)  # torchmetrics' top-label ECE runs in float32
    assert got["ece"] == pytest.approx(ece_oracle(conf, p.argmax(1) == y, 10), abs=TOL)


# --- weighted statistics and the bootstrap -----------------------------------------------------


def test_weighted_metrics_with_unit_weights_match_sklearn():
    y, p, patient = cohort()
    codes = np.unique(patient, return_inverse=True)[1]
    got = bootstrap.point_metrics(y, p, codes, 0.4)
    for name, expected in sklearn_binary(y, p, 0.4).items():
        assert got[name] == pytest.approx(expected, abs=1e-12), name


def test_integer_weights_equal_explicit_repetition():
    y, p, _ = cohort(n=300, decimals=1)
    weights = np.random.default_rng(5).integers(0, 4, size=(3, y.size))
    auroc, auprc = bootstrap.weighted_auroc_auprc(y, p, weights)
    for row, w in enumerate(weights):
        ry, rp = np.repeat(y, w), np.repeat(p, w)
        assert auroc[row] == pytest.approx(skm.roc_auc_score(ry, rp), abs=1e-12)
        assert auprc[row] == pytest.approx(skm.average_precision_score(ry, rp), abs=1e-12)


def test_bootstrap_replicates_equal_explicit_patient_resamples():
    y, p, patient = cohort(n=400, n_patients=80)
    codes = np.unique(patient, return_inverse=True)[1]
    reps = bootstrap.bootstrap_replicates(
        y, p, codes, 0.4, n_resamples=6, rng=np.random.default_rng(9)
    )
    counts = bootstrap.draw_patient_counts(np.random.default_rng(9), 80, 6).astype(int)
    for b in range(6):
        # resample: each drawn patient contributes all of its samples, once per draw
        take = np.concatenate(
            [np.flatnonzero(codes == c) for c in np.repeat(np.arange(80), counts[b])]
        )
        expected = sklearn_binary(y[take], p[take], 0.4)
        for name in bootstrap.BINARY_METRICS:
            assert reps[name][b] == pytest.approx(expected[name], abs=1e-12), name


def test_bootstrap_is_seeded_and_clustered():
    y, p, patient = cohort()
    first = evaluate_cohort(y, p, patient, 0.4, n_bootstrap=200, seed=7)
    again = evaluate_cohort(y, p, patient, 0.4, n_bootstrap=200, seed=7)
    other = evaluate_cohort(y, p, patient, 0.4, n_bootstrap=200, seed=8)
    assert first == again and first["auroc_ci_low"] != other["auroc_ci_low"]
    counts = bootstrap.draw_patient_counts(np.random.default_rng(0), 50, 1000)
    assert (counts.sum(1) == 50).all()


def delong_reference(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """O(m n) structural components straight from DeLong et al. (1988)."""
    x, z = s[y == 1], s[y == 0]
    psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
    v10, v01 = psi.mean(1), psi.mean(0)
    return psi.mean(), v10.var(ddof=1) / len(x) + v01.var(ddof=1) / len(z)


@pytest.mark.parametrize("decimals", [None, 1])
def test_delong_matches_reference(decimals):
    y, p, _ = cohort(n=500, decimals=decimals)
    auc, var = bootstrap.delong_auroc_variance(y, p)
    ref_auc, ref_var = delong_reference(y, p)
    assert auc == pytest.approx(ref_auc, abs=1e-12) and var == pytest.approx(ref_var, rel=1e-10)
    low, high = bootstrap.delong_ci(y, p)
    assert (low + high) / 2 == pytest.approx(ref_auc, abs=1e-12)
    assert (high - low) / 2 == pytest.approx(1.959963984540054 * math.sqrt(ref_var), rel=1e-9)


def simulate_coverage(n_datasets: int, n_resamples: int, cluster: bool) -> float:
    """Share of 95% CIs covering the true AUROC of a binormal model with patient random effects.

    score = d * label + u_patient + e_sample, var(u) + var(e) = 1, labels per patient: every
    positive/negative pair comes from two patients, so the true AUROC is Phi(d / sqrt(2)).
    """
    d, n_patients, per_patient = 1.2, 100, 3
    truth = 0.5 * (1 + math.erf(d / math.sqrt(2) / math.sqrt(2)))
    rng = np.random.default_rng(2024)
    covered = 0
    for _ in range(n_datasets):
        patient = np.repeat(np.arange(n_patients), per_patient)
        label = (rng.random(n_patients) < 0.5).astype(np.int64)[patient]
        score = (
            d * label
            + rng.normal(0, math.sqrt(0.6), n_patients)[patient]
            + rng.normal(0, math.sqrt(0.4), patient.size)
        )
        codes = patient if cluster else np.arange(patient.size)
        reps = bootstrap.bootstrap_replicates(
            label, score, codes, 0.5, n_resamples=n_resamples, rng=rng
        )
        low, high = bootstrap.percentile_ci(reps["auroc"])
        covered += low <= truth <= high
    return covered / n_datasets


def test_clustered_bootstrap_coverage():
    clustered = simulate_coverage(200, 500, cluster=True)
    assert 0.90 <= clustered <= 0.99
    # resampling samples instead of patients ignores the shared effect and under-covers
    assert simulate_coverage(200, 500, cluster=False) < 0.90


@pytest.mark.slow
def test_clustered_bootstrap_coverage_large():
    assert 0.925 <= simulate_coverage(1000, 1000, cluster=True) <= 0.975


# --- threshold ---------------------------------------------------------------------------------


def test_youden_and_target_sensitivity_match_brute_force():
    y, p, _ = cohort(decimals=2)
    candidates = np.unique(p)
    sens = np.array([((p >= t) & (y == 1)).sum() / (y == 1).sum() for t in candidates])
    spec = np.array([((p < t) & (y == 0)).sum() / (y == 0).sum() for t in candidates])
    j = sens + spec - 1
    assert choose_threshold(y, p, "youden") == candidates[np.flatnonzero(j == j.max()).max()]
    best = candidates[sens >= 0.9].max()
    assert choose_threshold(y, p, "target_sensitivity", target_sensitivity=0.9) == best
    assert choose_threshold(y, p, "fixed", fixed=0.3) == 0.3


def test_threshold_depends_on_validation_data_only():
    val_y, val_p, _ = cohort(seed=1)
    assert list(inspect.signature(choose_threshold).parameters) == [
        "labels",
        "probs",
        "rule",
        "target_sensitivity",
        "fixed",
    ]
    locked = choose_threshold(val_y, val_p, "youden")
    order = np.random.default_rng(0).permutation(val_y.size)
    assert choose_threshold(val_y[order], val_p[order], "youden") == locked
    for seed in (2, 3):  # whatever the test cohort, the reported threshold is the locked one
        test_y, test_p, test_patient = cohort(seed=seed)
        assert (
            evaluate_cohort(test_y, test_p, test_patient, locked, n_bootstrap=0)["threshold"]
            == locked
        )
    assert choose_threshold(val_y, val_p, "youden") == locked


def test_threshold_on_one_class_validation_is_a_named_error():
    with pytest.raises(DegenerateDataError, match="only class"):
        choose_threshold(np.ones(4, int), np.array([0.2, 0.4, 0.6, 0.8]), "youden")
    with pytest.raises(ValueError, match="unknown threshold rule"):
        choose_threshold([0, 1], [0.1, 0.9], "best")


# --- cohort report -----------------------------------------------------------------------------


def test_aggregate_means_probabilities_and_takes_max_label():
    df = pd.DataFrame(
        {
            "patient_id": ["a", "a", "b", "c", "c"],
            "slide_id": [1, 2, 3, 4, 4],
            "label": [0, 1, 0, 1, 1],
            "prob": [0.2, 0.4, 0.9, 0.5, 0.7],
        }
    )
    out = aggregate(df)
    assert out["patient_id"].tolist() == ["a", "b", "c"]
    assert out["prob"].tolist() == pytest.approx([0.3, 0.9, 0.6])
    assert out["label"].tolist() == [1, 0, 1] and out["mixed_labels"].tolist() == [
        True,
        False,
        False,
    ]
    slides = aggregate(df, by="slide_id")
    assert (
        slides["patient_id"].tolist() == ["a", "a", "b", "c"]
        and slides["n_samples"].tolist()[-1] == 2
    )


def test_evaluate_cohort_report_is_json_ready_and_complete():
    y, p, patient = cohort()
    slides = patient * 2 + (np.arange(y.size) % 2)
    report = evaluate_cohort(
        y, p, patient, 0.4, n_bootstrap=300, seed=1, ece_bins=10, slide_ids=slides
    )
    json.dumps(report, allow_nan=False)
    assert list(report) == sorted(report)
    for name in bootstrap.BINARY_METRICS:
        assert report[f"{name}_ci_low"] <= report[name] <= report[f"{name}_ci_high"], name
    assert report["auroc_delong_ci_low"] < report["auroc"] < report["auroc_delong_ci_high"]
    assert report["n_samples"] == 600 and report["n_patients"] == len(np.unique(patient))
    assert report["n_positive"] == y.sum() and report["threshold"] == 0.4
    patient_level = report["patient_level"]
    assert patient_level["n_samples"] == patient_level["n_patients"] == report["n_patients"]
    assert report["slide_level"]["n_patients"] == report["n_patients"]
    agg = aggregate(pd.DataFrame({"patient_id": patient, "label": y, "prob": p}))
    assert patient_level["auroc"] == pytest.approx(
        skm.roc_auc_score(agg["label"], agg["prob"]), abs=TOL
    )


def test_evaluate_cohort_degenerate_input_gives_none_and_warnings():
    report = evaluate_cohort(
        [0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4], ["a", "a", "b", "c"], 0.5, n_bootstrap=50
    )
    json.dumps(report, allow_nan=False)
    assert (
        report["auroc"] is None
        and report["auroc_ci_low"] is None
        and report["auroc_delong_ci_low"] is None
    )
    assert any("one class" in w for w in report["warnings"])
    assert any("auroc: 50 of 50 resamples" in w for w in report["warnings"])
    with pytest.raises(ValueError, match="probabilities"):
        evaluate_cohort([0, 1], [0.1, 1.5], ["a", "b"], 0.5)
    with pytest.raises(ValueError, match="missing"):
        evaluate_cohort([0, 1], [0.1, 0.5], ["a", None], 0.5)
    no_resamples = evaluate_cohort([0, 1, 1], [0.1, 0.5, 0.7], ["a", "b", "c"], 0.5, n_bootstrap=0)
    assert no_resamples["auroc"] == 1.0 and no_resamples["auroc_ci_low"] is None


def test_evaluate_cohort_multiclass():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 300)
    p = rng.dirichlet(np.ones(3), 300) * 0.5 + 0.5 * np.eye(3)[y]
    report = evaluate_cohort(y, p, np.arange(300) // 3, None, n_bootstrap=100)
    assert report["auroc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr"), abs=TOL)
    assert report["auroc_ci_low"] <= report["auroc"] <= report["auroc_ci_high"]
    assert report["n_classes"] == 3 and report["threshold"] is None


def test_domain_shift_difference_and_ci():
    internal = Cohort(*cohort(seed=1))
    external = Cohort(*cohort(seed=2, n=800))
    shift = domain_shift(internal, external, 0.4, n_bootstrap=300, seed=0)
    auroc_int = skm.roc_auc_score(internal.labels, internal.probs)
    auroc_ext = skm.roc_auc_score(external.labels, external.probs)
    assert shift["auroc_difference"] == pytest.approx(auroc_ext - auroc_int, abs=1e-12)
    assert (
        shift["auroc_difference_ci_low"]
        < shift["auroc_difference"]
        < shift["auroc_difference_ci_high"]
    )
    same = domain_shift(internal, internal, 0.4, n_bootstrap=300, seed=0)
    assert same["auroc_difference"] == 0.0
    assert same["auroc_difference_ci_low"] < 0.0 < same["auroc_difference_ci_high"]


# --- plot data and failure cases ---------------------------------------------------------------


def test_roc_and_pr_points_match_sklearn():
    y, p, _ = cohort(decimals=2)
    fpr, tpr, _ = skm.roc_curve(y, p)  # drops the same collinear points
    roc = diagnostics.roc_points(y, p)
    assert np.allclose([r["fpr"] for r in roc], fpr) and np.allclose([r["tpr"] for r in roc], tpr)
    assert all(math.isfinite(v) for r in roc for v in r.values())
    precision, recall, _ = skm.precision_recall_curve(y, p)
    pr = diagnostics.pr_points(y, p)
    pairs = sorted((r["recall"], r["precision"]) for r in pr)
    assert np.allclose(pairs, sorted(zip(recall, precision, strict=True)), atol=TOL)
    assert diagnostics.roc_points([1, 1], [0.2, 0.3]) == []


def test_calibration_bins_reproduce_ece_and_confusion_rows_count():
    y, p, _ = cohort(decimals=None)
    p[:3] = 1.0
    bins = diagnostics.calibration_bins(y, p, n_bins=10)
    assert sum(b["count"] for b in bins) == y.size and bins[-1]["bin"] == 10
    ece = sum(abs(b["mean_predicted"] - b["fraction_positive"]) * b["count"] for b in bins) / y.size
    assert ece == pytest.approx(binary_metrics(y, p, 0.5, ece_bins=10)[0]["ece"], abs=1e-12)
    rows = pd.DataFrame(diagnostics.confusion_rows(y, p, 0.5))
    counts = pd.crosstab(rows["actual"], rows["predicted"]).to_numpy()
    assert (counts == skm.confusion_matrix(y, (p >= 0.5).astype(int))).all()


def test_most_confident_errors_sorted_by_confidence_of_wrong_call():
    df = pd.DataFrame(
        {
            "path": list("abcdef"),
            "patient_id": list("ppqqrr"),
            "label": [0, 0, 1, 1, 0, 1],
            "prob": [0.95, 0.6, 0.02, 0.45, 0.1, 0.9],
        }
    )
    out = diagnostics.most_confident_errors(df, threshold=0.5, k=3)
    assert out["path"].tolist() == ["c", "a", "b"]
    assert out["confidence"].tolist() == pytest.approx([0.98, 0.95, 0.6])
    assert list(out.columns[:4]) == ["path", "patient_id", "label", "prob"]
