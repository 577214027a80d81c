"""Stage split: `main([...])` in tmp_path on the validated table of a tiny PIL-made dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
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
    assert report["grouping"] == {"keys": ["patient_id", "slide_id", "sha256"], "groups": 8,
                                  "groups_with_several_patients": 0,
                                  "crossing_splits": {"patient_id": 0, "slide_id": 0, "sha256": 0}}
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


def test_an_image_under_two_patients_stops_validate_unless_merged_then_shares_a_split(
        tmp_path, monkeypatch, capsys):
    args = setup(tmp_path, monkeypatch, **{"data.split.val_fraction": 0.25,
                                           "data.split.test_fraction": 0.25})
    shutil.copyfile("raw/internal/iP0_0.png", "raw/internal/iP2_1.png")  # both benign
    with pytest.raises(SystemExit) as info:
        validate.main(args)
    err = capsys.readouterr().err
    assert info.value.code == 1 and "Traceback" not in err
    assert "duplicate_content_patients" in err and "'internal/iP2_1.png'" in err
    assert not Path("data/validated").exists()

    args = setup(tmp_path, monkeypatch, **{"data.split.val_fraction": 0.25,
                                           "data.split.test_fraction": 0.25,
                                           "data.duplicate_content": "merge"})
    shutil.copyfile("raw/internal/iP0_0.png", "raw/internal/iP2_1.png")
    validate.main(args)
    for seed in range(4):
        params = yaml.safe_load(Path("params.yaml").read_text())
        params["data"]["split"]["seed"] = seed
        Path("params.yaml").write_text(yaml.safe_dump(params))
        main(split_args(tmp_path))
        homes = [n for n in ("train", "val", "test")
                 if {"iP0", "iP2"} & set(read_table(f"data/split/{n}.csv")["patient_id"])]
        assert len(homes) == 1, f"seed {seed}: the copies' patients are in {homes}"
        report = json.loads(Path("reports/split.json").read_text())["grouping"]
        assert report["groups"] == 7 and report["groups_with_several_patients"] == 1
        assert report["crossing_splits"] == {"patient_id": 0, "slide_id": 0, "sha256": 0}
