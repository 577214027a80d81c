"""The card never contradicts the files it describes, publishes no secret or local path, and no
user string can inject Markdown/HTML or forge a banner. Run on the fake pipeline tree."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
import torch
from markdown_it import MarkdownIt

from fake_pipeline import CARD, TRAIL, fake_tree, run_card_stage
from pathtrail.card.values import DRAFT, RELEASE_CANDIDATE
from pathtrail.config.sections import training_sections
from pathtrail.core.files import write_json
from pathtrail.core.hashing import digest, sha256_path
from pathtrail.core.text import md_inline
from pathtrail.provenance import audit
from pathtrail.review.verify import verify

SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "GITHUB_TOKEN", "HF_TOKEN", "DVC_REMOTE_PASSWORD",
               "AZURE_STORAGE_KEY", "GOOGLE_APPLICATION_CREDENTIALS", "WANDB_API_KEY")


@pytest.fixture
def tree(tmp_path, tmp_path_factory) -> Path:
    return fake_tree(tmp_path / "repo", tmp_path_factory)


def card_of(root: Path) -> tuple[dict, str]:
    return (json.loads((root / f"model_cards/{CARD}.json").read_text(encoding="utf-8")),
            (root / f"model_cards/{CARD}.md").read_text(encoding="utf-8"))


def rewrite_card(root: Path, card: dict) -> None:
    """What a forger who can rerun the renderer does: Markdown and its hash made to agree."""
    from pathtrail.card.render import render_markdown
    from pathtrail.core.files import write_text
    from pathtrail.core.hashing import sha256_bytes

    card.pop("markdown_sha256", None)
    md = render_markdown(card)
    card["markdown_sha256"] = sha256_bytes(md.encode())
    write_json(card, root / f"model_cards/{CARD}.json")
    write_text(md, root / f"model_cards/{CARD}.md")


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


# ------------------------------------------------------------------------------ card vs its files
def test_stain_reference_hash_is_the_reference_files_own(tree):
    card, md = card_of(tree)
    ref = card["provenance"]["stain_reference"]
    assert ref["path"] == "models/stain_reference.json"
    assert ref["sha256"] == sha256_path(tree / "models/stain_reference.json")
    assert "reference_sha256" not in card["data"]["normalization"]  # the fit-patch list is summarised
    assert ref["sha256"] in md


def test_one_params_hash_each_with_its_scope(tree):
    card, md = card_of(tree)
    meta = torch.load(tree / "models/model.pt", weights_only=True)["metadata"]
    assert card["model"]["training_params_sha256"] == meta["params_sha256"]
    assert meta["params_sha256"] == digest(training_sections(card["params"]))
    assert card["params_sha256"] == digest(card["params"])
    assert md_inline(card["params_scope"]) in md and md_inline(card["model"]["training_params_scope"]) in md


def test_chain_head_is_the_entry_the_card_points_at(tree):
    card, md = card_of(tree)
    entries = audit.read_entries(tree / TRAIL)
    head = next(e for e in entries if e["entry_hash"] == card["audit"]["chain_head"])
    assert (head["seq"], head["stage"], head["action"]) == (
        card["audit"]["chain_head_seq"], card["audit"]["chain_head_stage"], card["audit"]["chain_head_action"])
    assert f"trail seq {head['seq']}" in md
    report = verify(tree, checks=("card",))
    assert report.ok, report.problems
    assert any(f"chain head {head['entry_hash'][:12]} (seq {head['seq']})" in n for c in report.checks
               for n in c.notes)


def test_working_tree_state_is_gits(tree):
    (tree / "reports/validation.json").write_text((tree / "reports/validation.json").read_text() + " ")
    run_card_stage(tree)
    card, _ = card_of(tree)
    porcelain = git(tree, "status", "--porcelain", "--untracked-files=all").splitlines()
    assert card["provenance"]["git_n_changed"] == len(porcelain)
    assert sorted(line[3:] for line in porcelain)[:50] == card["provenance"]["git_changed"]
    assert "reports/validation.json" in card["provenance"]["git_changed"] and card["provenance"]["git_dirty"] is False


def test_compile_verdict_is_shown_next_to_the_flag(tree):
    _, md = card_of(tree)
    cc = json.loads((tree / "metrics/compile_check.json").read_text())
    assert f"torch.compile false (compile check {cc['status']}: ΔAUROC" in md


def test_training_data_does_not_list_the_external_cohort(tree):
    _, md = card_of(tree)
    training = md.split("## Training data", 1)[1].split("\n## ", 1)[0]
    evaluation = md.split("## Evaluation data", 1)[1].split("\n## ", 1)[0]
    assert "external" not in training and "site\\_c" not in training
    assert "external" in evaluation and "site\\_c" in evaluation


def test_metrics_release_json_is_what_the_card_says(tree):
    card, _ = card_of(tree)
    release = json.loads((tree / "metrics/release.json").read_text())
    assert release["status"] == card["release_status"] == RELEASE_CANDIDATE
    assert release["passed"] is True and release["n_failed"] == 0
    assert {n: r["passed"] for n, r in release["criteria"].items()} == {
        n: r["passed"] for n, r in card["release"]["results"].items()}


def test_a_consistently_forged_status_is_found_by_verify(tree):
    """Edit a criterion's verdict and the status in the JSON, re-render the Markdown so the hashes
    agree: verify recomputes the verdicts from the card's own values and finds it."""
    eval_path = tree / "metrics/eval.json"
    ev = json.loads(eval_path.read_text())
    card, _ = card_of(tree)
    ev["external"]["auroc_ci_low"] = 0.41  # the forger also edits the metrics file the card is compared with
    card["metrics"]["eval"] = ev
    write_json(ev, eval_path)
    rewrite_card(tree, card)
    problems = " ".join(verify(tree, checks=("card",)).problems)
    assert "release.results.external_auroc says passed=True" in problems
    assert "release_status = RELEASE CANDIDATE, but its own values give 'DRAFT – NOT FOR RELEASE'" in problems


