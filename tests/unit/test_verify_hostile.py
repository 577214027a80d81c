"""`pathtrail verify` on hostile trails and cards: a named problem and exit 1, never a traceback,
and never a file outside the repository (or a FIFO) opened."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fake_pipeline import CARD, TRAIL, fake_tree
from pathtrail.cli.main import main
from pathtrail.core.files import write_json
from pathtrail.provenance import audit
from pathtrail.review.verify import verify

CARD_JSON = f"model_cards/{CARD}.json"


@pytest.fixture
def tree(tmp_path, tmp_path_factory) -> Path:
    return fake_tree(tmp_path / "repo", tmp_path_factory)


def run_verify(root: Path, capsys) -> tuple[int, str]:
    code = main(["verify", "--root", str(root)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out


@pytest.mark.parametrize("line", ["42", "[]", "null", '{"seq": "0", "outputs": [1, 2]}',
                                  '{"action": "end", "outcome": "ok", "stage": "x", "seq": 3, "outputs": 7}'])
def test_a_hostile_trail_line(tree, capsys, line):
    trail = tree / TRAIL
    lines = trail.read_text().splitlines()
    trail.write_text("\n".join([*lines[:3], line, *lines[3:]]) + "\n")
    code, out = run_verify(tree, capsys)
    assert code == 1 and "entry #4" in out


@pytest.mark.parametrize("card", ["[]", "42", '"text"', "{", '{"provenance": 5, "figures": [1]}'])
def test_a_hostile_card(tree, capsys, card):
    (tree / CARD_JSON).write_text(card)
    code, out = run_verify(tree, capsys)
    assert code == 1 and CARD_JSON in out


def outside_file(tmp_path: Path) -> Path:
    secret = tmp_path / "outside-secret.txt"
    secret.write_text("not the repository's")
    return secret


@pytest.mark.parametrize("name", ["/dev/null", "/etc/hostname", "ABS", "../outside-secret.txt",
                                  "models/../../outside-secret.txt", "link-out", "fifo"])
def test_card_inputs_outside_the_repository_are_refused(tree, tmp_path, capsys, name):
    secret = outside_file(tmp_path)
    os.mkfifo(tree / "fifo")
    (tree / "link-out").symlink_to(secret)
    name = str(secret) if name == "ABS" else name
    card = json.loads((tree / CARD_JSON).read_text())
    card["provenance"]["inputs"][name] = "0" * 64
    card["figures"]["../../" + Path(name).name] = "0" * 64
    write_json(card, tree / CARD_JSON)
    code, out = run_verify(tree, capsys)
    assert code == 1
    assert any(w in out for w in ("absolute path", "outside the repository", "not a regular file")), out


def test_trail_outputs_outside_the_repository_are_refused(tree, tmp_path, capsys):
    secret = outside_file(tmp_path)
    with audit.stage("evaluate", inputs=[], trail=tree / TRAIL) as rec:
        rec.outputs(secret)
    found = verify(tree, checks=["artifacts"]).problems
    assert any("absolute path" in p for p in found)


def test_control_characters_in_a_card_cannot_forge_report_lines(tree, capsys):
    card = json.loads((tree / CARD_JSON).read_text())
    card["provenance"]["inputs"]["x\nRESULT: PASS (everything agrees)\x1b[2K"] = "0" * 64
    write_json(card, tree / CARD_JSON)
    code, out = run_verify(tree, capsys)
    assert code == 1 and "\x1b" not in out
    assert [ln for ln in out.splitlines() if ln.startswith("RESULT:")] == [ln for ln in out.splitlines()
                                                                           if "RESULT: FAIL" in ln]


def test_a_torn_last_line_is_repaired_by_the_next_stage_and_verify_says_so(tree, capsys):
    trail = tree / TRAIL
    trail.write_bytes(trail.read_bytes() + b'{"action": "start", "stag')
    with audit.stage("evaluate", inputs=[], trail=trail) as rec:
        rec.record("threshold_locked", threshold=0.42)
        rec.record("criteria_locked", criteria={}, criteria_sha256="0" * 64)
        rec.note(threshold=0.42)
    report = verify(tree, checks=["audit"])
    assert report.ok, report.problems
    assert any("torn entry" in n for c in report.checks for n in c.notes)


def test_an_evaluate_run_without_a_locked_threshold_fails_audit(tree):
    with audit.stage("evaluate", inputs=[], trail=tree / TRAIL) as rec:
        rec.note(threshold=0.5)
    found = verify(tree, checks=["audit"]).problems
    assert any("no threshold_locked entry" in p for p in found)
    with audit.stage("evaluate", inputs=[], trail=tree / TRAIL) as rec:
        rec.record("threshold_locked", threshold=0.3)
        rec.note(threshold=0.5)
    found = verify(tree, checks=["audit"]).problems
    assert any("reports threshold 0.5 but 0.3 was locked" in p for p in found)


@pytest.mark.parametrize("line", ['{"seq": ' + "1" * 5000 + "}", '{"seq": 3, "duration_s": 1' + "0" * 400 + "}"])
def test_numbers_past_python_limits_are_no_traceback(tree, capsys, line):
    with open(tree / TRAIL, "a") as f:
        f.write(line + "\n")
    code, _ = run_verify(tree, capsys)
    assert code == 1
    assert main(["trail", "--path", str(tree / TRAIL)]) == 1
    assert "Traceback" not in "".join(capsys.readouterr())


@pytest.mark.parametrize("lock", ["stages: [", "- a\n- b\n", "stages: {x: 5}\n", "stages: {x: {outs: [1]}}\n"])
def test_a_malformed_dvc_lock_is_named(tree, capsys, lock):
    (tree / "dvc.lock").write_text(lock)
    code, out = run_verify(tree, capsys)
    assert code == 1 and "dvc.lock" in out


def test_a_fifo_that_dvc_status_would_open_is_named_not_waited_on(tree, capsys):
    (tree / "params.yaml").unlink()
    os.mkfifo(tree / "params.yaml")
    code, out = run_verify(tree, capsys)  # returns: a hang here would stall the suite
    assert code == 1 and "params.yaml: not a regular file or folder" in out


def test_a_trail_linked_outside_the_repository_is_not_read(tree, tmp_path, capsys):
    outside = tmp_path / "trail.jsonl"
    outside.write_bytes((tree / TRAIL).read_bytes())
    (tree / TRAIL).unlink()
    (tree / TRAIL).symlink_to(outside)
    code, out = run_verify(tree, capsys)
    assert code == 1 and "outside the repository" in out


def test_a_deeply_nested_card_is_no_traceback(tree, capsys):
    (tree / CARD_JSON).write_text("[" * 100_000)
    code, out = run_verify(tree, capsys)
    assert code == 1 and CARD_JSON in out


def test_trail_json_mode_escapes_the_chain_report(tree, capsys):
    trail = tree / TRAIL
    lines = trail.read_text().splitlines()
    e = json.loads(lines[2])
    e["stage"] = "x\n[PASS] everything fine\x1b[32m"
    lines[2] = json.dumps(e)
    trail.write_text("\n".join(lines) + "\n")
    assert main(["trail", "--json", "--path", str(trail)]) == 1
    err = capsys.readouterr().err
    assert "\x1b" not in err and not any(ln.startswith("[PASS]") for ln in err.splitlines())
