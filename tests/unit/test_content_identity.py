"""Identical image bytes are one image: one label, one patient (or one split), never two splits."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pandas as pd
import pytest
from test_reporting_checklists import items, make_card
from test_splits import table
from test_validation import Corpus, find, run

from fake_pipeline import committed_params
from pathtrail.card.reporting import FILLED, MISSING, reporting_checklists
from pathtrail.card.sections import training_data
from pathtrail.config.loading import ParamsError, parse_section
from pathtrail.config.sections import DataParams
from pathtrail.data.splits import (
    SplitError,
    crossing_values,
    grouping_summary,
    require_disjoint,
    split_by_patient,
    split_groups,
)
from pathtrail.data.validation import Rules


@pytest.fixture
def corpus(tmp_path, monkeypatch) -> Corpus:
    monkeypatch.chdir(tmp_path)
    return Corpus(tmp_path)


def copy_image(corpus: Corpus, source: str, target: str) -> None:
    shutil.copyfile(corpus.root / "internal" / source, corpus.root / "internal" / target)


# ------------------------------------------------------------------------------------ validation
def test_identical_bytes_with_different_labels_is_an_error_naming_both_lines(corpus, capsys):
    copy_image(corpus, "i0_0.png", "i2_0.png")  # line 2 (iP0, benign) = line 6 (iP2, tumour)
    rc, report = run(corpus, capsys)
    assert rc == 1 and report["status"] == "failed"
    problem = find(report, "duplicate_content_labels", line=2, column="label",
                   file="internal/i0_0.png")
    assert "line 2 'internal/i0_0.png' (benign, patient 'iP0')" in problem["message"]
    assert "line 6 'internal/i2_0.png' (tumour, patient 'iP2')" in problem["message"]
    assert "different labels (benign, tumour)" in problem["message"]
    assert not [p for p in report["errors"] if p["rule"] != "duplicate_content_labels"]
    # the conflict is an error even where the patients may be merged
    rc, report = run(corpus, capsys, "--duplicate-content", "merge")
    assert rc == 1
    find(report, "duplicate_content_labels", line=2)


def test_identical_bytes_under_two_patients_is_an_error_by_default(corpus, capsys):
    copy_image(corpus, "i0_0.png", "i1_1.png")  # line 2 (iP0) = line 5 (iP1), both benign
    rc, report = run(corpus, capsys)
    assert rc == 1
    problem = find(report, "duplicate_content_patients", line=2, column="path",
                   file="internal/i0_0.png")
    assert "under 2 patients" in problem["message"]
    assert "line 2 'internal/i0_0.png' (benign, patient 'iP0')" in problem["message"]
    assert "line 5 'internal/i1_1.png' (benign, patient 'iP1')" in problem["message"]
    assert "data.duplicate_content: merge" in problem["hint"]
    assert report["rules"]["duplicate_content"] == "error"


def test_merge_downgrades_the_cross_patient_copy_to_a_warning(corpus, capsys):
    copy_image(corpus, "i0_0.png", "i1_1.png")
    rc, report = run(corpus, capsys, "--duplicate-content", "merge")
    assert rc == 0 and report["n_errors"] == 0
    warning = find(report, "duplicate_content_patients", "warning", line=2)
    assert "keeps together" in warning["message"] and "line 5" in warning["message"]
    assert report["rules"]["duplicate_content"] == "merge"


def test_copies_within_one_patient_stay_a_warning(corpus, capsys):
    copy_image(corpus, "i0_0.png", "i0_1.png")
    rc, report = run(corpus, capsys)
    assert rc == 0
    warning = find(report, "duplicate_content", "warning", line=2)
    assert warning["message"] == "identical image content on lines 2, 3"
    assert not [p for p in report["warnings"] if p["rule"] != "duplicate_content"]


def test_the_param_is_typed_and_reaches_the_rules():
    params = committed_params()
    assert parse_section(params, "data", DataParams).duplicate_content == "error"
    params["data"]["duplicate_content"] = "merge"
    assert Rules.from_params(parse_section(params, "data", DataParams)).duplicate_content == "merge"
    params["data"]["duplicate_content"] = "warn"
    with pytest.raises(ParamsError, match="duplicate_content.*'error', 'merge'"):
        parse_section(params, "data", DataParams)


# ----------------------------------------------------------------------------------------- split
def linked_table(n_links: int = 10, seed: int = 0) -> tuple[pd.DataFrame, list[str]]:
    """`test_splits.table` with one patch of each of `n_links` patients copied (same sha256) under
    another patient; returns the table and the copied digests."""
    data = table(n_patients=60, n_classes=2, seed=seed)
    rng = np.random.default_rng(seed)
    patients = sorted(data["patient_id"].unique())
    digests = []
    for a, b in rng.permutation(len(patients)).reshape(-1, 2)[:n_links]:
        source = data.index[data["patient_id"] == patients[a]][0]
        target = data.index[data["patient_id"] == patients[b]][0]
        data.loc[target, "sha256"] = data.at[source, "sha256"]
        digests.append(data.at[source, "sha256"])
    return data, digests


def test_groups_are_connected_components_named_by_their_smallest_patient():
    rows = [("a.png", "P3", "S3", "x"), ("b.png", "P2", "S2", "x"),  # P3 and P2 share image x
            ("c.png", "P2", "S9", "y"), ("d.png", "P1", "S9", "z"),  # P2 and P1 share slide S9
            ("e.png", "P4", "S4", "w"), ("f.png", "P4", "S5", "v")]  # P4 alone, two slides
    data = pd.DataFrame(rows, columns=["path", "patient_id", "slide_id", "sha256"])
    assert split_groups(data).tolist() == ["P1", "P1", "P1", "P1", "P4", "P4"]
    shuffled = data.sample(frac=1, random_state=0)
    assert split_groups(shuffled).tolist() == split_groups(data).loc[shuffled.index].tolist()
    assert split_groups(data, keys=("patient_id",)).tolist() == ["P3", "P2", "P2", "P1", "P4", "P4"]


def test_without_links_the_groups_are_the_patients():
    """So a table with no shared slide or image splits exactly as grouping by patient did."""
    data = table()
    assert split_groups(data).tolist() == data["patient_id"].tolist()
    summary = grouping_summary(data, split_by_patient(data, 0.2, 0.2, seed=7))
    assert summary["groups"] == data["patient_id"].nunique()
    assert summary["groups_with_several_patients"] == 0


def test_over_many_seeds_copies_never_cross_splits():
    data, digests = linked_table()
    leaked_by_patient_only = 0
    for seed in range(20):
        splits = split_by_patient(data, 0.2, 0.2, seed=seed)
        assert crossing_values(splits) == {"patient_id": [], "slide_id": [], "sha256": []}
        assert require_disjoint(splits) == {"patient_id": 0, "slide_id": 0, "sha256": 0}
        where = {name: set(part["sha256"]) & set(digests) for name, part in splits.items()}
        assert sum(len(d) for d in where.values()) == len(digests)  # each copy pair in one split
        # grouping by patient alone (the content hash dropped) lets copies cross for most seeds
        by_patient = split_by_patient(data.drop(columns=["sha256"]), 0.2, 0.2, seed=seed)
        by_patient = {n: part.merge(data[["path", "sha256"]], on="path")
                      for n, part in by_patient.items()}
        leaked_by_patient_only += bool(crossing_values(by_patient)["sha256"])
    assert leaked_by_patient_only >= 10


def test_too_few_groups_per_class_counts_linked_patients_once():
    data = table(n_patients=30, n_classes=2)
    data = data[(data["label"] == 0) | data["patient_id"].isin(["P001", "P003", "P005"])]

    def too_few(frame: pd.DataFrame) -> str:
        try:
            split_by_patient(frame, 0.2, 0.2, seed=7, classes=("benign", "tumour"))
        except SplitError as exc:
            return str(exc) if "too few patients per class" in str(exc) else ""
        return ""

    assert not too_few(data)  # three tumour patients
    copy = data.index[data["patient_id"] == "P005"][0]
    data.loc[copy, "sha256"] = data.loc[data["patient_id"] == "P003", "sha256"].iloc[0]
    assert re.search(r"'tumour' \(2\).* 3 patient groups \(patients linked", too_few(data))


def test_the_checker_finds_values_crossing_a_crafted_leaking_split():
    data = table(n_patients=12, n_classes=2)
    rows = data.sort_values("path", ignore_index=True)
    clean = {"train": rows[rows["patient_id"] < "P006"], "val": rows[rows["patient_id"] == "P006"],
             "test": rows[rows["patient_id"] > "P006"]}
    assert crossing_values(clean) == {"patient_id": [], "slide_id": [], "sha256": []}
    leaked = dict(clean)
    leaked["test"] = pd.concat([clean["test"], clean["train"].iloc[[0]]])  # one row of P000 twice
    leaked["val"] = clean["val"].assign(sha256=clean["val"]["sha256"].where(
        clean["val"].index != clean["val"].index[0], clean["train"]["sha256"].iloc[5]))
    crossing = crossing_values(leaked)
    assert crossing["patient_id"] == ["P000"] and crossing["slide_id"] == ["P000-S0"]
    assert sorted(crossing["sha256"]) == sorted({rows.at[0, "sha256"],
                                                clean["train"]["sha256"].iloc[5]})
    assert grouping_summary(rows, leaked)["crossing_splits"] == {
        "patient_id": 1, "slide_id": 1, "sha256": 2}
    with pytest.raises(SplitError, match="not disjoint: 1 patient_id value.*'P000'"):
        require_disjoint(leaked)


# ------------------------------------------------------------------------------------------ card
def test_the_card_cites_the_crossing_counts_and_refuses_a_leaking_split():
    card = make_card()
    card["data"]["split"]["grouping"] = {"crossing_splits": {"patient_id": 0, "slide_id": 0,
                                                             "sha256": 0}}
    disjoint = items(reporting_checklists(card), "CLAIM 2024")["20"]
    assert disjoint["status"] == FILLED
    assert {"card": "data.split.grouping.crossing_splits.sha256"} in disjoint["evidence"]
    assert ("more than one split (patients, slides and identical images): patient\\_id 0, "
            "sha256 0, slide\\_id 0.") in training_data(card)
    card["data"]["split"]["grouping"]["crossing_splits"]["sha256"] = 1  # one image in two splits
    assert items(reporting_checklists(card), "CLAIM 2024")["20"]["status"] == MISSING
    del card["data"]["split"]["grouping"]  # a report from before the counts: patients alone
    assert items(reporting_checklists(card), "CLAIM 2024")["20"]["status"] == FILLED
