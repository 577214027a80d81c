"""The `pathtrail` command: exit statuses, readable output, no tracebacks for user errors."""

from __future__ import annotations

import json

import pytest

from fake_pipeline import TRAIL, fake_tree
from pathtrail.cli import validate as validation
from pathtrail.cli.main import main


@pytest.fixture
def tree(tmp_path, tmp_path_factory):
    return fake_tree(tmp_path / "repo", tmp_path_factory)


def test_verify_passes_on_an_untouched_tree(tree, capsys):
    assert main(["verify", "--root", str(tree)]) == 0
    out = capsys.readouterr().out
    assert "RESULT: PASS" in out and "[PASS] audit trail" in out


def test_verify_fails_and_names_the_file(tree, capsys):
    (tree / "metrics/train.json").write_text('{"best_epoch": 99}\n')
    assert main(["verify", "--root", str(tree)]) == 1
    out = capsys.readouterr().out
    assert "card field metrics.train.best_epoch = 2 but metrics/train.json has 99" in out
    assert "RESULT: FAIL" in out


def test_verify_on_a_missing_folder_is_a_clean_error(tmp_path, capsys):
    assert main(["verify", "--root", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert "no such folder" in err and "Traceback" not in err


def test_trail_timeline_filter_and_json(tree, capsys, monkeypatch):
    monkeypatch.chdir(tree)
    assert main(["trail"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["seq", "time", "(UTC)"]
    assert any(" train " in ln and " end " in ln and " ok " in ln for ln in lines)
    assert "chain intact: 19 entries" in out
    assert main(["trail", "--stage", "model_card"]) == 0
    body = capsys.readouterr().out.splitlines()[1:-2]
    assert len(body) == 3 and all(" model_card " in ln for ln in body)  # start, release_criteria, end
    assert main(["trail", "--json", "--stage", "train", "--path", TRAIL]) == 0
    entries = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [e["action"] for e in entries] == ["start", "end"] and entries[0]["stage"] == "train"


def test_trail_reports_a_broken_chain_at_the_end(tree, capsys):
    path = tree / TRAIL
    lines = path.read_text().splitlines()
    del lines[3]
    path.write_text("\n".join(lines) + "\n")
    assert main(["trail", "--path", str(path)]) == 1
    out = capsys.readouterr().out
    assert "CHAIN BROKEN" in out.split("\n\n")[-1] and "entry deleted or reordered" in out


def test_trail_without_a_trail_file(tmp_path, capsys):
    assert main(["trail", "--path", str(tmp_path / "none.jsonl")]) == 1
    assert "no audit trail here" in capsys.readouterr().err


def test_usage_errors_return_two(capsys):
    assert main(["frobnicate"]) == 2
    assert main([]) == 2
    assert main(["--help"]) == 0
    assert "verify" in capsys.readouterr().out


def test_validate_is_delegated_with_the_rest_of_the_arguments(monkeypatch):
    seen = []
    monkeypatch.setattr(
        validation, "validate_command", lambda argv: seen.append(argv) or 3, raising=False
    )
    assert main(["validate", "--internal", "a.csv", "--help"]) == 3
    assert seen == [["--internal", "a.csv", "--help"]]


def test_verify_outside_a_repository_says_where_to_run_it(tmp_path, capsys):
    (tmp_path / "sub").mkdir()
    assert main(["verify", "--root", str(tmp_path / "sub")]) == 1
    err = capsys.readouterr().err
    assert "run `pathtrail verify` from the repository root" in err and "Traceback" not in err
