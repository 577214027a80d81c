"""Release criteria and the status vocabulary: pre-specified, reported with value and margin, and
never a RELEASE CANDIDATE for a model that missed one."""

from __future__ import annotations

import copy

import pytest
from test_card import env, inputs, with_  # noqa: F401 - fixtures shared with the card tests

from fake_pipeline import EVAL, SPLIT, cohort
from pathtrail.card.build import build_card
from pathtrail.card.release import intended_use_written, is_demo_data, release_facts
from pathtrail.card.status import decide
from pathtrail.card.values import DRAFT, EXPERIMENT, RELEASE_CANDIDATE, RELEASED
from pathtrail.config.criteria import CriterionError, check, parse
from pathtrail.config.loading import ParamsError, parse_section
from pathtrail.config.sections import CardParams, ReleaseParams


# ------------------------------------------------------------------------------------------ grammar
@pytest.mark.parametrize("text,key,op", [
    ("external.auroc_ci_low >= 0.80", "external.auroc_ci_low", ">="),
    ("internal_test.n_patients>=30", "internal_test.n_patients", ">="),
    ("external.calibration_slope in [0.7, 1.3]", "external.calibration_slope", "in"),
    ("compile_check.gate_ok == true", "compile_check.gate_ok", "=="),
    ("normalization.fallback_fraction < 5e-2", "normalization.fallback_fraction", "<"),
])
def test_criteria_parse(text, key, op):
    c = parse("x", text)
    assert (c.key, c.op) == (key, op)


@pytest.mark.parametrize("text,needle", [
    ("external.auroc >= high", "is not a criterion"),
    ("__import__('os').system('id') >= 1", "is not a criterion"),
    ("external.auroc in [0.9, 0.1]", r"range \[0.9, 0.1\] is empty"),
    ("compile_check.gate_ok >= true", "only be compared with == or !="),
    (0.8, "must be a string"),
])
def test_bad_criteria_say_how_to_write_them(text, needle):
    with pytest.raises(CriterionError, match=needle):
        parse("external_auroc", text)


def test_params_section_reports_every_bad_criterion_at_once():
    bad = {"criteria": {"a": "x >= 1", "b": "nonsense", "c": "y in [2, 1]"}, "min_ci_patients": 20,
           "max_fallback_fraction": 0.05}
    with pytest.raises(ParamsError) as exc:
        parse_section({"release": bad}, "release", ReleaseParams)
    assert "release.criteria.b" in str(exc.value) and "release.criteria.c" in str(exc.value)


def test_check_reports_value_threshold_and_margin():
    facts = {"external.auroc_ci_low": 0.72, "x.slope": 1.6, "flag": False}
    low = check(parse("a", "external.auroc_ci_low >= 0.8"), facts)
    assert low["passed"] is False and low["value"] == 0.72 and low["threshold"] == ">= 0.8"
    assert low["margin"] == pytest.approx(-0.08) and "off by 0.08" in low["why"]
    rng = check(parse("b", "x.slope in [0.7, 1.3]"), facts)
    assert rng["passed"] is False and rng["margin"] == pytest.approx(-0.3)
    assert check(parse("c", "flag == false"), facts)["passed"] is True
    missing = check(parse("d", "external.n_patients >= 30"), facts)
    assert missing["passed"] is False and "no such value was recorded" in missing["why"]
    assert check(parse("e", "flag >= 1"), facts)["passed"] is False  # a bool is not a number


# ------------------------------------------------------------------------------------------ status
def test_status_vocabulary_precedence():
    assert decide(source_reasons=[], params_changed=[], gate_reasons=[]) == (RELEASE_CANDIDATE, [])
    assert decide(source_reasons=[], params_changed=[], gate_reasons=[], signed_by_trusted=True)[0] == RELEASED
    exp, why = decide(source_reasons=[], params_changed=["train.epochs"], gate_reasons=["criterion x failed"])
    assert exp == EXPERIMENT and "train.epochs" in why[0] and "criterion x failed" in why
    assert decide(source_reasons=["src changed"], params_changed=["train.epochs"], gate_reasons=[])[0] == DRAFT
    assert decide(source_reasons=[], params_changed=[], gate_reasons=["criterion x failed"])[0] == DRAFT


