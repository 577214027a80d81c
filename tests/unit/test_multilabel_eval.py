"""Multi-label evaluation against scikit-learn: per label, macro and micro, to 1e-6."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from pathtrail.evaluation.multilabel import decisions, evaluate_multilabel, lock_thresholds
from pathtrail.evaluation.report import choose_threshold

NAMES = ["lymphocytes", "fibrosis", "haemorrhage"]


def cohort(seed: int, n_patients: int = 30, per_patient: int = 6):
    rng = np.random.default_rng(seed)
    patients = np.repeat([f"P{i:03d}" for i in range(n_patients)], per_patient)
    prone = rng.random((n_patients, 3)) < 0.4
    y = (rng.random((len(patients), 3)) < np.where(np.repeat(prone, per_patient, 0), 0.6, 0.1)).astype(np.int64)
    p = np.clip(0.35 * y + 0.65 * rng.random(y.shape), 0, 1)
    slides = np.array([f"{q}-S{i % 2}" for i, q in enumerate(patients)])
    return y, p, patients, slides


@pytest.fixture(scope="module")
def evaluated():
    y, p, patients, slides = cohort(0)
    thresholds = {n: 0.5 for n in NAMES}
    result = evaluate_multilabel(y, p, NAMES, patients, thresholds, n_bootstrap=300, seed=5, slide_ids=slides)
    return y, p, result


def test_per_label_metrics_agree_with_sklearn(evaluated):
    y, p, result = evaluated
    for k, name in enumerate(NAMES):
        m = result["labels"][name]
        assert m["auroc"] == pytest.approx(roc_auc_score(y[:, k], p[:, k]), abs=1e-6)
        assert m["auprc"] == pytest.approx(average_precision_score(y[:, k], p[:, k]), abs=1e-6)
        tn, fp, fn, tp = confusion_matrix(y[:, k], (p[:, k] >= 0.5).astype(int)).ravel()
        assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (tp, fp, tn, fn)
        assert m["sensitivity"] == pytest.approx(tp / (tp + fn), abs=1e-12)
        assert m["auroc_ci_low"] <= m["auroc"] <= m["auroc_ci_high"]
        assert m["n_patients"] == 30 and "patient_level" in m and "slide_level" in m


def test_macro_and_micro_summaries_agree_with_sklearn(evaluated):
    y, p, result = evaluated
    assert result["auroc"] == pytest.approx(roc_auc_score(y, p, average="macro"), abs=1e-6)
    assert result["auprc"] == pytest.approx(average_precision_score(y, p, average="macro"), abs=1e-6)
    assert result["micro_auroc"] == pytest.approx(roc_auc_score(y, p, average="micro"), abs=1e-6)
    assert result["micro_auprc"] == pytest.approx(average_precision_score(y, p, average="micro"), abs=1e-6)
    for key in ("auroc", "auprc", "micro_auroc", "micro_auprc"):
        assert result[f"{key}_ci_low"] < result[key] < result[f"{key}_ci_high"], key
    assert result["n_positive"] == {n: int(y[:, k].sum()) for k, n in enumerate(NAMES)}


def test_summary_cis_resample_patients_not_patches():
    # every patient's patch repeated 10 times: resampling patients must give exactly the intervals
    # of the cohort with one patch per patient (the copies move together), which resampling
    # patches would not
    y, p, patients, _ = cohort(1, n_patients=25, per_patient=1)
    thresholds = {n: 0.5 for n in NAMES}
    single = evaluate_multilabel(y, p, NAMES, patients, thresholds, n_bootstrap=400, seed=2)
    copies = evaluate_multilabel(np.repeat(y, 10, 0), np.repeat(p, 10, 0), NAMES, np.repeat(patients, 10),
                                 thresholds, n_bootstrap=400, seed=2)
    for key in ("auroc", "auprc", "micro_auroc", "micro_auprc"):
        for part in ("", "_ci_low", "_ci_high"):
            assert copies[key + part] == pytest.approx(single[key + part], abs=1e-12), key + part
    assert copies["n_patients"] == single["n_patients"] == 25 and copies["n_samples"] == 250
    again = evaluate_multilabel(y, p, NAMES, patients, thresholds, n_bootstrap=400, seed=2)
    assert again == single  # keyed: the same seed gives the same intervals


def test_a_label_with_one_value_is_left_out_of_the_macro_mean():
    y, p, patients, _ = cohort(2)
    y[:, 1] = 0
    result = evaluate_multilabel(y, p, NAMES, patients, {n: 0.5 for n in NAMES}, n_bootstrap=50, seed=0)
    assert result["labels_undefined"] == ["fibrosis"] and result["warnings"]
    expected = np.mean([roc_auc_score(y[:, k], p[:, k]) for k in (0, 2)])
    assert result["auroc"] == pytest.approx(expected, abs=1e-6)


def test_thresholds_are_each_labels_own_validation_choice():
    y, p, _, _ = cohort(4)
    thresholds, rules = lock_thresholds(y, p, NAMES, "youden", 0.9, 0.5)
    for k, name in enumerate(NAMES):
        assert thresholds[name] == choose_threshold(y[:, k], p[:, k], "youden")
        assert rules[name] == "youden"
    y[:, 2] = 0  # one value on validation: the fixed threshold, said so
    thresholds, rules = lock_thresholds(y, p, NAMES, "youden", 0.9, 0.5)
    assert thresholds["haemorrhage"] == 0.5 and rules["haemorrhage"].startswith("fixed")
    called = decisions(p, thresholds, NAMES)
    assert called.shape == y.shape and set(np.unique(called)) <= {0, 1}
    assert (called[:, 2] == (p[:, 2] >= 0.5)).all()


def test_shapes_that_do_not_fit_are_refused():
    y, p, patients, _ = cohort(0)
    with pytest.raises(ValueError, match="do not fit"):
        evaluate_multilabel(y[:, :2], p, NAMES, patients, {n: 0.5 for n in NAMES}, n_bootstrap=0)
