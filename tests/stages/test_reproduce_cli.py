"""`pathtrail reproduce` on a small real git + DVC repository (one stage, `dvc add`-tracked input).

Real git and real DVC; only the pipeline is small, so each run takes seconds. The demo pipeline
end to end is tests/stages/test_reproduce_pipeline.py (slow).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from pathtrail.cli.main import main
from pathtrail.core.hashing import sha256_file
from tiny_repo import dvc, git, run

SCORE = '''import json, os, sys
from pathlib import Path
scale = float(Path("params.yaml").read_text().split(":")[1])
values = [float(x) for x in Path("data/in.csv").read_text().split()[1:]]
with open(os.environ["TOY_RUNS"], "a") as f:  # who ran, and with what environment
    f.write(json.dumps({"cwd": os.getcwd(), "jobs": os.environ.get("PATHTRAIL_NUM_WORKERS"),
                        "trail": os.environ.get("PATHTRAIL_AUDIT_TRAIL"),
                        "pythonpath": os.environ.get("PYTHONPATH")}) + "\\n")
if os.environ.get("TOY_FAIL"):
    print("ERROR in stage 'score':", file=sys.stderr)
    print("the toy stage was told to fail", file=sys.stderr)
    sys.exit(3)
Path("out").mkdir(exist_ok=True)
Path("out/model.json").write_text(json.dumps({"w": [v * scale for v in values]}))
Path("metrics.json").write_text(json.dumps({"total": sum(values) * scale}))
'''
DVC_YAML = """stages:
  score:
    cmd: python score.py
    deps: [score.py, data/in.csv]
    params: [scale]
    outs: [out/model.json]
    metrics:
      - metrics.json:
          cache: false
"""


def _card(root: Path, commit: str) -> dict:
    import yaml

    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]["score"]
    return {
        "params": {"scale": 2},
        "provenance": {
            "git_commit": commit, "git_dirty": False, "upstream_dirty": [],
            "inputs": {p: sha256_file(root / p) for p in ("metrics.json", "out/model.json", "params.yaml")},
            "dvc_lock": {"score": {"outs": {o["path"]: o["md5"] for o in lock["outs"]}}},
        },
    }


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A user's repository: code + `dvc add`ed data at commit C1, `dvc repro` run, card committed."""
    root = tmp_path_factory.mktemp("toy") / "repo"
    root.mkdir()
    (root / "score.py").write_text(SCORE)
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "params.yaml").write_text("scale: 2\n")
    (root / "requirements.lock").write_text("")
    (root / "data").mkdir()
    (root / "data/in.csv").write_text("value\n1.5\n2.25\n")
    git("init", "-q", "-b", "main", cwd=root)
    dvc("init", "-q", cwd=root)
    dvc("add", "-q", "data/in.csv", cwd=root)
    git("add", "-A", cwd=root)
    git("commit", "-q", "-m", "toy pipeline", cwd=root)
    commit = git("rev-parse", "HEAD", cwd=root)
    runs = root.parent / "runs.jsonl"
    env_runs = {"TOY_RUNS": str(runs)}
    run("env", *(f"{k}={v}" for k, v in env_runs.items()), "python", "-m", "dvc", "repro", "-q", cwd=root)
    (root / "model_cards").mkdir()
    (root / "model_cards/toy.json").write_text(json.dumps(_card(root, commit), indent=2))
    git("add", "-A", cwd=root)
    git("commit", "-q", "-m", "outputs and card", cwd=root)
    return root


@pytest.fixture
def repo(template, tmp_path, monkeypatch):
    root = tmp_path / "repo"
    shutil.copytree(template, root, symlinks=True)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setenv("TOY_RUNS", str(tmp_path / "runs.jsonl"))
    return root


def runs(repo: Path) -> list[dict]:
    path = repo.parent / "runs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def reproduce(repo: Path, capsys, *args: str) -> tuple[int, str, str]:
    code = main(["reproduce", "--root", str(repo), *args])
    out, err = capsys.readouterr()
    return code, out, err


def rows(out: str) -> dict[str, list[str]]:
    return {cells[0]: cells for line in out.splitlines() if len(cells := line.split(None, 4)) == 5
            and cells[1] in ("sha256", "md5")}


