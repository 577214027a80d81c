"""validate's checks of the multi-label manifests' 0/1 label columns, and the demo's findings."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from pathtrail.config.sections import DemoParams
from pathtrail.core.errors import PathTrailError
from pathtrail.data.demo import generate_cohorts, write_cohorts
from pathtrail.data.label_columns import label_matrix
from pathtrail.data.validation import Cohort, Rules, validate_cohorts

FINDINGS = ["lymphocytes", "fibrosis", "haemorrhage"]
DEMO = DemoParams(seed=3, patch_size=64, internal_sites=["site_a"], external_site="site_c", patients_per_site=4,
                  external_patients=2, patches_per_patient=3, max_slides_per_patient=1, findings=FINDINGS)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    cohorts = generate_cohorts(DEMO)
    return root, cohorts, write_cohorts(cohorts, root, FINDINGS)


def check(root, frame: pd.DataFrame, columns=tuple(FINDINGS)):
    manifest = root / "manifest_under_test.csv"
    frame.to_csv(manifest, index=False)
    return validate_cohorts([Cohort("internal", manifest, root)], Rules(("benign", "tumour"), min_per_class=1),
                            workers=1, label_columns=tuple(columns))


def test_the_multilabel_demo_manifest_validates_and_keeps_its_label_columns(demo):
    root, _, manifests = demo
    result = check(root, manifests["internal"])
    assert result.ok, [p.message for p in result.errors]
    table = result.tables["internal"]
    assert list(table.columns[-3:]) == FINDINGS
    y = label_matrix(table, FINDINGS)
    assert y.shape == (12, 3) and y.dtype == np.float32 and set(np.unique(y)) <= {0.0, 1.0}
    assert result.report["label_columns"] == FINDINGS


def test_a_missing_label_column_is_an_error_with_a_rename_hint(demo):
    root, _, manifests = demo
    result = check(root, manifests["internal"].rename(columns={"fibrosis": "fibrosys"}))
    (error,) = [p for p in result.errors if p.rule == "label_column_missing"]
    assert "'fibrosis'" in error.message and "rename column 'fibrosys' to 'fibrosis'" in error.hint
    assert not result.tables


def test_values_other_than_0_and_1_are_errors_naming_line_and_column(demo):
    root, _, manifests = demo
    frame = manifests["internal"].astype(dict.fromkeys(FINDINGS, object))
    frame.loc[2, "lymphocytes"] = "yes"
    frame.loc[4, "haemorrhage"] = 2
    frame.loc[5, "fibrosis"] = None
    result = check(root, frame)
    found = sorted((p.line, p.column, p.rule) for p in result.errors)
    assert (4, "lymphocytes", "label_not_binary") in found and (6, "haemorrhage", "label_not_binary") in found
    assert (7, "fibrosis", "label_not_binary") in found
    assert any("holds 'yes', not 0 or 1" in p.message for p in result.errors)
    assert any("holds empty" in p.message for p in result.errors)
    assert not result.tables


def test_hostile_label_names_are_printed_escaped(demo):
    root, _, manifests = demo
    hostile = "\x1b[31mred=cmd|x"
    result = check(root, manifests["internal"], columns=[*FINDINGS, hostile])
    (error,) = [p for p in result.errors if p.rule == "label_column_missing"]
    assert "\x1b" not in error.message and "\\x1b" in error.message


def test_a_label_with_one_value_in_a_cohort_is_a_warning(demo):
    root, _, manifests = demo
    frame = manifests["internal"].assign(fibrosis=0)
    result = check(root, frame)
    assert result.ok and any(p.rule == "label_one_value" and p.column == "fibrosis" for p in result.warnings)


def test_label_matrix_refuses_edited_tables():
    table = pd.DataFrame({"a": [0, 1, 1], "b": [1, 0, 3]})
    with pytest.raises(PathTrailError, match="values other than 0 and 1"):
        label_matrix(table, ["a", "b"])
    with pytest.raises(PathTrailError, match="no label column"):
        label_matrix(table, ["a", "c"])


def test_findings_are_keyed_and_leave_the_binary_demo_untouched(demo):
    _, cohorts, manifests = demo
    binary = generate_cohorts(dataclasses.replace(DEMO, findings=[]))
    for name in ("internal", "external"):
        with_f, without = cohorts[name], binary[name]
        assert [p.relpath for p in with_f] == [p.relpath for p in without]
        assert [p.label for p in with_f] == [p.label for p in without]
        for a, b in zip(with_f, without, strict=True):
            assert np.array_equal(a.image, b.image) == (not any(a.findings))  # painted only where present
            assert b.findings == ()
    again = generate_cohorts(DEMO)
    assert all(np.array_equal(a.image, b.image) and a.findings == b.findings
               for a, b in zip(again["internal"], cohorts["internal"], strict=True))
    assert manifests["internal"][FINDINGS].to_numpy().sum() > 0


def test_unknown_findings_are_refused():
    with pytest.raises(ValueError, match="data.demo.findings"):
        generate_cohorts(dataclasses.replace(DEMO, findings=["mitoses"]))


def test_pathtrail_validate_checks_the_label_columns_it_is_given(demo, capsys):
    from pathtrail.cli.validate import validate_command

    root, _, manifests = demo
    frame = manifests["internal"].astype(dict.fromkeys(FINDINGS, object))
    frame.loc[0, "fibrosis"] = "2"
    manifest = root / "cli_manifest.csv"
    frame.to_csv(manifest, index=False)
    args = ["--internal", str(manifest), "--data-root", str(root), "--classes", "benign,tumour",
            "--min-per-class", "1", "--workers", "1"]
    assert validate_command(args) == 0  # without label columns: extra columns, kept
    capsys.readouterr()
    assert validate_command([*args, "--label-columns", ",".join(FINDINGS)]) == 1
    out = capsys.readouterr().out
    assert "label_not_binary" in out and "'fibrosis' holds '2'" in out
