"""The stacking meta-learner (pathtrail.ensemble.meta) and the ensemble's params."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import REPO
from pathtrail.config.loading import ParamsError, from_dict
from pathtrail.core.execution import environment_for
from pathtrail.ensemble.meta import MetaInputError, fit_logistic, out_of_fold, patient_folds
from pathtrail.ensemble.params import EnsembleParams, MetaParams, compose_ensemble, member_params
from pathtrail.evaluation.calibration import logit


def members_data(n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two noisy members' probabilities, labels, and patient ids (6 samples per patient)."""
    rng = np.random.default_rng(seed)
    patients = np.repeat(np.arange(n // 6), 6)
    y = (patients % 2).astype(int)
    probs = np.clip(np.stack([0.5 + 0.3 * (y - 0.5) + 0.2 * rng.standard_normal(n),
                              0.5 + 0.15 * (y - 0.5) + 0.2 * rng.standard_normal(n)], axis=1), 0.01, 0.99)
    return probs, y, np.array([f"p{i:03d}" for i in patients])


def test_fit_matches_scikit_learns_penalized_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    probs, y, _ = members_data()
    for l2 in (0.1, 1.0, 10.0):
        meta = fit_logistic(probs, y, ["a", "b"], l2)
        oracle = LogisticRegression(C=1.0 / l2, tol=1e-12, max_iter=10_000).fit(logit(probs), y)
        np.testing.assert_allclose(meta.coef, oracle.coef_[0], rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(meta.intercept, oracle.intercept_[0], rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(meta.predict(probs), oracle.predict_proba(logit(probs))[:, 1], atol=1e-6)


FIT_SCRIPT = """
import json, sys
import numpy as np
from pathtrail.ensemble.meta import fit_logistic
data = json.load(sys.stdin)
probs, y = np.array(data["probs"]), np.array(data["labels"])
m = fit_logistic(probs, y, ["a", "b"], 1.0)
print(json.dumps([m.intercept, *m.coef, *m.predict(probs).tolist()]))
"""


def test_the_fit_is_the_same_bits_for_any_thread_count_under_the_execution_contract():
    """Two processes under the contract's CPU level (as every stage runs), 1 and 2 threads: the same
    bits, and the same as a second fit in one process. (numpy's own exp/log kernels follow the CPU
    level, which the contract pins; the fit calls no BLAS, so thread counts change nothing.)"""
    probs, y, _ = members_data()
    assert fit_logistic(probs, y, ["a", "b"], 1.0) == fit_logistic(probs, y, ["a", "b"], 1.0)
    given = json.dumps({"probs": probs.tolist(), "labels": y.tolist()})  # floats round-trip exactly
    contract = environment_for({"threads": 1, "cpu_isa": "avx2"})
    runs = []
    for threads in ("1", "2"):
        env = {**os.environ, **contract, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
               "MKL_NUM_THREADS": threads}
        done = subprocess.run([sys.executable, "-c", FIT_SCRIPT], env=env, input=given, capture_output=True,
                              text=True, check=True)
        runs.append(json.loads(done.stdout))
    assert runs[0] == runs[1]


def test_separating_members_still_give_a_finite_fit_thanks_to_the_penalty():
    y = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([[0.1, 0.2], [0.2, 0.1], [0.3, 0.3], [0.7, 0.8], [0.8, 0.9], [0.9, 0.7]])
    strong, weak = fit_logistic(probs, y, ["a", "b"], 0.01), fit_logistic(probs, y, ["a", "b"], 10.0)
    assert all(np.isfinite(strong.coef)) and np.all(np.abs(strong.coef) > np.abs(weak.coef))
    assert np.all((strong.predict(probs) > 0.5) == (y == 1))


@pytest.mark.parametrize(("probs", "labels", "message"), [
    (np.full((4, 2), np.nan), [0, 1, 0, 1], "finite"),
    (np.full((4, 2), 1.5), [0, 1, 0, 1], "within"),
    (np.full((4, 3), 0.5), [0, 1, 0, 1], r"\(n, 2\)"),
    (np.full((4, 2), 0.5), [0, 1, 0], "vector of the 4"),
    (np.full((4, 2), 0.5), [0, 1, 2, 1], "binary"),
    (np.full((4, 2), 0.5), [1, 1, 1, 1], "both classes"),
])
def test_bad_input_is_refused_with_what_is_wrong(probs, labels, message):
    with pytest.raises(MetaInputError, match=message):
        fit_logistic(probs, np.array(labels), ["a", "b"], 1.0)


def test_folds_keep_patients_together_hold_both_classes_and_are_keyed_on_the_seed():
    _, y, patients = members_data()
    fold = patient_folds(patients, y, 5, seed=7)
    for p in set(patients):
        assert len(set(fold[patients == p])) == 1
    for f in range(5):
        assert set(y[fold == f]) == {0, 1}
    assert np.array_equal(fold, patient_folds(patients, y, 5, seed=7))
    assert not np.array_equal(fold, patient_folds(patients, y, 5, seed=8))
    with pytest.raises(MetaInputError, match="fewer than ensemble.meta.folds=30"):
        patient_folds(patients, y, 30, seed=7)


def test_out_of_fold_probabilities_come_from_fits_that_did_not_see_them():
    probs, y, patients = members_data()
    meta = MetaParams(kind="logistic", l2=1.0, folds=4, seed=3)
    oof = out_of_fold(probs, y, patients, ["a", "b"], meta)
    fold = patient_folds(patients, y, 4, seed=3)
    held = fold == 2
    alone = fit_logistic(probs[~held], y[~held], ["a", "b"], 1.0).predict(probs[held])
    assert np.array_equal(oof[held], alone)
    assert not np.allclose(oof, fit_logistic(probs, y, ["a", "b"], 1.0).predict(probs))


def ensemble_section(**changes):
    section = {"reuse": "cnn", "members": {"vit": {"model": {"arch": "monai_vit"}, "train": {}}},
               "meta": {"kind": "logistic", "l2": 1.0, "folds": 5, "seed": 7}}
    section.update(changes)
    return section


@pytest.mark.parametrize(("changes", "message"), [
    ({"reuse": None}, "needs at least 2"),
    ({"reuse": "vit"}, "also the name of a trained member"),
    ({"members": {"Vit!": {"model": {}}}}, "not a usable member name"),
    ({"members": {"vit": {"model": {}, "epochs": 3}}}, "unknown params key.*ensemble.members.vit.epochs"),
    ({"meta": {"kind": "mlp", "l2": 1.0, "folds": 5, "seed": 7}}, "'ensemble.meta.kind' must be one of"),
    ({"meta": {"kind": "logistic", "l2": 0.0, "folds": 5, "seed": 7}}, "ensemble.meta.l2"),
])
def test_ensemble_params_are_strict(changes, message):
    with pytest.raises(ParamsError, match=message):
        from_dict(EnsembleParams, ensemble_section(**changes), "ensemble")


def test_a_member_is_trained_with_its_model_and_its_train_changes_only():
    ens = from_dict(EnsembleParams, ensemble_section(members={"vit": {"model": {"arch": "monai_vit"},
                                                                      "train": {"lr": 0.01}}}), "ensemble")
    main = {"model": {"arch": "small_cnn"}, "train": {"lr": 0.002, "seed": 42}, "data": {"x": 1}}
    mine = member_params(main, ens, "vit")
    assert mine["model"] == {"arch": "monai_vit"} and mine["train"] == {"lr": 0.01, "seed": 42}
    assert main["train"]["lr"] == 0.002 and mine["data"] is main["data"]
    bad = from_dict(EnsembleParams, ensemble_section(members={"vit": {"model": {}, "train": {"lrr": 1}}}), "ensemble")
    with pytest.raises(ParamsError, match="unknown train key"):
        member_params(main, bad, "vit")
    with pytest.raises(ParamsError, match="not a trained member.*vit"):
        member_params(main, ens, "cnn")


def test_the_configs_compose_and_the_demo_is_the_committed_ensemble_params():
    demo = yaml.safe_load(compose_ensemble("demo", REPO / "pipelines"))
    assert (REPO / "ensemble/params.yaml").read_text() == compose_ensemble("demo", REPO / "pipelines")
    ens = from_dict(EnsembleParams, demo["ensemble"], "ensemble")
    assert ens.names() == ["cnn", "vit"] and ens.members["vit"]["model"]["arch"] == "monai_vit"
    prod = from_dict(EnsembleParams, yaml.safe_load(compose_ensemble("production", REPO / "pipelines"))["ensemble"],
                     "ensemble")
    arch = {n: (m["model"]["arch"], m["model"]["width"]) for n, m in prod.members.items()}
    assert arch == {"densenet121": ("monai_densenet121", 64), "vit_b16": ("monai_vit", 768)}
    assert prod.members["vit_b16"]["model"]["vit"]["patch_size"] == 16 and prod.reuse is None