def test_random_labels_never_give_a_release_candidate(inputs):  # noqa: F811
    """What a cohort with random labels gives: AUROC about 0.45 on both test sets."""
    ev = copy.deepcopy(EVAL)
    ev["internal_test"] = cohort(0.454, 160, patients=40)
    ev["external"] = cohort(0.468, 160, patients=40)
    card, md = build_card(with_(inputs, eval_metrics=ev))
    assert card["release_status"] == DRAFT
    failed = {n: r for n, r in card["release"]["results"].items() if not r["passed"]}
    assert set(failed) == {"external_auroc", "internal_auroc"}
    assert failed["external_auroc"]["value"] == pytest.approx(0.418)
    assert failed["external_auroc"]["margin"] == pytest.approx(0.418 - 0.75)
    assert any("external_auroc failed: external.auroc_ci_low = 0.418, required >= 0.75 (off by 0.332)" in r
               for r in card["release_reasons"])
    assert "| external\\_auroc | external.auroc\\_ci\\_low &gt;= 0.75 | 0.4180 | &gt;= 0.75 | FAIL |" in md


def test_a_criterion_without_its_value_fails(inputs):  # noqa: F811
    ev = {k: v for k, v in EVAL.items() if k != "external"}
    card, _ = build_card(with_(inputs, eval_metrics=ev))
    r = card["release"]["results"]["external_auroc"]
    assert not r["passed"] and "no such value" in r["why"] and card["release_status"] == DRAFT


def test_criteria_not_locked_before_evaluation_make_a_draft(inputs):  # noqa: F811
    card, _ = build_card(with_(inputs, criteria_lock=None))
    assert card["release_status"] == DRAFT
    assert any("not proven fixed before evaluation" in r for r in card["release_reasons"])
    other = build_card(with_(inputs, criteria_lock={"seq": 3, "criteria_sha256": "00" * 32}))[0]
    assert other["release_status"] == DRAFT and not other["release"]["locked_before_evaluation"]["matches"]


def test_changed_params_give_an_experiment_not_a_draft(inputs):  # noqa: F811
    git = {**inputs.git, "params_changed": ["train.epochs"]}
    card, md = build_card(with_(inputs, git=git))
    assert card["release_status"] == EXPERIMENT
    assert md.split("---\n", 2)[2].lstrip().startswith(f"> **{EXPERIMENT} – NOT FOR RELEASE.**")


def test_a_stage_run_from_dirty_source_makes_a_draft(inputs):  # noqa: F811
    card, _ = build_card(with_(inputs, upstream_dirty=["stage train (trail seq 9): src/pathtrail/x.py"]))
    assert card["release_status"] == DRAFT
    assert "ran from modified source: stage train (trail seq 9)" in card["release_reasons"][0]


def test_the_compile_gate_counts_only_when_compile_is_used(inputs):  # noqa: F811
    facts = release_facts(eval_metrics=EVAL, compile_check={"status": "failed"}, normalization=None,
                          split=SPLIT, params={"train": {"use_compile": True}}, intended_use="x", demo=True)
    assert facts["compile_check.gate_ok"] is False
    skipped = release_facts(eval_metrics=EVAL, compile_check={"status": "skipped"}, normalization=None,
                            split=SPLIT, params={"train": {"use_compile": False}}, intended_use="x", demo=True)
    assert skipped["compile_check.gate_ok"] is True


# ------------------------------------------------------------------------- template text and names
def test_template_intended_use_and_demo_leftovers_fail_on_real_data(inputs):  # noqa: F811
    template = "[REPLACE: who uses this model, for which patients, and what it must not be used for]"
    assert not intended_use_written(template, demo=False) and not intended_use_written("  \n", demo=True)
    demo_text = "Research demonstration. Trained on synthetic demo data; not for clinical use."
    assert intended_use_written(demo_text, demo=True) and not intended_use_written(demo_text, demo=False)
    assert not intended_use_written("Intended use: TODO", demo=True)
    params = copy.deepcopy(inputs.params)
    params["card"]["name"] = "pathtrail-demo"
    card, _ = build_card(with_(inputs, params=params, intended_use=demo_text))
    failed = {n for n, r in card["release"]["results"].items() if not r["passed"]}
    assert {"card_name", "intended_use"} <= failed and card["release_status"] == DRAFT


