"""split_by_patient: no patient in two splits; stratified, deterministic; refuses the impossible."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pathtrail.data.splits import SplitError, split_by_patient, split_summary

CLASSES = ("benign", "tumour", "other")


def table(n_patients: int = 60, n_classes: int = 3, seed: int = 0) -> pd.DataFrame:
    """Patients with 2-12 patches; a few patients carry patches of two classes."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = p % n_classes
        for k in range(int(rng.integers(2, 13))):
            mixed = p % 10 == 0 and k % 2  # some patients have a second class
            rows.append({"path": f"p{p:03d}/{k:02d}.png",
                         "label": (label + 1) % n_classes if mixed else label,
                         "patient_id": f"P{p:03d}", "slide_id": f"P{p:03d}-S{k % 2}",
                         "site": "site_a", "sha256": f"{p:032x}{k:032x}"})
    return pd.DataFrame(rows)


def test_no_patient_crosses_splits_and_every_row_is_used_once():
    data = table()
    splits = split_by_patient(data, 0.2, 0.2, seed=7)
    patients = [set(s["patient_id"]) for s in splits.values()]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    combined = pd.concat(splits.values()).sort_values("path", ignore_index=True)
    pd.testing.assert_frame_equal(combined, data.sort_values("path", ignore_index=True))
    for part in splits.values():
        assert list(part.columns) == list(data.columns)
        assert part["path"].is_monotonic_increasing
        assert set(part["label"]) == {0, 1, 2}


def test_fractions_and_stratification_are_close():
    data = table(n_patients=100, n_classes=2)
    summary = split_summary(split_by_patient(data, 0.2, 0.2, seed=1), CLASSES[:2])
    assert summary["train"]["fraction_of_patients"] == pytest.approx(0.6, abs=0.03)
    assert summary["test"]["fraction_of_patients"] == pytest.approx(0.2, abs=0.03)
    overall = (data["label"] == 1).mean()
    for part in summary.values():
        share = part["classes"]["tumour"]["patches"] / part["patches"]
        assert share == pytest.approx(overall, abs=0.1)
    assert sum(s["patches"] for s in summary.values()) == len(data)


def test_deterministic_and_independent_of_row_order():
    data = table()
    a = split_by_patient(data, 0.2, 0.2, seed=7)
    b = split_by_patient(data.sample(frac=1, random_state=3), 0.2, 0.2, seed=7)
    c = split_by_patient(data, 0.2, 0.2, seed=8)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert any(set(a[n]["patient_id"]) != set(c[n]["patient_id"]) for n in a)


def test_refuses_too_few_patients_per_class():
    data = table(n_patients=30, n_classes=2)
    data = data[(data["label"] == 0) | data["patient_id"].isin(["P001", "P003"])]
    with pytest.raises(SplitError, match=r"too few patients per class.*'tumour' \(2\)"):
        split_by_patient(data, 0.2, 0.2, seed=7, classes=CLASSES[:2])


def test_refuses_when_a_split_would_lack_a_class():
    data = table(n_patients=40, n_classes=2)
    tumour = ["P001", "P003", "P005"]
    data = data[(data["label"] == 0) | data["patient_id"].isin(tumour)]
    data = data[~data["patient_id"].isin(["P000", "P010", "P020", "P030"])]  # no mixed patients
    with pytest.raises(SplitError, match="split gets no patient with class tumour"):
        split_by_patient(data, 0.1, 0.1, seed=7, classes=CLASSES[:2])


@pytest.mark.parametrize("val, test", [(0.0, 0.2), (0.5, 0.5), (0.2, 1.0)])
def test_refuses_bad_fractions(val, test):
    with pytest.raises(SplitError, match="fractions"):
        split_by_patient(table(), val, test, seed=7)
