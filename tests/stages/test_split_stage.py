"""Stage split: `main([...])` in tmp_path on the validated table of a tiny PIL-made dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from stages.split import main
from test_validate_stage import setup

from pathtrail.core.files import read_table
from stages import validate


def split_args(tmp_path: Path) -> list[str]:
    return ["--params", "params.yaml", "--trail", str(tmp_path / "trail.jsonl"),
            "--log-file", str(tmp_path / "logs/split.jsonl")]


@pytest.fixture
def validated(tmp_path, monkeypatch) -> list[str]:
    validate.main(setup(tmp_path, monkeypatch, **{"data.split.val_fraction": 0.25,
                                                  "data.split.test_fraction": 0.25}))
    return split_args(tmp_path)


def test_writes_patient_disjoint_splits_and_report(tmp_path, validated):
    main(validated)
    source = read_table("data/validated/internal.csv")
    parts = {n: read_table(f"data/split/{n}.csv") for n in ("train", "val", "test")}
    for part in parts.values():
        assert list(part.columns) == list(source.columns)
        assert set(part["label"]) == {0, 1}
    patients = [set(p["patient_id"]) for p in parts.values()]
    assert sum(len(p) for p in patients) == len(set().union(*patients)) == 8
    assert sum(len(p) for p in parts.values()) == len(source)
    report = json.loads(Path("reports/split.json").read_text())
    assert report["seed"] == 7 and report["test_fraction"] == 0.25
    assert report["splits"]["train"]["patients"] == len(patients[0])
    assert report["splits"]["test"]["classes"]["tumour"]["patients"] >= 1
    first = {n: Path(f"data/split/{n}.csv").read_bytes() for n in parts}
    main(validated)  # deterministic: same bytes again
    assert first == {n: Path(f"data/split/{n}.csv").read_bytes() for n in parts}


def test_refuses_impossible_split_and_writes_nothing(tmp_path, validated, capsys):
    table = read_table("data/validated/internal.csv")
    keep = table[(table["label"] == 0) | table["patient_id"].isin(["iP1", "iP3"])]
    keep.to_csv("data/validated/internal.csv", index=False)
    with pytest.raises(SystemExit) as info:
        main(validated)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "too few patients per class" in err and "'tumour' (2)" in err and "Traceback" not in err
    assert not Path("data/split").exists() and not Path("reports/split.json").exists()


def test_rejects_an_edited_table(tmp_path, validated, capsys):
    table = read_table("data/validated/internal.csv")
    table.loc[4, "label"] = 5
    table.to_csv("data/validated/internal.csv", index=False)
    with pytest.raises(SystemExit):
        main(validated)
    err = capsys.readouterr().err
    assert "line 6, column 'label'" in err and "validate stage" in err
