"""The card's ensemble section: its fields, and strings from files escaped in its Markdown."""

from __future__ import annotations

from pathtrail.card.ensemble import ensemble_section, gate_of, render


def member(name: str, arch: str, gate: dict) -> dict:
    return {"name": name, "source": "ensemble_member", "arch": arch, "width": 16, "model_sha256": "ab" * 32,
            "params_sha256": "cd" * 32, "compile_check_file": "x.json", "compile_check_sha256": "ef" * 32,
            "gate": gate_of(gate)}


def test_gates_follow_the_release_criterion_and_strings_are_escaped():
    assert gate_of({"status": "passed", "passed": True, "use_compile": True})["gate_ok"]
    assert gate_of({"status": "skipped", "passed": None, "use_compile": False})["gate_ok"]
    assert not gate_of({"status": "failed", "passed": False, "use_compile": False})["gate_ok"]
    assert not gate_of({"status": "not_available", "passed": None, "use_compile": True})["gate_ok"]
    members = [member("a", "<script>x</script>|evil", {"status": "passed", "passed": True}),
               member("b", "small_cnn", {"status": "failed", "passed": False})]
    meta = {"kind": "logistic", "l2": 1.0, "folds": 5, "seed": 7, "intercept": 0.1, "members": ["a", "b"],
            "coef": [0.5, 0.25], "sha256": "12" * 32}
    metrics = {"threshold": 0.4, "threshold_rule": "youden", "internal_test": {"auroc": 0.8, "n_samples": 10},
               "members": {"a": {"internal_test": {"auroc": 0.7}}, "b": {"internal_test": {"auroc": 0.6}}}}
    section = ensemble_section(members, meta, metrics, "34" * 32)
    assert section["gates_ok"] is False and section["task"] == "binary"
    assert [m["name"] for m in section["members"]] == ["a", "b"]
    md = render(section)
    assert "<script>" not in md and "\\|evil" in md
    assert "Weight of b:** 0.250000" in md and "12" * 32 in md
