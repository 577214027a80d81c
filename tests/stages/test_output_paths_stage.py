"""Stage validate's path options checked before any work: `--out-dir .` never deletes the
repository, and a failed run with `--out-dir data` never deletes the images under data/my."""

from __future__ import annotations

from pathlib import Path

import pytest
from stages.validate import main
from test_validate_stage import make_dataset

from conftest import tiny_params, write_params


def repo_with_data(tmp_path: Path, root: str) -> list[str]:
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git/HEAD").write_text("ref: refs/heads/main\n")
    make_dataset(tmp_path / root)
    params = tiny_params(tmp_path, **{
        "data.data_root": root, "data.internal_manifest": f"{root}/internal.csv",
        "data.external_manifest": f"{root}/external.csv", "data.patch_size": 16, "data.min_per_class": 2})
    write_params(tmp_path, params).rename(tmp_path / "my.yaml")
    return ["--params", "my.yaml", "--trail", "trail.jsonl", "--log-file", "validate.jsonl"]


def images(tmp_path: Path) -> set[str]:
    return {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")}


def test_out_dir_dot_is_refused_and_the_repository_kept(tmp_path, capsys):
    args = repo_with_data(tmp_path, "raw")
    before = images(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main([*args, "--out-dir", "."])
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert "--out-dir '.' is the working directory (the repository) itself; nothing was written" in err
    assert (tmp_path / ".git/HEAD").is_file() and images(tmp_path) == before and (tmp_path / "my.yaml").is_file()
    assert not (tmp_path / "trail.jsonl").exists() and not list(tmp_path.glob(".*.staging"))


def test_a_failed_run_with_out_dir_holding_the_data_keeps_the_images(tmp_path, capsys):
    args = repo_with_data(tmp_path, "data/my")
    next(iter((tmp_path / "data/my/internal").glob("*.png"))).unlink()  # the run would fail
    before = images(tmp_path)
    with pytest.raises(SystemExit):
        main([*args, "--out-dir", "data"])
    assert "--out-dir 'data' holds an input of the stage" in capsys.readouterr().err
    assert images(tmp_path) == before and (tmp_path / "data/my/internal.csv").is_file()


def test_a_failure_report_over_a_manifest_is_refused(tmp_path, capsys):
    args = repo_with_data(tmp_path, "raw")
    manifest = (tmp_path / "raw/internal.csv").read_bytes()
    next(iter((tmp_path / "raw/internal").glob("*.png"))).unlink()  # the run would fail
    with pytest.raises(SystemExit):
        main([*args, "--failure-report", "raw/internal.csv"])
    assert "--failure-report 'raw/internal.csv' is also an input of the stage" in capsys.readouterr().err
    assert (tmp_path / "raw/internal.csv").read_bytes() == manifest
