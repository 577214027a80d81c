"""Sharing artifacts through a DVC remote (README, "Sharing artifacts").

The repository's own `.dvc/config` (a `shared` folder remote beside the repository) and Makefile
targets, on a fake pipeline tree: push, a fresh clone, pull, and `pathtrail verify` passes without
any stage running. The S3 team setup is checked as far as it goes without a server: where each
setting is written, and that no credential reaches a tracked file.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tomllib
from pathlib import Path

import pytest

from fake_pipeline import TRAIL, fake_tree
from pathtrail.cli.main import main
from tiny_repo import REPO, commit_all, dvc, git, run


def make(root: Path, *args: str):
    """`make ARGS` with this test run's environment as the venv (never bootstrapping a new one)."""
    venv = Path(sys.prefix)
    return run("make", "-s", "-C", str(root), f"VENV={venv}", "-o", str(venv / ".installed"), *args, cwd=root)


@pytest.fixture
def team(tmp_path, tmp_path_factory) -> Path:
    """A repository with pipeline outputs, using the repository's DVC config and Makefile."""
    root = fake_tree(tmp_path / "team" / "repo", tmp_path_factory)
    shutil.copy(REPO / ".dvc/config", root / ".dvc/config")
    shutil.copy(REPO / "Makefile", root / "Makefile")
    commit_all(root, "outputs, card, DVC remote")
    return root


def test_the_default_remote_is_a_folder_beside_the_repository(team):
    from dvc.repo import Repo

    with Repo(str(team)) as repo:  # DVC resolves a relative url from the .dvc/ folder
        assert repo.config["remote"]["shared"]["url"] == str(team.parent / "pathtrail-dvc-remote")
    assert dvc("remote", "default", cwd=team).stdout.strip() == "shared"


def test_push_clone_pull_verifies_without_running_a_stage(team, capsys):
    make(team, "push")
    store = team.parent / "pathtrail-dvc-remote"
    assert any((store / "files" / "md5").rglob("*")), "make push wrote nothing to the shared remote"
    clone = team.parent / "clone"
    git("clone", "-q", str(team), str(clone), cwd=team.parent)
    assert not (clone / "models/model.pt").exists()  # DVC-cached outputs are not in git
    assert main(["verify", "--root", str(clone)]) == 1
    capsys.readouterr()
    trail = (clone / TRAIL).read_text()
    make(clone, "pull")  # the clone's relative url names the same sibling folder
    assert (clone / "models/model.pt").read_bytes() == (team / "models/model.pt").read_bytes()
    assert main(["verify", "--root", str(clone)]) == 0, capsys.readouterr().out
    assert (clone / TRAIL).read_text() == trail  # no stage ran: the trail has no new entry
    assert git("status", "--porcelain", cwd=clone) == ""
    status = dvc("status", "--json", cwd=clone).stdout.strip()
    assert status == "{}"  # nothing for `dvc repro` to run either


def test_make_push_takes_a_remote_by_name_and_the_default_moves_locally(team, tmp_path):
    dvc("remote", "add", "--local", "elsewhere", str(tmp_path / "elsewhere"), cwd=team)
    make(team, "push", "REMOTE=elsewhere")
    assert any((tmp_path / "elsewhere" / "files" / "md5").rglob("*"))
    dvc("remote", "modify", "--local", "shared", "url", str(tmp_path / "moved"), cwd=team)
    make(team, "push")
    assert any((tmp_path / "moved" / "files" / "md5").rglob("*"))
    assert not (team.parent / "pathtrail-dvc-remote").exists()
    assert git("status", "--porcelain", cwd=team) == ""  # both went to the ignored config.local


def test_a_changed_dvc_config_is_source(team):
    from pathtrail.provenance.environment import git_state

    dvc("remote", "add", "-d", "team", "s3://my-bucket/pathtrail", cwd=team)
    state = git_state(team)
    assert state.dirty and state.modified == [".dvc/config"]  # the card would be a DRAFT


def test_the_s3_team_setup_keeps_credentials_out_of_the_repository(team):
    dvc("remote", "add", "-d", "team", "s3://my-bucket/pathtrail", cwd=team)
    dvc("remote", "modify", "team", "endpointurl", "https://minio.example.org", cwd=team)
    dvc("remote", "modify", "--local", "team", "access_key_id", "AKIAEXAMPLEKEY", cwd=team)
    dvc("remote", "modify", "--local", "team", "secret_access_key", "example-secret", cwd=team)
    config = (team / ".dvc/config").read_text()
    assert "s3://my-bucket/pathtrail" in config and "https://minio.example.org" in config
    assert "AKIAEXAMPLEKEY" not in config and "example-secret" not in config
    assert "example-secret" in (team / ".dvc/config.local").read_text()
    assert git("status", "--porcelain", cwd=team) == "M .dvc/config"  # config.local is ignored
    if importlib.util.find_spec("dvc_s3") is None:  # without the extra, DVC says what to install
        done = dvc("push", cwd=team, check=False)
        assert done.returncode != 0 and "requires 'dvc-s3' to be installed" in done.stderr


def test_the_s3_plugin_is_an_optional_pinned_extra_outside_the_lock():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["optional-dependencies"]["s3"] == ["dvc-s3==3.3.0"]
    assert not any(d.startswith("dvc-s3") for d in project["dependencies"])
    locked = {line.split("==")[0].lower() for line in (REPO / "requirements.lock").read_text().splitlines()}
    assert not locked & {"dvc-s3", "s3fs", "boto3", "botocore", "aiobotocore"}
