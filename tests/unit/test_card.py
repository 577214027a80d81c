"""The model card: content, Hugging Face compatibility, determinism, release status."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from fake_pipeline import (
    COMPILE_CHECK,
    EVAL,
    NORMALIZATION,
    SPLIT,
    TRAIN,
    VALIDATION,
    committed_params,
)
from pathtrail.card.build import CardInputs, build_card, manifest_hashes
from pathtrail.card.render import dump_yaml, render_markdown
from pathtrail.card.values import DRAFT, RELEASE_CANDIDATE, flatten
from pathtrail.config.sections import training_sections
from pathtrail.core.hashing import canonical_json, digest, sha256_bytes
from pathtrail.core.text import md_inline
from pathtrail.provenance.environment import environment

COMMIT = "1234567" + "0" * 33  # all digits: a careless YAML writer would turn it into a number


@pytest.fixture(scope="module")
def env() -> dict:
    return environment()


@pytest.fixture
def inputs(env) -> CardInputs:
    params = committed_params()
    params["card"]["name"] = "lymph-node-metastasis"
    criteria = dict(sorted(params["release"]["criteria"].items()))
    return CardInputs(
        params=params,
        intended_use="Research demonstration only.\n",
        train_metrics=copy.deepcopy(TRAIN),
        compile_check=copy.deepcopy(COMPILE_CHECK),
        eval_metrics=copy.deepcopy(EVAL),
        validation=VALIDATION,
        split=SPLIT,
        normalization=NORMALIZATION,
        stain_reference={"path": "models/stain_reference.json", "sha256": "ab" * 32, "fit_patches": 4},
        model_sha256="cd" * 32,
        model_metadata={"params_sha256": digest(training_sections(params))},
        execution={"honoured": True, "stages": {"train": {
            "params": params["execution"], "lifted": False, "honoured": True, "threads": 1,
            "aten_cpu_capability": "AVX2", "problems": []}}},
        criteria_lock={"seq": 5, "criteria_sha256": digest(criteria)},
        chain_head_entry={"seq": 7, "stage": "evaluate", "action": "end"},
        epochs=[{"epoch": 0, "train_loss": 0.6, "val_loss": 0.5, "val_auroc": 0.8, "lr": 0.002}],
        figures={
            "figures/training_curves.png": "ef" * 32,
            "figures/eval/roc_external.png": "01" * 32,
        },
        input_hashes={"metrics/eval.json": "23" * 32},
        dvc_lock={
            "stages": {
                "train": {
                    "deps": [{"path": "data/store", "md5": "aa.dir"}],
                    "outs": [{"path": "models/model.pt", "md5": "bb"}],
                }
            }
        },
        chain_head="45" * 32,
        git={
            "git_commit": COMMIT,
            "git_branch": "main",
            "git_remote_url": None,
            "git_dirty": False,
            "git_modified": [],
            "git_commit_date": "2026-01-02T03:04:05+00:00",
        },
        environment=env,
    )


def with_(inputs: CardInputs, **changes) -> CardInputs:
    return CardInputs(**{**inputs.__dict__, **changes})


def test_card_json_has_the_documented_fields(inputs):
    card, _ = build_card(inputs)
    for key in (
        "params",
        "params_sha256",
        "environment",
        "provenance",
        "metrics",
        "compile_check",
        "audit",
        "checklist",
        "release_status",
        "markdown_sha256",
    ):
        assert key in card, key
    assert card["params"] == inputs.params
    assert card["environment"]["torch_version"] == torch.__version__
    assert card["environment"]["determinism"]["train.seed"] == inputs.params["train"]["seed"]
    assert card["environment"]["compile"]["use_compile"] == inputs.params["train"]["use_compile"]
    prov = card["provenance"]
    assert prov["git_commit"] == COMMIT and prov["git_dirty"] is False
    assert prov["dvc_lock"] == {
        "train": {"deps": {"data/store": "aa.dir"}, "outs": {"models/model.pt": "bb"}}
    }
    assert prov["model_sha256"] == "cd" * 32 and prov["stain_reference"]["sha256"] == "ab" * 32
    assert card["metrics"] == {"eval": EVAL, "train": TRAIN}
    assert card["audit"] == {"chain_head": "45" * 32, "chain_head_seq": 7, "chain_head_stage": "evaluate",
                             "chain_head_action": "end", "trail": "audit/trail.jsonl"}
    assert all(set(c) == {"item", "passed", "evidence"} for c in card["checklist"])


def test_markdown_is_rendered_from_the_json_and_hashed(inputs):
    card, md = build_card(inputs)
    assert card["markdown_sha256"] == sha256_bytes(md.encode())
    assert render_markdown(json.loads(canonical_json(card))) == md


def test_huggingface_parses_the_card_offline(inputs, tmp_path):
    _, md = build_card(inputs)
    path = tmp_path / "card.md"
    path.write_text(md, encoding="utf-8")
    card = ModelCard.load(
        Path(path)
    )  # a Path: a str that is not a file would be taken for a hub repo id
    results = card.data.eval_results
    assert results, "model-index produced no eval results"
    ext = next(r for r in results if r.dataset_name == "external" and r.metric_type == "roc_auc")
    assert ext.task_type == "image-classification"
    assert ext.metric_value == EVAL["external"]["auroc"]
    assert ext.metric_args["ci_low"] == EVAL["external"]["auroc_ci_low"]
    assert ext.metric_args["ci_high"] == EVAL["external"]["auroc_ci_high"]
    assert {r.dataset_name for r in results} >= {"internal_test", "external", "site site_a"}
    assert card.data.pathtrail["git_commit"] == COMMIT  # still a string, not an int


def test_every_flag_is_listed_with_its_value(inputs):
    _, md = build_card(inputs)
    flags = flatten(inputs.params)
    assert "train.distributed.nproc_per_node" in flags and "data.split.seed" in flags
    for key, value in flags.items():
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        assert f"| {md_inline(key)} | {md_inline(shown)} |" in md, key
    card, _ = build_card(inputs)
    assert f"params sha256: {card['params_sha256']}" in md


def test_card_shows_torch_version_and_git_commit(inputs):
    _, md = build_card(inputs)
    assert torch.__version__ in md
    assert COMMIT in md
    assert str(torch.version.git_version) in md


def test_two_builds_from_the_same_inputs_are_byte_identical(inputs):
    card1, md1 = build_card(inputs)
    card2, md2 = build_card(copy.deepcopy(inputs))
    assert md1.encode() == md2.encode()
    assert canonical_json(card1).encode() == canonical_json(card2).encode()
    today = datetime.now(UTC).date().isoformat()
    assert today not in md1 and today not in canonical_json(card1)


def test_sections_and_figures(inputs):
    _, md = build_card(inputs)
    for title in (
        "Model details",
        "Intended use",
        "Factors",
        "Metrics",
        "Evaluation data",
        "Training data",
        "Quantitative analyses",
        "Ethical considerations",
        "Caveats and recommendations",
        "Validation checklist",
        "Figures",
        "Environment",
        "Provenance",
        "Appendix: every flag",
    ):
        assert f"\n## {title}\n" in md, title
    assert "Research demonstration only." in md
    assert "](figures/training_curves.png)" in md and "](figures/eval/roc_external.png)" in md
    assert "0.910 [0.860, 0.940]" in md  # external AUROC with its 95% CI
    assert "| site\\_b | 20 | 5 | 0.920 [0.870, 0.950]" in md


def test_all_passing_inputs_give_a_release_candidate(inputs):
    card, md = build_card(inputs)
    assert [c["item"] for c in card["checklist"] if not c["passed"]] == []
    assert card["release_status"] == RELEASE_CANDIDATE and card["release_reasons"] == []
    assert card["release"]["passed"] and card["release"]["n_failed"] == 0
    body = md.split("---\n", 2)[2]
    assert body.lstrip().startswith(f"> **Release status: {RELEASE_CANDIDATE}.**")
    assert f"> **{DRAFT}**" not in md


def test_dirty_tree_makes_a_draft_with_a_banner(inputs):
    git = {**inputs.git, "git_dirty": True, "git_modified": ["src/pathtrail/training.py"]}
    card, md = build_card(with_(inputs, git=git))
    assert card["release_status"] == DRAFT
    assert any(
        "source differs from its commit: src/pathtrail/training.py" in r for r in card["release_reasons"]
    )
    body = md.split("---\n", 2)[2]
    assert body.lstrip().startswith(f"> **{DRAFT}**")


def test_failed_compile_gate_fails_the_checklist_with_evidence(inputs):
    cc = {
        **COMPILE_CHECK,
        "status": "failed",
        "passed": False,
        "auroc_compiled": 0.9532,
        "auroc_delta": 0.002,
        "failures": ["validation AUROC differs by +0.002000"],
    }
    card, md = build_card(with_(inputs, compile_check=cc))
    items = {c["item"]: c for c in card["checklist"]}
    auc = items["AUROC within ±0.001 (eager vs compiled)"]
    assert (
        not auc["passed"] and "ΔAUROC 0.002000" in auc["evidence"] and "±0.001" in auc["evidence"]
    )
    assert items["Trained with and without torch.compile"]["passed"]  # both runs exist
    assert any(r.startswith("compile-check gate failed") for r in card["release_reasons"])
    assert "- [ ] **AUROC within ±0.001 (eager vs compiled)** — FAIL" in md


def test_skipped_compile_check_and_missing_external_are_reported(inputs):
    ev = {k: v for k, v in EVAL.items() if k != "external"}
    card, _ = build_card(
        with_(inputs, compile_check={"status": "skipped", "passed": None}, eval_metrics=ev)
    )
    failed = {c["item"] for c in card["checklist"] if not c["passed"]}
    assert {
        "Trained with and without torch.compile",
        "External cohort evaluated (AUROC with 95% CI recorded; the release criteria judge the value)",
        "Loss curves match (eager vs compiled)",
    } <= failed
    assert card["release_status"] == DRAFT


def test_stain_normalization_off_fails_its_item(inputs):
    params = copy.deepcopy(inputs.params)
    params["stain"]["enable_stain_norm"] = False
    card, _ = build_card(
        with_(inputs, params=params, normalization={**NORMALIZATION, "enabled": False})
    )
    item = next(c for c in card["checklist"] if c["item"] == "Stain normalization on")
    assert not item["passed"] and "enabled=False" in item["evidence"]


def test_card_degrades_gracefully_with_only_params(inputs, tmp_path):
    card, md = build_card(CardInputs(params=inputs.params))
    assert card["release_status"] == DRAFT
    assert "no git commit" in " ".join(card["release_reasons"])
    assert "_No results recorded._" in md and "_No intended-use statement was provided._" in md
    (tmp_path / "c.md").write_text(md, encoding="utf-8")
    assert ModelCard.load(Path(tmp_path / "c.md")).data.eval_results is None


def test_safe_yaml_quotes_number_like_strings():
    values = [
        "1234567",
        "0123",
        "1e10",
        "12345e7",
        "1.5",
        "12:30",
        "0x1f",
        ".inf",
        "deadbeef",
        "abc",
    ]
    text = dump_yaml({"v": values})
    assert yaml.safe_load(text) == {"v": values}
    assert "'1234567'" in text and "'1e10'" in text and "deadbeef" in text


def test_manifest_hashes_come_from_the_report_or_the_trail():
    report = {
        "cohorts": {
            "internal": {"manifest": "data/raw/internal.csv", "manifest_sha256": "11" * 32},
            "external": {"manifest": "data/raw/external.csv"},
        }
    }
    trail = [
        {
            "action": "start",
            "stage": "validate",
            "run_id": "r1",
            "inputs": {"data/raw/external.csv": "22" * 32},
        },
        {"action": "end", "stage": "validate", "run_id": "r1", "outcome": "ok"},
    ]
    out = manifest_hashes(report, trail)
    assert out["internal"] == {
        "path": "data/raw/internal.csv",
        "sha256": "11" * 32,
        "source": "validation report",
    }
    assert out["external"]["sha256"] == "22" * 32 and "audit trail" in out["external"]["source"]
    assert (
        manifest_hashes(report, trail[:1])["external"]["sha256"] is None
    )  # that run never ended ok


def test_a_stage_that_did_not_honour_the_execution_contract_makes_a_draft(inputs):
    lapsed = {"honoured": False, "stages": {"train": {
        "params": {"threads": 1, "cpu_isa": "avx2"}, "lifted": False, "honoured": False, "threads": 1,
        "aten_cpu_capability": "DEFAULT", "problems": ["ATen runs DEFAULT kernels, the contract pins AVX2"]}}}
    card, md = build_card(with_(inputs, execution=lapsed))
    line = next(c for c in card["checklist"] if c["item"].startswith("Reproducible execution contract"))
    assert not line["passed"] and "ATen runs DEFAULT kernels" in line["evidence"]
    assert card["release_status"].startswith("DRAFT")
    assert "NOT honoured by every stage" in md
    ok, ok_md = build_card(inputs)
    assert "honoured by every stage: the hashed outputs do not depend" in ok_md
    assert ok["environment"]["execution"]["honoured"] is True


def test_card_shows_initial_weights_and_augmentation(inputs):
    card, md = build_card(inputs)
    assert card["model"]["initial_weights_sha256"] is None
    assert "- **Initial weights:** random initialisation (model.weights\\_path null" in md
    assert "- **Augmentation:** dihedral flips and rotations; no stain jitter;" in md
    params = copy.deepcopy(inputs.params)
    params["model"]["weights_path"] = "weights/imagenet.pt"
    params["train"]["stain_augment"] = {"enabled": True, "sigma_scale": 0.1, "sigma_shift": 0.02}
    card, md = build_card(with_(inputs, params=params, model_metadata={
        **inputs.model_metadata, "local_weights_sha256": "9a" * 32}))
    assert card["model"]["initial_weights_sha256"] == "9a" * 32
    assert f"weights/imagenet.pt (sha256 {'9a' * 32}), loaded with torch.load(weights\\_only=True)" in md
    assert "HED stain jitter (sigma\\_scale 0.1, sigma\\_shift 0.02)" in md
    assert {"enabled": True, "sigma_scale": 0.1, "sigma_shift": 0.02} == card["params"]["train"]["stain_augment"]
