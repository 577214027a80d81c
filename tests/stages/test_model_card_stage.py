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
    start, end = entries[-2:]
    assert (start["stage"], start["action"], end["action"], end["outcome"]) == (
        "model_card",
        "start",
        "end",
        "ok",
    )
    card = json.loads((tree / f"model_cards/{CARD}.json").read_text())
    evaluate_end = entries[-3]
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
    before, n = outputs(tree), len(audit.read_entries(tree / TRAIL))
    run_card_stage(tree)
    assert outputs(tree) == before
    assert len(audit.read_entries(tree / TRAIL)) == n + 2  # a second model_card run was recorded


def test_a_dirty_tree_gives_a_draft(tree):
    (tree / "notes.txt").write_text("uncommitted\n")
    run_card_stage(tree)
    card = json.loads((tree / f"model_cards/{CARD}.json").read_text())
    assert card["release_status"] == DRAFT and card["provenance"]["git_modified"] == ["notes.txt"]
    md = (tree / f"model_cards/{CARD}.md").read_text()
    assert f"> **{DRAFT}**" in md and "uncommitted changes: notes.txt" in md


def test_a_missing_input_is_a_clean_error(tree, capsys):
    (tree / "metrics/eval.json").unlink()
    n = len(audit.read_entries(tree / TRAIL))
    with pytest.raises(SystemExit) as exc:
        run_card_stage(tree)
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "metrics/eval.json" in err and "dvc repro" in err
    assert len(audit.read_entries(tree / TRAIL)) == n  # nothing was started
