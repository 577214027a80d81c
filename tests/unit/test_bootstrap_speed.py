"""The tie-group rank statistics of the bootstrap are bitwise those of the per-sample formulation.

`bench/bootstrap_reference.py` keeps the per-sample code that `evaluation.bootstrap._Ranking`
replaced; every replicate, and so every CI in `metrics/eval.json`, must stay the same bits.
"""

from __future__ import annotations

import numpy as np
import pytest
from bench.bootstrap_reference import ReferenceRanking, reference_auroc_auprc

from pathtrail.evaluation import bootstrap
from pathtrail.evaluation.report import evaluate_cohort


def _cohort(n: int, n_patients: int, seed: int, decimals: int | None):
    rng = np.random.default_rng(seed)
    codes = np.unique(rng.integers(0, n_patients, n), return_inverse=True)[1]
    positive = rng.random(n) < 0.35
    scores = rng.random(n) * 0.6 + 0.4 * positive
    return positive, (np.round(scores, decimals) if decimals is not None else scores), codes


@pytest.mark.parametrize("decimals", [None, 3, 1])
def test_ranking_equals_the_per_sample_reference_bitwise(decimals):
    positive, scores, codes = _cohort(3000, 400, 1, decimals)
    n_patients = int(codes.max()) + 1
    counts = bootstrap.draw_patient_counts(np.random.default_rng(2), n_patients, 50)
    counts[0] = 0  # nothing drawn: undefined
    counts[1, : n_patients // 2] = 0  # half the patients never drawn
    ranking = bootstrap._Ranking.build(positive, scores, codes, n_patients)
    got_auroc, got_auprc = ranking.auroc_auprc(counts, integral=True)
    want_auroc, want_auprc = reference_auroc_auprc(positive, scores, codes, counts)
    assert np.isnan(got_auroc[0]) and np.isnan(got_auprc[0])
    assert np.array_equal(got_auroc.view(np.int64), want_auroc.view(np.int64))
    assert np.array_equal(got_auprc.view(np.int64), want_auprc.view(np.int64))


def test_one_class_and_float_weights_match_the_reference():
    positive, scores, codes = _cohort(500, 500, 3, 2)
    counts = np.random.default_rng(4).random((4, 500)) * 3  # not integers: the float64 path
    got = bootstrap._Ranking.build(positive, scores, codes, 500).auroc_auprc(counts)
    want = reference_auroc_auprc(positive, scores, codes, counts)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-12)
    none = np.zeros(500, dtype=bool)
    got = bootstrap._Ranking.build(none, scores, codes, 500).auroc_auprc(np.ones((2, 500)))
    assert np.isnan(got[0]).all() and np.isnan(got[1]).all()


@pytest.mark.parametrize("classes", [2, 3])
def test_evaluate_cohort_is_unchanged_bitwise(classes, monkeypatch):
    rng = np.random.default_rng(5)
    n, n_patients = 1500, 150
    patients = rng.integers(0, n_patients, n)
    labels = rng.integers(0, classes, n_patients)[patients]
    logits = rng.normal(0, 1, (n, classes)) + np.eye(classes)[labels]
    probs = np.round(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), 3)
    probs = probs[:, 1] if classes == 2 else probs / probs.sum(1, keepdims=True)
    kwargs = {"n_bootstrap": 300, "seed": 7, "slide_ids": patients * 2 + rng.integers(0, 2, n)}
    got = evaluate_cohort(labels, probs, patients, 0.5 if classes == 2 else None, **kwargs)
    monkeypatch.setattr(bootstrap, "_Ranking", ReferenceRanking)
    want = evaluate_cohort(labels, probs, patients, 0.5 if classes == 2 else None, **kwargs)
    assert got == want
    assert got["auroc_ci_low"] < got["auroc"] < got["auroc_ci_high"]
