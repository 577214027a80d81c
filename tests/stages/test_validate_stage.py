"""Stage validate: `main([...])` in tmp_path on a tiny PIL-made dataset."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from stages.validate import main

from conftest import tiny_params, write_params
from pathtrail.core.files import read_table
from pathtrail.provenance.audit import read_entries

SIZE = 16


def make_dataset(root: Path, n_internal: int = 8, n_external: int = 4, patches: int = 3) -> None:
    """internal (two sites) and external cohorts of 16x16 patches, labels as names or indices."""
    rng = np.random.default_rng(0)
    for cohort, n, sites in (("internal", n_internal, ["site_a", "site_b"]),
                             ("external", n_external, ["site_c"])):
        rows = []
        for p in range(n):
            pid = f"{cohort[0]}P{p}"
            for k in range(patches):
                rel = f"{cohort}/{pid}_{k}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                pixels = rng.integers(80, 200, (SIZE, SIZE, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / rel)
                label = ["benign", "1"][p % 2]
                rows.append([rel, label, pid, f"{pid}-S{k % 2}", sites[p % len(sites)], "A"])
        frame = pd.DataFrame(rows, columns=["path", "label", "patient_id", "slide_id", "site",
                                            "scanner"])
        frame.sample(frac=1, random_state=1).to_csv(root / f"{cohort}.csv", index=False)


def setup(tmp_path: Path, monkeypatch, **overrides) -> list[str]:
    monkeypatch.chdir(tmp_path)
    make_dataset(tmp_path / "raw")
    params = tiny_params(tmp_path, **{
        "data.data_root": "raw", "data.internal_manifest": "raw/internal.csv",
        "data.external_manifest": "raw/external.csv", "data.patch_size": SIZE,
        "data.min_per_class": 2, **overrides})
    write_params(tmp_path, params)
    return ["--params", "params.yaml", "--trail", str(tmp_path / "trail.jsonl"),
            "--log-file", str(tmp_path / "logs/validate.jsonl")]


def test_writes_validated_tables_and_report(tmp_path, monkeypatch):
    args = setup(tmp_path, monkeypatch)
    main(args)
    table = read_table("data/validated/internal.csv")
    assert list(table.columns) == ["path", "label", "patient_id", "slide_id", "site", "sha256",
                                   "scanner"]
    assert len(table) == 24 and table["path"].is_monotonic_increasing
    assert set(table["label"]) == {0, 1} and table["label"].dtype == "int64"
    first = table.iloc[0]
    content = (tmp_path / "raw" / first["path"]).read_bytes()
    assert first["sha256"] == hashlib.sha256(content).hexdigest()
    assert len(read_table("data/validated/external.csv")) == 12
    report = json.loads(Path("reports/validation.json").read_text())
    assert report["status"] == "ok"
    assert report["cohorts"]["internal"]["sites"] == {"site_a": 12, "site_b": 12}
    assert report["cohorts"]["internal"]["extra_columns"]["scanner"]["values"] == {"A": 24}
    start, end = read_entries(tmp_path / "trail.jsonl")
    assert start["inputs"].keys() == {"raw/internal.csv", "raw/external.csv", "raw"}
    assert end["outcome"] == "ok"
    assert end["outputs"].keys() == {"data/validated", "reports/validation.json"}


def test_external_cohort_is_optional(tmp_path, monkeypatch):
    main(setup(tmp_path, monkeypatch, **{"data.external_manifest": None}))
    assert sorted(p.name for p in Path("data/validated").iterdir()) == ["internal.csv"]


def test_errors_fail_the_stage_and_write_nothing(tmp_path, monkeypatch, capsys):
    args = setup(tmp_path, monkeypatch)
    main(args)  # a good run first: its outputs must not survive a failed one
    (tmp_path / "raw/internal/iP0_1.png").write_bytes(b"")
    with pytest.raises(SystemExit) as info:
        main([*args, "--failure-report", "review/failed.json"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "[file_empty]" in err and "internal/iP0_1.png" in err
    assert "line " in err and "fix:" in err
    assert not Path("data/validated").exists() and not Path("reports/validation.json").exists()
    assert json.loads(Path("review/failed.json").read_text())["status"] == "failed"
    assert read_entries(tmp_path / "trail.jsonl")[-1]["outcome"] == "failed"


def test_bad_params_fail_cleanly(tmp_path, monkeypatch, capsys):
    args = setup(tmp_path, monkeypatch, **{"data.mode_policy": "maybe"})
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 1
    assert "data.mode_policy" in capsys.readouterr().err