def test_demo_data_is_recognised_from_dvc_lock_only():
    lock = {"stages": {"demo_data": {"outs": [{"path": "data/raw", "md5": "aa.dir"}]},
                       "validate": {"deps": [{"path": "data/raw", "md5": "aa.dir"}]}}}
    params = {"data": {"data_root": "data/raw", "internal_manifest": "data/raw/internal.csv",
                       "external_manifest": "data/raw/external.csv"}}
    assert is_demo_data(lock, params)
    other = {"data": {**params["data"], "internal_manifest": "my/internal.csv"}}  # demo images, own manifest
    assert not is_demo_data(lock, other)
    lock["stages"]["validate"]["deps"][0]["md5"] = "bb.dir"  # the user's own files in data/raw
    assert not is_demo_data(lock, params) and not is_demo_data(None, params)


# ---------------------------------------------------------------------------------------- warnings
def test_warnings_for_small_cohorts_missing_sites_and_stain_fallback(inputs):  # noqa: F811
    ev = copy.deepcopy(EVAL)
    ev["per_site"]["site_b"] = cohort(0.9, 16, patients=4)
    split = copy.deepcopy(SPLIT)
    del split["splits"]["test"]["sites"]["site_b"]
    norm = {"enabled": True, "cohorts": {"internal": {"patches": 792, "fallback": 153}}}
    card, md = build_card(with_(inputs, eval_metrics=ev, split=split, normalization=norm))
    text = " ".join(card["release"]["warnings"])
    assert "site site_b come from 4 patients" in text
    assert "site_b have no patient in the test split" in text
    assert "19.3% of patches fell back" in text
    failed = {n for n, r in card["release"]["results"].items() if not r["passed"]}
    assert {"test_sites", "stain_fallback"} <= failed
    assert "### Warnings" in md and "come from 4 patients" in md


@pytest.mark.parametrize("name", ["../../x", "../evil", "", ".hidden", "a/b", "<img src=x>", "My Model", "a" * 101])
def test_card_names_that_are_not_plain_file_names_are_refused(name):
    with pytest.raises(ParamsError, match="card.name"):
        parse_section({"card": {"name": name, "intended_use": "x.md"}}, "card", CardParams)
    assert parse_section({"card": {"name": "lymph-node_v1.2", "intended_use": "x.md"}}, "card", CardParams)


def test_remote_urls_lose_every_credential():
    from pathtrail.provenance.environment import public_remote

    assert public_remote("https://u:tok@[::1]:8443/x.git?t=1#f") == "https://[::1]:8443/x.git"
    assert public_remote("https://host.example/x;password=SEMITOK") == "https://host.example/x"
    assert public_remote("ssh://git:pw@host.example:22/org/x.git") == "ssh://host.example:22/org/x.git"
    assert public_remote("git@host.example:org/x.git") == "host.example:org/x.git"
    assert public_remote("/home/ann/mirror.git") is None and public_remote("file:///srv/x.git") is None


def test_criteria_changed_for_a_model_after_its_test_data_was_opened_make_a_draft(inputs):  # noqa: F811
    from pathtrail.card.build import criteria_lock

    def run(run_id, seq, model, sha):
        return [{"stage": "evaluate", "action": "start", "run_id": run_id, "seq": seq,
                 "inputs": {"models/model.pt": model}},
                {"stage": "evaluate", "action": "criteria_locked", "run_id": run_id, "seq": seq + 1,
                 "criteria_sha256": sha},
                {"stage": "evaluate", "action": "end", "outcome": "ok", "run_id": run_id, "seq": seq + 2}]

    strict_then_loose = run("a", 1, "m1", "strict") + run("b", 4, "m1", "loose")
    lock = criteria_lock(strict_then_loose)
    assert lock["seq"] == 5 and lock["changed_after_test"] == [{"seq": 2, "criteria_sha256": "strict"}]
    assert criteria_lock(run("a", 1, "m0", "strict") + run("b", 4, "m1", "loose"))["changed_after_test"] == []
    assert criteria_lock(run("a", 1, "m1", "same") + run("b", 4, "m1", "same"))["changed_after_test"] == []
    good = inputs.criteria_lock
    card, md = build_card(with_(inputs, criteria_lock={**good, "changed_after_test": [{"seq": 2,
                                                                                      "criteria_sha256": "x"}]}))
    assert card["release_status"] == DRAFT and "other criteria were locked for the same weights" in md
    assert any("changed after this model's test data had been opened" in r for r in card["release_reasons"])
