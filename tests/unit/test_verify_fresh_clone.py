"""`pathtrail verify` on a fresh clone (git brings everything but the outputs DVC caches): one line
first says what to run (`dvc pull` when a DVC remote is configured, else `make repro`), the
problems about those missing files are counted instead of listed, and the exit status is 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from fake_pipeline import dvc, fake_tree, git
from pathtrail.cli.main import main
from pathtrail.review.verify import verify


@pytest.fixture
def tree(tmp_path, tmp_path_factory) -> Path:
    root = fake_tree(tmp_path / "repo", tmp_path_factory)
    git("add", "-A", cwd=root)
    git("commit", "-q", "-m", "the card", cwd=root)
    return root


def clone(tree: Path, dest: Path) -> Path:
    git("clone", "-q", str(tree), str(dest), cwd=tree.parent)
    return dest


def run_verify(root: Path, capsys) -> tuple[int, list[str]]:
    code = main(["verify", "--root", str(root)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out.splitlines()


def test_without_a_remote_the_line_says_make_repro(tree, tmp_path, capsys):
    code, lines = run_verify(clone(tree, tmp_path / "clone"), capsys)
    assert code == 1
    assert lines[1].startswith("None of the ") and "outputs that DVC tracks is here" in lines[1], lines
    assert "run `make repro` to rebuild them (no DVC remote is configured" in lines[1]
    assert "models/model.pt" in lines[1] or "and " in lines[1]
    listed = [ln for ln in lines if ln.startswith("    - ")]
    assert not [ln for ln in listed if "missing" in ln or "deleted since dvc.lock" in ln], listed
    assert lines[-1].startswith("RESULT: FAIL (") and "about missing DVC outputs: see the first line" in lines[-1]


def test_with_a_remote_the_line_says_dvc_pull_and_pulling_makes_it_pass(tree, tmp_path, capsys):
    dvc("remote", "add", "-d", "storage", str(tmp_path / "dvc-remote"), cwd=tree)
    dvc("push", "-q", cwd=tree)
    git("commit", "-q", "-am", "a DVC remote", cwd=tree)
    fresh = clone(tree, tmp_path / "clone")
    code, lines = run_verify(fresh, capsys)
    assert code == 1
    assert "run `dvc pull` to fetch them from the DVC remote 'storage'" in lines[1], lines
    dvc("pull", "-q", cwd=fresh)
    report = verify(fresh)
    assert report.ok and report.hint is None, report.problems


def test_one_missing_output_is_listed_not_summarised(tree):
    (tree / "models/model.pt").unlink()
    report = verify(tree, checks=("artifacts",))
    assert report.hint is None
    assert any(p.startswith("models/model.pt (stage train") and "missing" in p for p in report.problems)
