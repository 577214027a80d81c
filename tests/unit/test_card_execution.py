"""`verify` ties the card's execution-contract record to the trail and the headline metric to the card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fake_pipeline import CARD, fake_tree
from pathtrail.core.files import write_json
from pathtrail.review.verify import verify

CARD_JSON = f"model_cards/{CARD}.json"


@pytest.fixture
def tree(tmp_path, tmp_path_factory) -> Path:
    return fake_tree(tmp_path / "repo", tmp_path_factory)


def test_the_fake_pipeline_records_an_honoured_contract(tree):
    card = json.loads((tree / CARD_JSON).read_text())
    execution = card["environment"]["execution"]
    assert execution["honoured"] is True and execution["stages"]["train"]["threads"] == 1
    headline = json.loads((tree / "metrics/headline.json").read_text())
    assert headline["status"] == card["release_status"]
    assert verify(tree, checks=("card",)).problems == []


def test_an_edited_execution_record_is_found(tree):
    card = json.loads((tree / CARD_JSON).read_text())
    card["environment"]["execution"]["stages"]["train"]["threads"] = 16
    write_json(card, tree / CARD_JSON)
    found = verify(tree, checks=("card",)).problems
    assert any("card field environment.execution" in p and "train.threads 16 (trail 1)" in p for p in found)
    card["environment"]["execution"] = "honoured"
    write_json(card, tree / CARD_JSON)
    found = verify(tree, checks=("card",)).problems
    assert any("card field environment.execution is str, not the per-stage record" in p for p in found)


def test_an_edited_headline_is_found(tree):
    path = tree / "metrics/headline.json"
    doc = json.loads(path.read_text())
    doc["external"]["auroc"] = 0.99
    write_json(doc, path)
    found = verify(tree, checks=("card",)).problems
    assert any("metrics/headline.json does not hold the card's values" in p for p in found)


def test_a_runtime_knob_changed_after_the_card_keeps_verify_passing(tree):
    """Runtime knobs change no result: the card, the trail and dvc.lock still agree with params.yaml."""
    import yaml

    params = yaml.safe_load((tree / "params.yaml").read_text())
    params["runtime"]["num_workers"] = 0
    params["runtime"]["log_level"] = "debug"
    (tree / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert verify(tree).problems == []
    params["train"]["epochs"] += 1  # a result param is still caught
    (tree / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert any("train.epochs" in p for p in verify(tree, checks=("card",)).problems)
