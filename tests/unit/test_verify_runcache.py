"""`pathtrail verify` is content-addressed: outputs that DVC restores from its run-cache (no stage
runs, nothing is appended to the trail) pass when they match an earlier recorded run that read the
present inputs and params, and the report names that run; a mix of runs fails and says why.

A tiny real DVC pipeline (train → evaluate, each a few lines using `audit.stage`) is run with
params A, then B, then params.yaml is put back to A and `dvc repro` restores A's outputs. The card
checks are tested on the fake pipeline tree, whose files are copied back as the run-cache would.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from fake_pipeline import EVAL, TRAIL, cohort, dvc, fake_tree, git, run_card_stage, write_outputs
from pathtrail.core.files import write_json
from pathtrail.core.hashing import sha256_path
from pathtrail.provenance import audit
from pathtrail.review.verify import format_report, verify

STAGE_PY = '''
import json, sys
from pathlib import Path
import yaml
from pathtrail.core.hashing import digest, sha256_path
from pathtrail.provenance import audit

stage, params = sys.argv[1], yaml.safe_load(Path("params.yaml").read_text())
if stage == "train":
    with audit.stage("train", inputs=["data.txt"], params={"train": params["train"]}, trail="audit/trail.jsonl") as rec:
        Path("models").mkdir(exist_ok=True)
        Path("models/model.bin").write_text(f"lr={params['train']['lr']}\\n" + Path("data.txt").read_text())
        rec.outputs("models/model.bin")
else:
    with audit.stage("evaluate", inputs=["models/model.bin"], params={"eval": params["eval"]},
                     trail="audit/trail.jsonl") as rec:
        if params["eval"]["lock"]:
            rec.record("threshold_locked", threshold=0.5, threshold_rule="fixed")
            rec.record("criteria_locked", criteria={}, criteria_sha256=digest({}))
        rec.note(threshold=0.5)
        Path("metrics").mkdir(exist_ok=True)
        Path("metrics/eval.json").write_text(json.dumps({"model": sha256_path("models/model.bin")}))
        rec.outputs("metrics/eval.json")
'''
CHECKS = ("audit", "artifacts", "dvc")


def write_params(root: Path, lr: float, lock: bool = True) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump({"train": {"lr": lr}, "eval": {"lock": lock}}))


def build(root: Path) -> Path:
    """A git + DVC repository whose two stages have run with params A (train.lr 0.1), committed."""
    root.mkdir()
    (root / "stage.py").write_text(textwrap.dedent(STAGE_PY))
    (root / "data.txt").write_text("some training data\n")
    write_params(root, 0.1)
    python = sys.executable
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "train": {"cmd": f"{python} stage.py train", "deps": ["stage.py", "data.txt"], "params": ["train"],
                  "outs": ["models/model.bin"]},
        "evaluate": {"cmd": f"{python} stage.py evaluate", "deps": ["stage.py", "models/model.bin"],
                     "params": ["eval"], "metrics": [{"metrics/eval.json": {"cache": False}}]},
    }}))
    git("init", "-q", "-b", "main", cwd=root)
    dvc("init", "-q", cwd=root)
    git("add", "-A", cwd=root)
    git("commit", "-q", "-m", "pipeline", cwd=root)
    dvc("repro", "-q", cwd=root)
    git("add", "-A", cwd=root)
    git("commit", "-q", "-m", "run A", cwd=root)
    return root


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict[str, Path]:
    """Built once: "a" (run A committed) and "ab" (then experiment B run in the workspace)."""
    base = tmp_path_factory.mktemp("runcache")
    a = build(base / "a")
    ab = base / "ab"
    shutil.copytree(a, ab, symlinks=True)
    experiment_b(ab)
    return {"a": a, "ab": ab}


def copy_of(templates: dict[str, Path], name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(templates[name], tmp_path / name, symlinks=True))


def runs_of(root: Path, stage: str) -> list[dict]:
    return [e for e in audit.read_entries(root / TRAIL)
            if e.get("stage") == stage and e.get("action") == "end" and e.get("outcome") == "ok"]


def experiment_b(root: Path, lock: bool = True) -> None:
    write_params(root, 0.2, lock)
    dvc("repro", "-q", cwd=root)


def test_outputs_restored_from_the_run_cache_pass_and_name_their_run(templates, tmp_path):
    pipeline = copy_of(templates, "ab", tmp_path)
    a_train, a_eval = runs_of(pipeline, "train")[0], runs_of(pipeline, "evaluate")[0]
    assert verify(pipeline, checks=CHECKS).ok
    entries = len(audit.read_entries(pipeline / TRAIL))
    git("checkout", "--", "params.yaml", cwd=pipeline)
    dvc("repro", "-q", cwd=pipeline)  # A's outputs come back from the run-cache; no stage runs
    assert len(audit.read_entries(pipeline / TRAIL)) == entries
    assert sha256_path(pipeline / "metrics/eval.json") == a_eval["outputs"]["metrics/eval.json"]
    report = verify(pipeline, checks=CHECKS)
    assert report.ok, report.problems
    notes = [n for c in report.checks if c.name == "artifacts" for n in c.notes]
    for stage, run in (("train", a_train), ("evaluate", a_eval)):
        assert any(n.startswith(f"{stage}: outputs match run seq {run['seq']} ({run['time'][:16]}Z)")
                   and "restored by DVC's run-cache" in n for n in notes), notes
    assert "restored by DVC's run-cache" in format_report(report)


def test_a_mix_of_runs_fails_and_names_the_input_that_differs(templates, tmp_path):
    """train's outputs from run A, evaluate's from run B (which consumed B's model)."""
    pipeline = copy_of(templates, "ab", tmp_path)
    a_train = runs_of(pipeline, "train")[0]
    b_eval = runs_of(pipeline, "evaluate")[-1]
    shutil.copy(pipeline / "metrics/eval.json", tmp_path / "eval-b.json")
    git("checkout", "--", "params.yaml", cwd=pipeline)
    dvc("repro", "-q", cwd=pipeline)
    (pipeline / "metrics/eval.json").unlink()
    shutil.copy(tmp_path / "eval-b.json", pipeline / "metrics/eval.json")
    found = verify(pipeline, checks=("artifacts",)).problems
    assert len(found) == 1, found
    assert found[0].startswith(f"stage evaluate: its outputs match run seq {b_eval['seq']} (")
    assert "but that run read models/model.bin with sha256" in found[0]
    assert f"(written by train run seq {a_train['seq']} (" in found[0]
    assert "Rerun `dvc repro evaluate`" in found[0]


def test_outputs_of_other_params_fail_and_name_the_param(templates, tmp_path):
    pipeline = copy_of(templates, "ab", tmp_path)
    git("checkout", "--", "params.yaml", cwd=pipeline)  # no repro: B's outputs with A's params
    found = verify(pipeline, checks=("artifacts",)).problems
    assert any(p.startswith("stage train: its outputs match run seq")
               and "used train.lr = 0.2, and params.yaml now has 0.1" in p for p in found), found


def test_the_threshold_ordering_is_checked_on_the_run_whose_outputs_are_present(templates, tmp_path):
    pipeline = copy_of(templates, "a", tmp_path)
    experiment_b(pipeline, lock=False)  # B's evaluate locks no threshold
    assert any("no threshold_locked entry" in p for p in verify(pipeline, checks=("audit",)).problems)
    git("checkout", "--", "params.yaml", cwd=pipeline)
    dvc("repro", "-q", cwd=pipeline)  # A's evaluate outputs, and A locked its threshold
    report = verify(pipeline, checks=("audit", "artifacts"))
    assert report.ok, report.problems


def test_a_rewritten_output_matching_no_run_still_fails_as_before(templates, tmp_path):
    pipeline = copy_of(templates, "ab", tmp_path)
    model = pipeline / "models/model.bin"
    model.unlink()
    model.write_text("forged weights\n")
    found = verify(pipeline, checks=("artifacts",)).problems
    assert any(p.startswith("models/model.bin (stage train, trail seq") and "sha256 is" in p for p in found)
    assert any(p.startswith("stage evaluate: its outputs match run seq") and "now has sha256" in p
               and "written by" not in p for p in found), found


# ------------------------------------------------------------------ the card, on the fake pipeline
def experiment_on_the_fake_tree(tree: Path) -> None:
    """Experiment B after the template's run A: train (another lr) and evaluate (which locks no
    threshold) run again with other outputs, and the card is rebuilt; dvc.lock records B."""
    params = yaml.safe_load((tree / "params.yaml").read_text())
    params["train"]["lr"] = 0.0123
    (tree / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with contextlib.chdir(tree):
        with audit.stage("train", inputs=[], params={s: params[s] for s in ("train", "model")}, trail=TRAIL) as rec:
            write_outputs(tree, "train", params)
            rec.outputs("models/model.pt", "metrics/train.json", "plots/train/epochs.csv")
        with audit.stage("evaluate", inputs=["models/model.pt"], params={s: params[s] for s in ("eval", "release")},
                         trail=TRAIL) as rec:
            write_json({**EVAL, "internal_test": cohort(0.95, patients=30)}, tree / "metrics/eval.json")
            rec.outputs("metrics/eval.json", "reports/figures/eval")
    dvc("commit", "-f", "-q", "train", "evaluate", cwd=tree)
    run_card_stage(tree)
    dvc("commit", "-f", "-q", "model_card", cwd=tree)


@pytest.fixture
def tree_a_then_b(tmp_path, tmp_path_factory) -> tuple[Path, Path]:
    """(the fake tree after experiment B, a copy of its files as run A left them)."""
    tree = fake_tree(tmp_path / "repo", tmp_path_factory)
    saved = Path(shutil.copytree(tree, tmp_path / "run-a", ignore=shutil.ignore_patterns(".git", ".dvc", "audit")))
    experiment_on_the_fake_tree(tree)
    return tree, saved


def test_a_restored_run_keeps_its_card_valid_and_is_checked_on_its_own_evaluate_run(tree_a_then_b):
    tree, saved = tree_a_then_b
    a_train = runs_of(tree, "train")[0]
    assert any("no threshold_locked entry" in p for p in verify(tree, checks=("audit",)).problems)
    shutil.copytree(saved, tree, dirs_exist_ok=True)  # what DVC's run-cache brings back for params A
    report = verify(tree)
    assert report.ok, report.problems
    notes = " ".join(n for c in report.checks for n in c.notes)
    assert f"train: outputs match run seq {a_train['seq']} (" in notes
    assert "model_card: outputs match run seq" in notes and "consistent" in notes


def test_outputs_of_run_a_under_the_card_of_run_b_fail(tree_a_then_b):
    tree, saved = tree_a_then_b
    a_train, b_train = runs_of(tree, "train")
    shutil.copytree(saved, tree, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("model_cards", "release.json"))  # the card stays B's
    found = verify(tree, checks=("card",)).problems
    assert any(f"the card describes stage train's run seq {b_train['seq']}, but the workspace holds the outputs "
               f"of its run seq {a_train['seq']} (" in p and "rebuild it (`dvc repro model_card`)" in p
               for p in found), found