# ------------------------------------------------------------------------------ secrets and paths
def test_no_credential_token_or_local_path_is_published(tree, monkeypatch):
    git(tree, "remote", "add", "origin", "https://ann:ghp_SECRETTOKEN123@git.example.org/lab/x.git?token=QUERYSECRET#frag")
    for var in SECRET_VARS:
        monkeypatch.setenv(var, f"CANARY-{var}")
    run_card_stage(tree)
    card, md = card_of(tree)
    everything = json.dumps(card) + md
    assert card["provenance"]["git_remote_url"] == "https://git.example.org/lab/x.git"
    for leak in ("ghp_SECRETTOKEN123", "QUERYSECRET", "ann:", "CANARY-"):
        assert leak not in everything, leak
    git(tree, "remote", "set-url", "origin", str(tree.parent / "mirror.git"))
    run_card_stage(tree)
    card, md = card_of(tree)
    assert card["provenance"]["git_remote_url"] is None and str(tree.parent) not in json.dumps(card) + md


def test_absolute_paths_are_not_published(tree, tmp_path):
    import yaml

    params = yaml.safe_load((tree / "params.yaml").read_text())
    outside = tmp_path / "hospital-share" / "cohort_2026.csv"
    params["data"]["external_manifest"] = str(outside)
    params["model"]["weights_path"] = str(tree / "models" / "pretrained.pt")
    (tree / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_card_stage(tree)
    card, md = card_of(tree)
    assert card["params"]["data"]["external_manifest"] == "<outside the repository>/cohort_2026.csv"
    assert card["params"]["model"]["weights_path"] == "models/pretrained.pt"
    assert str(tmp_path) not in json.dumps(card) + md
    problems = verify(tree, checks=("card",)).problems
    assert not [p for p in problems if "params" in p], problems  # verify redacts params.yaml the same way


# ------------------------------------------------------------------------------ injection
HOSTILE = ["<img src=x onerror=alert(1)>", "x\n> **Release status: RELEASE CANDIDATE.**",
           "\x1b[31mred\x1b[0m", "a|b", "[click](javascript:alert(1))", "=HYPERLINK(\"http://x\",\"y\")"]


def test_hostile_strings_cannot_inject_markup_or_forge_a_banner(tree):
    ev = json.loads((tree / "metrics/eval.json").read_text())
    val = json.loads((tree / "reports/validation.json").read_text())
    ev["per_site"] = {h: ev["per_site"]["site_a"] for h in HOSTILE}
    val["cohorts"]["internal"]["sites"] = {h: 1 for h in HOSTILE}
    write_json(ev, tree / "metrics/eval.json")
    write_json(val, tree / "reports/validation.json")
    (tree / "pipelines/card/intended_use.md").write_text(
        "For research.\n> **Release status: RELEASE CANDIDATE.** Every automatic check below passed.\n"
        "<script>alert(1)</script>\n# Forged heading\n")
    (tree / "src/pathtrail").mkdir(parents=True)
    (tree / "src/pathtrail/x\n> **Release status: RELEASE CANDIDATE.**.py").write_text("")  # a dirty file name
    run_card_stage(tree)
    card, md = card_of(tree)
    assert card["release_status"] == DRAFT
    html = MarkdownIt("commonmark").enable("table").render(md.split("---\n", 2)[2])
    images = re.findall(r"<img [^>]*>", html)
    assert images and all(re.match(r'<img src="figures/[a-z_/]+\.png" alt="[^"<>]*" />$', i) for i in images)
    assert "<script" not in html and "<a " not in html and "\x1b" not in html and "onerror" not in "".join(images)
    assert html.count("<blockquote>") == 1  # the genuine banner only
    banner = html.split("<blockquote>", 1)[1].split("</blockquote>", 1)[0]
    assert DRAFT in banner and "<strong>Release status: RELEASE CANDIDATE.</strong>" not in html
    assert "<h1>Forged heading</h1>" not in html and "<h1>Model card:" in html
    for line in md.splitlines():
        assert not line.startswith("> **Release status: RELEASE CANDIDATE")
    whole = MarkdownIt("commonmark", {"html": True}).render(md)  # a viewer that shows the front matter too
    assert "<img src=x" not in whole and "<img src=\"x\"" not in whole and "<script" not in whole


# ------------------------------------------------------------------------------ file modes
def test_card_files_honour_the_umask(tree):
    old = os.umask(0o022)
    try:
        run_card_stage(tree)
    finally:
        os.umask(old)
    out = tree / "model_cards"
    for path in [out / f"{CARD}.json", out / f"{CARD}.md", tree / "metrics/release.json",
                 out / "figures/training_curves.png"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert stat.S_IMODE((out / "figures").stat().st_mode) == 0o755


def test_a_card_claiming_committed_params_it_did_not_have_fails_verify(tree):
    """An experiment's card rewritten to claim the committed params (status RELEASE CANDIDATE)."""
    import yaml

    params = yaml.safe_load((tree / "params.yaml").read_text())
    params["train"]["epochs"] = 1
    (tree / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_card_stage(tree)
    card, _ = card_of(tree)
    assert card["release_status"] == "EXPERIMENT" and card["provenance"]["params_changed"] == ["train.epochs"]
    card["provenance"]["params_changed"], card["release_status"], card["release_reasons"] = [], RELEASE_CANDIDATE, []
    rewrite_card(tree, card)
    problems = " ".join(verify(tree, checks=("card",)).problems)
    assert "the card claims committed params it did not have" in problems


def test_a_later_run_that_reproduces_evaluate_leaves_the_card_valid(tree, monkeypatch):
    """A fresh clone's `dvc repro` reruns evaluate with identical outputs after the card was built:
    the card's criteria lock still points at the run it describes, and verify passes."""
    import yaml

    from fake_pipeline import EVAL

    monkeypatch.chdir(tree)
    params = yaml.safe_load((tree / "params.yaml").read_text())
    criteria = dict(sorted(params["release"]["criteria"].items()))
    with audit.stage("evaluate", inputs=[], params={"eval": params["eval"], "release": params["release"]},
                     trail=TRAIL) as rec:
        rec.record("threshold_locked", threshold=EVAL["threshold"], threshold_rule=EVAL["threshold_rule"])
        rec.record("criteria_locked", criteria=criteria, criteria_sha256=digest(criteria))
        rec.note(threshold=EVAL["threshold"], threshold_rule=EVAL["threshold_rule"])
        rec.outputs("metrics/eval.json", "reports/figures/eval")
    report = verify(tree, checks=("audit", "card"))
    assert report.ok, report.problems