def test_a_card_reproduces_in_a_worktree_that_leaves_the_users_tree_alone(repo, capsys):
    head, status = git("rev-parse", "HEAD", cwd=repo), git("status", "--porcelain", cwd=repo)
    cache = {p: p.stat().st_mtime_ns for p in (repo / ".dvc/cache").rglob("*")}
    code, out, err = reproduce(repo, capsys, "--jobs", "3")
    assert code == 0, out + err
    table = rows(out)
    assert set(table) == {"metrics.json", "out/model.json", "params.yaml"}
    assert all(r[4] == "identical" for r in table.values())
    assert "data from your DVC cache: data/in.csv.dvc" in out and "REPRODUCED" in out
    assert "params: the commit's params.yaml equals the card's params" in out
    assert "reproduce: running stage score" in err
    # the stage ran again, in the worktree (not restored from the user's run-cache), with the
    # worktree's src first, --jobs passed on, and no way to reach the user's audit trail
    (ran,) = runs(repo)
    assert ran["cwd"].endswith("/worktree") and not ran["cwd"].startswith(str(repo))
    assert ran["jobs"] == "3" and ran["trail"] is None and ran["pythonpath"] == f"{ran['cwd']}/src"
    # nothing of the user's changed, nothing left behind
    assert git("rev-parse", "HEAD", cwd=repo) == head and git("status", "--porcelain", cwd=repo) == status
    assert len(git("worktree", "list", cwd=repo).splitlines()) == 1
    assert list((repo.parent / "tmp").iterdir()) == []
    assert {p: p.stat().st_mtime_ns for p in (repo / ".dvc/cache").rglob("*")} == cache  # only read


def test_a_changed_result_is_reported_with_its_largest_difference(repo, capsys):
    card_path = repo / "model_cards/toy.json"
    card = json.loads(card_path.read_text())
    (repo / "metrics.json").write_text(json.dumps({"total": 7.5 + 0.5}))  # a forged metric ...
    card["provenance"]["inputs"]["metrics.json"] = sha256_file(repo / "metrics.json")  # ... and hash
    card_path.write_text(json.dumps(card))
    code, out, _ = reproduce(repo, capsys, "--card", "model_cards/toy.json")
    assert code == 1
    assert rows(out)["metrics.json"][4] == "differs (max |Δ| 0.5)"
    assert rows(out)["out/model.json"][4] == "identical"
    assert "3 artifacts: 2 identical, 1 differ" in out and out.rstrip().endswith("NOT REPRODUCED")


def test_keep_leaves_the_worktree_for_inspection(repo, capsys):
    code, out, _ = reproduce(repo, capsys, "--keep")
    assert code == 0
    (kept,) = list((repo.parent / "tmp").iterdir())
    assert f"worktree kept: {kept / 'worktree'}" in out
    assert (kept / "worktree/metrics.json").is_file() and (kept / "cache/files/md5").is_dir()
    git("worktree", "remove", "--force", str(kept / "worktree"), cwd=repo)


def test_a_failing_stage_is_named_with_its_log_and_nothing_is_printed(repo, capsys, monkeypatch):
    monkeypatch.setenv("TOY_FAIL", "1")
    code, out, err = reproduce(repo, capsys)
    assert code == 1 and out == ""
    line = err.splitlines()[-1]
    assert line.startswith("pathtrail: error: dvc repro failed in stage 'score' (exit ")
    assert "the toy stage was told to fail" in line and "rerun with --keep" in line
    log = Path(line.split("full log: ")[1].split(";")[0])
    assert "Running stage 'score'" in log.read_text() and "Traceback" not in err
    assert len(git("worktree", "list", cwd=repo).splitlines()) == 1


def test_data_missing_from_the_users_cache_is_named(repo, capsys):
    shutil.rmtree(repo / ".dvc/cache")
    code, out, err = reproduce(repo, capsys)
    assert code == 1 and out == ""
    assert "data/in.csv.dvc" in err and "is not all in your DVC cache" in err and "dvc fetch" in err


@pytest.mark.parametrize(("change", "message"), [
    ({"git_commit": "0" * 40}, "commit 0000000000000000000000000000000000000000 is not in this repository"),
    ({"git_dirty": True, "git_modified": ["score.py"]}, r"built from uncommitted source \(score.py\)"),
    ({"upstream_dirty": ["train (seq 8)"]}, r"built from uncommitted source \(train \(seq 8\)\)"),
    ({"git_commit": "HEAD"}, "provenance.git_commit is HEAD, not a commit"),
])
def test_a_card_that_cannot_be_reproduced_is_a_clear_error(repo, capsys, change, message):
    import re

    card_path = repo / "model_cards/toy.json"
    card = json.loads(card_path.read_text())
    card["provenance"].update(change)
    card_path.write_text(json.dumps(card))
    code, out, err = reproduce(repo, capsys)
    assert code == 1 and out == "" and re.search(message, err), err
    assert "Traceback" not in err and runs(repo) == []


def test_usage_errors_exit_2(repo, capsys):
    assert main(["reproduce", "--root", str(repo), "--jobs", "many"]) == 2
    assert "invalid int value" in capsys.readouterr().err


def test_the_card_must_exist(repo, capsys):
    code, out, err = reproduce(repo, capsys, "--card", "model_cards/nope.json")
    assert (code, out) == (1, "") and "--card model_cards/nope.json: no such file" in err
    code, _, err = reproduce(repo.parent / "tmp", capsys)
    assert code == 1 and "not the root of a DVC repository" in err
    (repo / "sub/.dvc").mkdir(parents=True)
    code, _, err = reproduce(repo / "sub", capsys)
    assert code == 1 and "not the top folder of a git repository" in err
