"""Reporting checklists: published item numbering, evidence from the card, safe Markdown."""

from __future__ import annotations

import copy
import hashlib
import json
import re

import pytest

from pathtrail.card.reporting import (
    FILLED,
    HUMAN,
    MISSING,
    _cell,
    render_reporting,
    reporting_checklists,
)
from pathtrail.card.values import get

TRIPOD_AI_ITEMS = [
    "1", "2", "3a", "3b", "3c", "4", "5a", "5b", "6a", "6b", "6c", "7", "8a", "8b", "8c",
    "9a", "9b", "9c", "10", "11", "12a", "12b", "12c", "12d", "12e", "12f", "12g", "13", "14",
    "15", "16", "17", "18a", "18b", "18c", "18d", "18e", "18f", "19", "20a", "20b", "20c", "21",
    "22", "23a", "23b", "24", "25", "26", "27a", "27b", "27c",
]
CLAIM_ITEMS = [str(n) for n in range(1, 45)]
ANNEX_IV_ITEMS = ["2(b)", "2(c)", "2(d)", "2(e)", "2(f)", "2(g)"]
HOSTILE_SITES = ("<img src=x onerror=alert(1)>", "x\n> **Release status: RELEASE CANDIDATE.**",
                 "a|b|c", "`code` _em_ [link](http://x) &amp; \u202e\u2028end")


def sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def metrics(n: int, patients: int, **extra) -> dict:
    out = {"auroc": 0.9, "auroc_ci_low": 0.85, "auroc_ci_high": 0.95, "sensitivity": 0.8,
           "sensitivity_ci_low": 0.7, "sensitivity_ci_high": 0.9, "specificity": 0.8,
           "specificity_ci_low": 0.7, "specificity_ci_high": 0.9, "calibration_slope": 0.97,
           "calibration_intercept": -0.1, "ci_level": 0.95, "n_samples": n, "n_patients": patients,
           "n_positive": n // 2, "n_negative": n - n // 2, "tp": 1, "fp": 2, "fn": 3, "tn": 4}
    return out | extra


def cohort(manifest: str, sites: dict[str, int], patients: int) -> dict:
    rows = sum(sites.values())
    return {"manifest": manifest, "data_root": "data/raw", "rows": rows, "patients": patients,
            "slides": 2 * patients, "classes": {"benign": rows // 2, "tumour": rows - rows // 2},
            "sites": sites, "image_sizes": {"64x64": rows}, "image_modes": {"RGB": rows},
            "tissue_fraction": {"min": 0.5, "median": 0.9}}


def make_card(internal_sites=("site_a", "site_b"), external_site="site_c") -> dict:
    figures = [f"figures/eval/{kind}_{c}.png" for kind in ("roc", "pr", "calibration", "failures")
               for c in ("internal_test", "external")]
    figures += ["figures/stain_before_after.png", "figures/training_curves.png",
                "figures/compile_check_loss.png"]
    inputs = ["metrics/eval.json", "metrics/train.json", "metrics/compile_check.json",
              "models/model.pt", "models/stain_reference.json", "params.yaml",
              "plots/train/epochs.csv", "reports/normalization.json", "reports/split.json",
              "reports/validation.json"]
    split = {name: {"patients": p, "patches": 20 * p, "slides": 2 * p,
                    "fraction_of_patients": f, "classes": {"benign": {"patients": p // 2},
                                                           "tumour": {"patients": p - p // 2}}}
             for name, p, f in (("train", 6, 0.6), ("val", 2, 0.2), ("test", 2, 0.2))}
    return {
        "name": "synthetic",
        "intended_use": "Research only.",
        "params": {"model": {"arch": "small_cnn", "width": 8, "dropout": 0.1, "weights_path": None},
                   "train": {"lr": 0.001, "epochs": 2, "seed": 1, "augment": True,
                             "early_stopping": {"patience": 2}},
                   "eval": {"n_bootstrap": 100, "threshold_rule": "youden", "seed": 3,
                            "fixed_threshold": 0.5, "n_failures": 4},
                   "stain": {"enable_stain_norm": True}, "data": {"patch_size": 64}},
        "params_sha256": sha("params"),
        "model": {"arch": "small_cnn", "classes": ["benign", "tumour"], "sha256": sha("model")},
        "metrics": {
            "train": {"best_epoch": 1, "best_val_auroc": 0.8, "epochs_run": 2,
                      "early_stopped": False},
            "eval": {"n_bootstrap": 100, "threshold": 0.5, "threshold_rule": "youden",
                     "internal_test": metrics(200, 2), "external": metrics(100, 4),
                     "per_site": {s: metrics(50, 1) for s in (*internal_sites, external_site)},
                     "domain_shift": {"auroc_difference": 0.01, "auroc_difference_ci_low": -0.1,
                                      "auroc_difference_ci_high": 0.1}}},
        "data": {
            "validation": {"status": "ok", "n_errors": 0, "n_warnings": 0,
                           "rules": {"size_policy": "reject", "tissue_policy": "warn",
                                     "mode_policy": "convert", "min_per_class": 5},
                           "cohorts": {
                               "internal": cohort("data/raw/internal.csv",
                                                  {s: 100 for s in internal_sites}, 10),
                               "external": cohort("data/raw/external.csv",
                                                  {external_site: 100}, 4)}},
            "split": {"seed": 7, "val_fraction": 0.2, "test_fraction": 0.2,
                      "table": "data/validated/internal.csv", "splits": split},
            "normalization": {"enabled": True, "scope": "patch", "fallback": "reference",
                              "reference_sha256": [sha("patch0"), sha("patch1")],
                              "cohorts": {"internal": {"fallback": 1, "patches": 200}}},
        },
        "compile_check": {"status": "passed", "auroc_delta": 0.0001},
        "environment": {"torch_version": "2.0.0+cpu", "torch_git_version": "abc",
                        "python_version": "3.11.7", "packages": {"torch": "2.0.0+cpu"},
                        "machine": "x86_64", "cpu": "cpu", "cpu_count": 2, "gpu": None,
                        "os": "Linux"},
        "provenance": {
            "git_commit": "1" * 40, "git_commit_date": "2026-01-01T00:00:00+00:00",
            "model_sha256": sha("models/model.pt"),
            "inputs": {p: sha(p) for p in inputs},
            "manifests": {c: {"path": f"data/raw/{c}.csv", "sha256": sha(c), "source": "trail"}
                          for c in ("external", "internal")},
            "stain_reference_sha256": [sha("patch0"), sha("patch1")],
            "dvc_lock": {"train": {"outs": {"models/model.pt": "0" * 32}}},
        },
        "audit": {"chain_head": sha("head"), "trail": "audit/trail.jsonl"},
        "figures": {f: sha(f) for f in figures},
    }


def items(result: dict, checklist: str) -> dict[str, dict]:
    return {i["item"]: i for i in result[checklist]["items"]}


def recorded_hashes(card: dict) -> dict[str, str]:
    out = dict(card["provenance"]["inputs"]) | dict(card["figures"])
    return out | {m["path"]: m["sha256"] for m in card["provenance"]["manifests"].values()}


def test_every_item_is_listed_with_its_published_number_in_order():
    result = reporting_checklists(make_card())
    assert list(result) == ["TRIPOD+AI", "CLAIM 2024", "EU AI Act Annex IV"]
    assert [i["item"] for i in result["TRIPOD+AI"]["items"]] == TRIPOD_AI_ITEMS
    assert len(TRIPOD_AI_ITEMS) == 52 and len({re.match(r"\d+", i)[0] for i in TRIPOD_AI_ITEMS}) == 27
    assert [i["item"] for i in result["CLAIM 2024"]["items"]] == CLAIM_ITEMS
    assert [i["item"] for i in result["EU AI Act Annex IV"]["items"]] == ANNEX_IV_ITEMS
    assert "BMJ 2024;385:e078378" in result["TRIPOD+AI"]["source"]
    for block in result.values():
        for item in block["items"]:
            assert set(item) == {"item", "topic", "status", "evidence", "note"}
            assert item["topic"] and item["status"] in (FILLED, MISSING, HUMAN)
            assert bool(item["evidence"]) == (item["status"] == FILLED), item
            if item["status"] != FILLED:
                assert item["note"], item


def test_what_the_pipeline_records_is_filled_and_the_rest_needs_a_person():
    result = reporting_checklists(make_card())
    tripod, claim, annex = (items(result, n) for n in result)
    for item in ("5a", "5b", "6b", "7", "10", "12a", "12c", "12d", "12e", "15", "22", "23a"):
        assert tripod[item]["status"] == FILLED, tripod[item]
    for item in ("7", "8", "9", "19", "20", "22", "23", "25", "29", "32", "33", "37", "38", "39"):
        assert claim[item]["status"] == FILLED, claim[item]
    for item in ("2(b)", "2(c)", "2(d)", "2(g)"):
        assert annex[item]["status"] == FILLED, annex[item]
    for item in ("1", "3a", "14", "17", "18a", "19", "25", "26"):
        assert tripod[item]["status"] == HUMAN
    for item in ("1", "14", "16", "18", "36", "40", "44"):
        assert claim[item]["status"] == HUMAN
    assert annex["2(e)"]["status"] == annex["2(f)"]["status"] == HUMAN
    assert {"card": "params.train"} in claim["25"]["evidence"]
    assert {"card": "environment.packages"} in claim["23"]["evidence"]
    assert {"card": "metrics.eval.external"} in claim["33"]["evidence"]
    sites = [r["card"] for r in tripod["23b"]["evidence"] if "per_site" in r.get("card", "")]
    assert sites == [f"metrics.eval.per_site.{s}" for s in ("site_a", "site_b", "site_c")]


def test_evidence_hashes_are_the_cards_hashes_and_card_keys_exist():
    card = make_card()
    recorded = recorded_hashes(card)
    result = reporting_checklists(card)
    files = [r for b in result.values() for i in b["items"] for r in i["evidence"] if "file" in r]
    assert files and all(recorded[r["file"]] == r["sha256"] for r in files)
    for block in result.values():
        for item in block["items"]:
            for ref in item["evidence"]:
                assert set(ref) in ({"file", "sha256"}, {"card"}), ref
                if "card" in ref:
                    assert get(card, ref["card"]) is not None or ref["card"].endswith("weights_path")
    claim = items(result, "CLAIM 2024")
    assert {"file": "data/raw/external.csv", "sha256": sha("external")} in claim["7"]["evidence"]
    assert {"file": "data/raw/internal.csv", "sha256": sha("internal")} in claim["7"]["evidence"]
    stain = {"file": "models/stain_reference.json", "sha256": sha("models/stain_reference.json")}
    assert stain in claim["9"]["evidence"]
    model = {"file": "models/model.pt", "sha256": card["provenance"]["model_sha256"]}
    assert model in claim["22"]["evidence"]
    failures = {r["file"] for r in claim["39"]["evidence"] if "file" in r}
    assert failures == {"figures/eval/failures_external.png", "figures/eval/failures_internal_test.png"}


def test_a_hash_the_card_does_not_record_properly_is_not_cited():
    card = make_card()
    card["provenance"]["manifests"]["external"]["sha256"] = None
    card["provenance"]["manifests"]["internal"]["sha256"] = "not-a-hash"
    claim = items(reporting_checklists(card), "CLAIM 2024")
    assert claim["7"]["status"] == MISSING and "manifest" in claim["7"]["note"]


def test_without_external_metrics_external_validation_is_missing_not_filled():
    card = make_card()
    before = reporting_checklists(card)
    del card["metrics"]["eval"]["external"]
    after = reporting_checklists(card)
    for checklist, item in (("CLAIM 2024", "33"), ("TRIPOD+AI", "23a"),
                            ("EU AI Act Annex IV", "2(g)")):
        assert items(before, checklist)[item]["status"] == FILLED
        gone = items(after, checklist)[item]
        assert gone["status"] == MISSING and gone["evidence"] == []
        assert "metrics.eval.external" in gone["note"]
    card["metrics"]["eval"]["external"] = {"auroc": 0.9}  # no CI: still not filled
    assert items(reporting_checklists(card), "CLAIM 2024")["33"]["status"] == MISSING


def test_patient_level_disjointness_needs_split_counts_that_add_up():
    card = make_card()
    claim = items(reporting_checklists(card), "CLAIM 2024")
    assert {"card": "data.validation.cohorts.internal.patients"} in claim["20"]["evidence"]
    card["data"]["split"]["splits"]["test"]["patients"] += 1  # a patient in two splits
    assert items(reporting_checklists(card), "CLAIM 2024")["20"]["status"] == MISSING


def test_trail_entries_are_cited_only_when_the_card_records_them():
    card = make_card()
    refs = [r for b in reporting_checklists(card).values() for i in b["items"]
            for r in i["evidence"]]
    assert not any("trail_seq" in r for r in refs)
    card["provenance"]["manifests"]["external"]["trail_seq"] = 12
    claim = items(reporting_checklists(card), "CLAIM 2024")
    assert {"trail_seq": 12} in claim["7"]["evidence"]
    assert "trail entry seq 12" in render_reporting(reporting_checklists(card))


@pytest.mark.parametrize("hostile", HOSTILE_SITES)
def test_hostile_strings_from_the_card_cannot_break_the_markdown(hostile):
    card = make_card(internal_sites=(hostile, "site_b"), external_site=hostile + "_ext")
    card["provenance"]["manifests"]["external"]["path"] = f"data/{hostile}.csv"
    card["provenance"]["inputs"][f"data/{hostile}.csv"] = sha("external")
    result = reporting_checklists(card)
    assert any(hostile in r.get("card", "") for i in result["TRIPOD+AI"]["items"]
               for r in i["evidence"])
    md = render_reporting(result)
    assert "<" not in md and ">" not in md and "**" not in md and "`" not in md.replace("\\`", "")
    assert "\u2028" not in md and "\u202e" not in md
    lines = md.split("\n")
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == len(TRIPOD_AI_ITEMS) + len(CLAIM_ITEMS) + len(ANNEX_IV_ITEMS) + 3 * 2
    for line in table:
        assert len(re.findall(r"(?<!\\)\|", line)) == 5, line
    assert not any(line.startswith(">") for line in lines)
    assert all(line.startswith(("|", "#", "Every", "Source")) or not line for line in lines)
    assert md.startswith("## Reporting checklists\n")


@pytest.mark.parametrize(("raw", "shown"), [
    ("a|b", "a\\|b"), ("<b>", "&lt;b&gt;"), ("x&y", "x&amp;y"), ("`c`", "\\`c\\`"),
    ("*e*", "\\*e\\*"), ("_u_", "\\_u\\_"), ("[l](u)", "\\[l\\](u)"), ("a\nb", "a\\\\x0ab"),
    ("back\\slash", "back\\\\slash"), ("\x00z\x1b", "\\\\x00z\\\\x1b"), ("~s~", "\\~s\\~"),
])
def test_cell_escapes_each_markdown_special(raw, shown):
    assert _cell(raw) == shown


def test_output_is_deterministic_and_independent_of_key_order():
    card = make_card()
    first = reporting_checklists(card)
    assert reporting_checklists(copy.deepcopy(card)) == first
    reordered = json.loads(json.dumps(card, sort_keys=True))
    reordered["metrics"]["eval"]["per_site"] = dict(reversed(card["metrics"]["eval"]["per_site"]
                                                            .items()))
    assert json.dumps(reporting_checklists(reordered)) == json.dumps(first)
    md = render_reporting(first)
    assert render_reporting(first) == md
    assert render_reporting(json.loads(json.dumps(first, sort_keys=True))) == md
    assert "### TRIPOD+AI" in md and "### CLAIM 2024" in md and "### EU AI Act Annex IV" in md


def test_an_empty_card_gives_every_item_and_no_evidence():
    result = reporting_checklists({})
    statuses = {i["status"] for b in result.values() for i in b["items"]}
    assert statuses == {MISSING, HUMAN}
    assert len(render_reporting(result).split("\n")) > len(TRIPOD_AI_ITEMS) + len(CLAIM_ITEMS)
