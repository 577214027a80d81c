"""Stage model_card: run on a fake pipeline tree (a git + DVC repo with tiny outputs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from fake_pipeline import CARD, TRAIL, fake_tree, run_card_stage
from pathtrail.card.values import DRAFT, RELEASE_CANDIDATE
from pathtrail.core.hashing import sha256_path
from pathtrail.provenance import audit


@pytest.fixture
def tree(tmp_path, tmp_path_factory) -> Path:
    return fake_tree(tmp_path / "repo", tmp_path_factory)


def outputs(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted((root / "model_cards").rglob("*"))
        if p.is_file()
    }


def test_the_stage_writes_card_json_markdown_and_figures(tree):
    files = outputs(tree)
    assert {
        f"model_cards/{CARD}.md",
        f"model_cards/{CARD}.json",
        "model_cards/figures/training_curves.png",
        "model_cards/figures/stain_before_after.png",
        "model_cards/figures/compile_check_loss.png",
        "model_cards/figures/eval/roc_external.png",
    } <= set(files)
    card = json.loads(files[f"model_cards/{CARD}.json"])
    assert card["release_status"] == RELEASE_CANDIDATE, card["release_reasons"]
    assert card["environment"]["torch_version"] == torch.__version__
    assert card["provenance"]["model_sha256"] == sha256_path(tree / "models/model.pt")
    assert card["figures"]["figures/training_curves.png"] == sha256_path(
        tree / "model_cards/figures/training_curves.png"
    )
    assert set(card["provenance"]["dvc_lock"]) == {
        "validate",
        "split",
        "stain_fit",
        "normalize",
        "train",
        "compile_check",
        "evaluate",
    }
    hf = ModelCard.load(tree / f"model_cards/{CARD}.md")
    assert hf.data.eval_results


def test_the_stage_records_one_audit_run_and_the_pipeline_head(tree):
    entries = audit.read_entries(tree / TRAIL)
    start, criteria, end = entries[-3:]
    assert (start["stage"], start["action"], criteria["action"], end["action"], end["outcome"]) == (
        "model_card",
        "start",
        "release_criteria",
        "end",
        "ok",
    )
    card = json.loads((tree / f"model_cards/{CARD}.json").read_text())
    release = json.loads((tree / "metrics/release.json").read_text())
    assert criteria["passed"] is True and criteria["criteria"] == release["criteria"]
    assert release["status"] == card["release_status"] and set(release["criteria"]) == set(card["release"]["results"])
    evaluate_end = entries[-4]
    assert (
        evaluate_end["stage"] == "evaluate"
        and card["audit"]["chain_head"] == evaluate_end["entry_hash"]
    )
    assert end["outputs"][f"model_cards/{CARD}.json"] == sha256_path(
        tree / f"model_cards/{CARD}.json"
    )
    assert start["inputs"]["metrics/eval.json"] == sha256_path(tree / "metrics/eval.json")
    assert end["facts"]["release_status"] == RELEASE_CANDIDATE


def test_rerunning_the_stage_gives_identical_bytes(tree):
    run_card_stage(tree)  # the template's card was built before its dvc.lock entry: git's state differs
    before, n = outputs(tree), len(audit.read_entries(tree / TRAIL))
    run_card_stage(tree)
    assert outputs(tree) == before
    assert len(audit.read_entries(tree / TRAIL)) == n + 3  # a second model_card run was recorded


def test_a_dirty_tree_gives_a_draft(tree):
    (tree / "src/pathtrail").mkdir(parents=True)
    (tree / "src/pathtrail/extra.py").write_text("x = 1\n")  # untracked code counts as source
    run_card_stage(tree)
    card = json.loads((tree / f"model_cards/{CARD}.json").read_text())
    assert card["release_status"] == DRAFT and card["provenance"]["git_modified"] == ["src/pathtrail/extra.py"]
    md = (tree / f"model_cards/{CARD}.md").read_text()
    assert f"> **{DRAFT}**" in md and "source differs from its commit: src/pathtrail/extra.py" in md


def test_data_and_notes_outside_the_code_folders_do_not_make_a_draft(tree):
    """Dirty means source: a user's cohort dropped under the repository, or notes, leave the status
    alone, but the card still reports git's own count of changed paths."""
    for i in range(30):
        (tree / "my_cohort" / f"p{i}.png").parent.mkdir(exist_ok=True)
        (tree / "my_cohort" / f"p{i}.png").write_bytes(b"x")
    (tree / "notes.txt").write_text("uncommitted\n")
    (tree / "dvc_plots").mkdir()
    (tree / "dvc_plots/index.html").write_text("<html></html>")
    run_card_stage(tree)
    card = json.loads((tree / f"model_cards/{CARD}.json").read_text())
    prov = card["provenance"]
    assert card["release_status"] == RELEASE_CANDIDATE and prov["git_dirty"] is False and prov["git_modified"] == []
    import git

    status = git.Repo(tree).git.status("--porcelain", "--untracked-files=all").splitlines()
    assert prov["git_n_changed"] == len(status) >= 32  # what git itself reports
    assert "notes.txt" in prov["git_changed"]


def test_tracked_output_changes_are_reported_but_do_not_make_a_draft(tree):
    (tree / "reports/split.json").write_text((tree / "reports/split.json").read_text() + "\n")
    run_card_stage(tree)
    card = json.loads((tree / f"model_cards/{CARD}.json").read_text())
    assert card["provenance"]["git_dirty"] is False and "reports/split.json" in card["provenance"]["git_changed"]
    md = (tree / f"model_cards/{CARD}.md").read_text()
    assert "source clean" in md and f"git reports {card['provenance']['git_n_changed']} changed paths" in md


def test_a_missing_input_is_a_clean_error(tree, capsys):
    (tree / "metrics/eval.json").unlink()
    n = len(audit.read_entries(tree / TRAIL))
    with pytest.raises(SystemExit) as exc:
        run_card_stage(tree)
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "metrics/eval.json" in err and "dvc repro" in err
    assert len(audit.read_entries(tree / TRAIL)) == n  # nothing was started
