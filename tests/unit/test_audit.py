"""The hash-chained audit trail and its timeline."""

from __future__ import annotations

import json

import pytest

from pathtrail.core.hashing import digest, sha256_path
from pathtrail.provenance import audit
from pathtrail.review.timeline import format_timeline, utc


@pytest.fixture
def trail(tmp_path):
    path = tmp_path / "audit/trail.jsonl"
    (tmp_path / "in.txt").write_text("input\n")
    for name in ("a", "b"):
        with audit.stage(name, inputs=[tmp_path / "in.txt"], params={"x": 1}, trail=path) as rec:
            out = tmp_path / f"{name}.txt"
            out.write_text(name)
            rec.outputs(out)
            rec.note(n=1)
    return path


def rewrite(path, lines):
    path.write_text("\n".join(lines) + "\n")


def test_a_stage_writes_start_and_end_with_hashes(trail, tmp_path):
    entries = audit.read_entries(trail)
    assert [(e["seq"], e["stage"], e["action"], e["outcome"]) for e in entries] == [
        (0, "a", "start", "running"),
        (1, "a", "end", "ok"),
        (2, "b", "start", "running"),
        (3, "b", "end", "ok"),
    ]
    start, end = entries[0], entries[1]
    assert start["prev_hash"] == audit.GENESIS and end["prev_hash"] == start["entry_hash"]
    assert start["inputs"] == {
        (tmp_path / "in.txt").as_posix(): sha256_path(tmp_path / "in.txt")
    }
    assert start["params_sha256"] == digest({"x": 1})
    assert end["outputs"] == {
        (tmp_path / "a.txt").as_posix(): sha256_path(tmp_path / "a.txt")
    }
    assert end["facts"] == {"n": 1} and end["run_id"] == start["run_id"]
    assert audit.chain_problems(entries) == []
    assert audit.chain_head(trail) == entries[-1]["entry_hash"]


def test_a_failed_stage_records_the_error_and_reraises(tmp_path):
    path = tmp_path / "t.jsonl"
    with pytest.raises(RuntimeError), audit.stage("c", inputs=[], trail=path):
        raise RuntimeError("boom")
    end = audit.read_entries(path)[-1]
    assert end["outcome"] == "failed" and end["error"] == "RuntimeError: boom"


def test_edit_delete_reorder_and_garbage_break_the_chain(trail):
    lines = trail.read_text().splitlines()
    edited = json.loads(lines[1])
    edited["outcome"] = "failed"
    cases = {
        "edit": [lines[0], json.dumps(edited), *lines[2:]],
        "delete": [lines[0], *lines[2:]],
        "reorder": [lines[1], lines[0], *lines[2:]],
        "garbage": [lines[0], "{not json", *lines[2:]],
    }
    expected = {
        "edit": "entry_hash mismatch (entry edited)",
        "delete": "entry deleted or reordered",
        "reorder": "entry deleted or reordered",
        "garbage": "not valid JSON",
    }
    for name, content in cases.items():
        rewrite(trail, content)
        problems = audit.chain_problems(audit.read_entries(trail))
        assert any(expected[name] in p for p in problems), (name, problems)


def test_a_correctly_rehashed_edit_still_breaks_the_link(trail):
    lines = trail.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["outcome"] = "failed"
    entry["entry_hash"] = audit.entry_digest(entry)  # a forger recomputes this entry's hash...
    rewrite(trail, [lines[0], json.dumps(entry), *lines[2:]])
    problems = audit.chain_problems(audit.read_entries(trail))
    assert any(
        "prev_hash does not match" in p for p in problems
    )  # ...but the next entry still points back


def test_timeline_one_line_per_entry(trail):
    entries = audit.read_entries(trail)
    text = format_timeline(entries, [])
    lines = text.splitlines()
    assert len(lines) == 1 + len(entries) + 2
    assert entries[1]["entry_hash"][:12] in lines[2] and "1 outputs" in lines[2]
    assert utc(entries[0]["time"]) in lines[1] and utc(entries[0]["time"]).endswith("Z")
    assert lines[-1] == "chain intact: 4 entries"
    assert "CHAIN BROKEN (1 problem):" in format_timeline(entries, ["x"])


def test_utc_converts_offsets():
    assert utc("2026-01-02T05:04:05.123+02:00") == "2026-01-02 03:04:05.123Z"
    assert utc("garbage") == "garbage"


def test_timeline_names_a_recorded_checkpoint(tmp_path):
    path = tmp_path / "trail.jsonl"
    with audit.stage("train", inputs=[], trail=path) as rec:
        rec.record("checkpoint_saved", sha256="ab" * 32, epoch=2, batch=5)
    text = format_timeline(audit.read_entries(path), [])
    assert "checkpoint at epoch 2 batch 5, sha256 abababababab" in text
