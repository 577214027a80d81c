"""One canonical JSON and one digest serve params hashes, audit entries and artifacts."""

from __future__ import annotations

import hashlib
import json
import math

from pathtrail.core.files import write_json
from pathtrail.core.hashing import canonical_json, digest, sha256_file
from pathtrail.provenance import audit

SECTION = {"train": {"lr": 0.001, "epochs": 8, "tags": ["a", "b"]}, "data": {"classes": ["benign", "tumour"]}}


def test_digest_is_the_sha256_of_compact_sorted_json():
    blob = json.dumps(SECTION, sort_keys=True, separators=(",", ":")).encode()
    assert digest(SECTION) == hashlib.sha256(blob).hexdigest()  # the form committed hashes were made in


def test_digest_ignores_key_order_and_sees_every_value():
    reordered = {"data": SECTION["data"], "train": dict(reversed(list(SECTION["train"].items())))}
    assert digest(reordered) == digest(SECTION)
    assert digest({**SECTION, "train": {**SECTION["train"], "lr": 0.002}}) != digest(SECTION)


def test_non_ascii_and_non_finite_values_hash_stably():
    assert digest({"name": "DRAFT – NOT FOR RELEASE"}) == hashlib.sha256(
        '{"name":"DRAFT – NOT FOR RELEASE"}'.encode()).hexdigest()
    assert digest({"x": math.nan}) == digest({"x": None})


def test_audit_entries_use_the_same_digest():
    entry = {"seq": 0, "stage": "x", "note": "é", "entry_hash": "ignored"}
    assert audit.entry_digest(entry) == digest({k: v for k, v in entry.items() if k != "entry_hash"})


def test_artifacts_are_written_in_the_canonical_form(tmp_path):
    path = write_json(SECTION, tmp_path / "a.json")
    assert path.read_text(encoding="utf-8") == canonical_json(SECTION)
    assert json.loads(canonical_json(SECTION, compact=True)) == json.loads(path.read_text())
    assert sha256_file(path) == hashlib.sha256(canonical_json(SECTION).encode()).hexdigest()


def test_an_entry_with_odd_keys_and_values_verifies(tmp_path):
    """The line written is the value hashed: non-string keys, NaN, tuples and numpy scalars."""
    import numpy as np

    trail = tmp_path / "t.jsonl"
    audit.append({"stage": "x", "facts": {True: 1, None: 2, 10: (1, 2), "auc": math.nan,
                                           "n": np.int64(3)}}, trail)
    entries = audit.read_entries(trail)
    assert audit.chain_problems(entries) == []
    assert entries[0]["facts"] == {"True": 1, "None": 2, "10": [1, 2], "auc": None, "n": 3}


def test_params_errors_name_the_file_they_came_from(tmp_path):
    import pytest

    from pathtrail.config.loading import ParamsError, parse_section, read_params
    from pathtrail.config.sections import EvalParams

    path = tmp_path / "other.yaml"
    path.write_text("data: {}\n")
    with pytest.raises(ParamsError, match=r"other\.yaml: missing section 'eval'"):
        parse_section(read_params(path), "eval", EvalParams)
    with pytest.raises(ParamsError, match=r"^params\.yaml: missing section"):
        parse_section({}, "eval", EvalParams)


def test_a_folder_hash_follows_no_link_and_sees_every_entry(tmp_path):
    import os

    from pathtrail.core.hashing import sha256_path

    folder, outside = tmp_path / "f", tmp_path / "outside"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub/a.txt").write_text("a")
    outside.mkdir()
    (outside / "x.txt").write_text("x")
    plain = sha256_path(folder)
    seen = {plain}
    for add in (lambda: (folder / "link").symlink_to(outside, target_is_directory=True),
                lambda: (folder / "filelink").symlink_to(outside / "x.txt"),
                lambda: (folder / "empty").mkdir(),
                lambda: os.mkfifo(folder / "pipe")):
        add()
        now = sha256_path(folder)  # returns: the FIFO is never opened
        assert now not in seen
        seen.add(now)
    (outside / "x.txt").write_text("changed")  # content behind a link is not part of the hash
    assert sha256_path(folder) in seen
