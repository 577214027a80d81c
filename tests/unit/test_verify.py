"""`pathtrail verify` on a fake pipeline tree: the untouched tree passes, every tampering is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fake_pipeline import CARD, TRAIL, fake_tree
from pathtrail.core.files import write_json
from pathtrail.provenance import audit
from pathtrail.review.lock_check import lock_problems, parse_dvc_status
from pathtrail.review.verify import Report, format_report, verify

CARD_JSON = f"model_cards/{CARD}.json"


@pytest.fixture
def tree(tmp_path, tmp_path_factory) -> Path:
    return fake_tree(tmp_path / "repo", tmp_path_factory)


def problems(root: Path, *checks: str) -> list[str]:
    return verify(root, checks=checks).problems


def edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    write_json(data, path)


def test_untampered_tree_passes_every_check(tree):
    report = verify(tree)
    assert report.problems == []
    assert [c.name for c in report.checks] == ["audit", "artifacts", "card", "dvc", "signature"]
    text = format_report(report)
    assert "RESULT: PASS" in text and "[FAIL]" not in text


def test_one_byte_of_the_weights_changed(tree):
    model = tree / "models/model.pt"
    data = bytearray(model.read_bytes())
    data[100] ^= 1
    model.unlink()  # a DVC-cached file may be a link into the cache: replace it, never edit in place
    model.write_bytes(bytes(data))
    found = problems(tree, "artifacts", "card", "dvc")
    assert any(
        p.startswith("models/model.pt (stage train, trail seq") and "sha256 is" in p for p in found
    )
    assert any(
        "card field provenance.model_sha256" in p and "models/model.pt has sha256" in p
        for p in found
    )
    assert any(p.startswith("models/model.pt: md5") and "out of train" in p for p in found)


def test_a_metric_edited_in_the_card_json(tree):
    edit_json(tree / CARD_JSON, lambda c: c["metrics"]["eval"]["external"].update(auroc=0.99))
    found = problems(tree, "card", "artifacts")
    assert any(
        "card field metrics.eval.external.auroc = 0.99 but metrics/eval.json has 0.91" in p
        for p in found
    )
    assert any("does not match the Markdown rendered from the card JSON" in p for p in found)
    assert any(p.startswith(f"{CARD_JSON} (stage model_card") for p in found)


def test_a_metric_changed_in_eval_json_after_the_card(tree):
    edit_json(tree / "metrics/eval.json", lambda e: e["per_site"]["site_b"].update(auroc=0.5))
    found = problems(tree, "card")
    assert any(
        "card field metrics.eval.per_site.site_b.auroc = 0.92 but metrics/eval.json has 0.5" in p
        for p in found
    )
    assert any("card field provenance.inputs.metrics/eval.json" in p for p in found)


def test_the_markdown_edited(tree):
    md = tree / f"model_cards/{CARD}.md"
    md.write_text(md.read_text().replace("0.910 [0.860, 0.940]", "0.990 [0.960, 0.999]"))
    found = problems(tree, "card")
    assert any(f"{CARD}.md: sha256" in p and "markdown_sha256" in p for p in found)
    assert any(f"{CARD}.md line" in p and "0.990 [0.960, 0.999]" in p for p in found)


@pytest.mark.parametrize(
    "tamper, message",
    [
        ("edit", "entry_hash mismatch (entry edited)"),
        ("delete", "entry deleted or reordered"),
        ("reorder", "entry deleted or reordered"),
    ],
)
def test_audit_entry_tampering(tree, tamper, message):
    path = tree / TRAIL
    lines = path.read_text().splitlines()
    if tamper == "edit":
        entry = json.loads(lines[9])
        entry["outputs"]["models/model.pt"] = "0" * 64
        lines[9] = json.dumps(entry, sort_keys=True)
    elif tamper == "delete":
        del lines[4]
    else:
        lines[4], lines[5] = lines[5], lines[4]
    path.write_text("\n".join(lines) + "\n")
    found = problems(tree, "audit")
    assert any(message in p and p.startswith(f"{TRAIL}: audit entry #") for p in found), found


def test_params_edited_after_the_run(tree):
    path = tree / "params.yaml"
    params = yaml.safe_load(path.read_text())
    old = params["train"]["lr"]
    params["train"]["lr"] = 0.01
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    found = problems(tree, "card", "dvc")
    assert any(
        p.startswith("params.yaml changed since the run: train.lr")
        and f"dvc.lock {old}, now 0.01" in p
        and "train" in p
        and "model_card" in p
        for p in found
    ), found
    assert any(
        f"card params differ from params.yaml: train.lr (card {old}, params.yaml 0.01)" in p
        for p in found
    )
    assert not any(
        "changed since the run: train modified" in p for p in found
    )  # dvc's coarser duplicate


def test_a_pipeline_run_after_the_card_makes_it_stale(tree):
    with audit.stage("evaluate", inputs=[], trail=tree / TRAIL):
        pass
    found = problems(tree, "audit", "card")
    assert any("run of stage evaluate" in p and "after the card's chain head" in p for p in found)


def test_a_rerun_that_reproduces_the_outputs_keeps_the_card_valid(tree, monkeypatch):
    """A fresh clone's `dvc repro` reruns stages whose outputs come out bit for bit the same."""
    monkeypatch.chdir(tree)
    ends = [e for e in audit.read_entries(tree / TRAIL)
            if e["action"] == "end" and e["outcome"] == "ok" and e.get("outputs")]
    last = ends[-1] if ends[-1]["stage"] != "model_card" else ends[-2]
    with audit.stage(last["stage"], inputs=[], trail=tree / TRAIL) as rec:
        rec.outputs(*last["outputs"])
    assert not [p for p in problems(tree, "audit", "card") if "after the card's chain head" in p]
    (tree / next(iter(last["outputs"]))).write_bytes(b"changed")
    with audit.stage(last["stage"], inputs=[], trail=tree / TRAIL) as rec:
        rec.outputs(*last["outputs"])
    assert any(f"run of stage {last['stage']}" in p and "differ" in p
               for p in problems(tree, "audit", "card"))


def test_unknown_commit_and_chain_head_in_the_card(tree):
    edit_json(
        tree / CARD_JSON,
        lambda c: (
            c["provenance"].update(git_commit="f" * 40),
            c["audit"].update(chain_head="e" * 64),
        ),
    )
    found = problems(tree, "card")
    assert any(
        f"provenance.git_commit = {'f' * 40} is not a commit in this repository" in p for p in found
    )
    assert any("audit.chain_head" in p and "not the hash of any entry" in p for p in found)


def test_a_figure_replaced(tree):
    (tree / "model_cards/figures/training_curves.png").write_bytes(b"not a png")
    found = problems(tree, "card", "artifacts")
    assert any("card field figures.figures/training_curves.png" in p for p in found)
    assert any(p.startswith("model_cards/figures (stage model_card") for p in found)


def test_a_missing_output_is_named(tree):
    (tree / "metrics/compile_check.json").unlink()
    found = problems(tree, "artifacts", "dvc")
    assert any(
        p.startswith("metrics/compile_check.json (stage compile_check") and "missing" in p
        for p in found
    )
    assert any(p.startswith("metrics/compile_check.json: deleted since dvc.lock") for p in found)


def test_lock_comparison_on_a_hand_written_lock(tmp_path):
    (tmp_path / "params.yaml").write_text(
        "train:\n  lr: 0.1\n  seed: 1\ndata:\n  split:\n    seed: 7\n"
    )
    (tmp_path / "a.txt").write_text("hello\n")
    lock = {
        "schema": "2.0",
        "stages": {
            "train": {
                "params": {
                    "params.yaml": {"train": {"lr": 0.2, "seed": 1}, "data.split": {"seed": 7}}
                },
                "deps": [{"path": "a.txt", "md5": "b1946ac92492d2347c6235b4d2611184"}],
                "outs": [{"path": "store", "md5": "00.dir"}],
            },
            "evaluate": {
                "params": {"params.yaml": {"train.lr": 0.2, "eval": {"seed": 3}}},
                "deps": [{"path": "a.txt", "md5": "0" * 32}],
            },
        },
    }
    found = lock_problems(lock, tmp_path)
    assert found[("param", "params.yaml", "train.lr")] == (
        "params.yaml changed since the run: train.lr (dvc.lock 0.2, now 0.1; stages evaluate, train)"
    )
    assert "eval.seed (dvc.lock 3, now <absent>" in found[("param", "params.yaml", "eval.seed")]
    assert found[("file", "a.txt")] == (
        "a.txt: md5 b1946ac92492d2347c6235b4d2611184 but dvc.lock has "
        + "0" * 32
        + " (dep of evaluate)"
    )
    assert len(found) == 3  # directories are left to dvc status; unchanged seeds are not reported


def test_parse_dvc_status_groups_and_names():
    status = {
        "train": [
            {"changed deps": {"data/store": "modified", "params.yaml": {"train": "modified"}}},
            {"changed outs": {"models/model.pt": "deleted"}},
        ],
        "evaluate": [{"changed deps": {"data/store": "modified"}}, "changed command"],
    }
    found = parse_dvc_status(status)
    assert (
        found[("file", "data/store")]
        == "data/store: modified since dvc.lock (dep of evaluate, dep of train)"
    )
    assert (
        found[("file", "models/model.pt")]
        == "models/model.pt: deleted since dvc.lock (out of train)"
    )
    assert (
        found[("param", "params.yaml", "train")]
        == "params.yaml changed since the run: train modified (train)"
    )
    assert (
        found[("stage", "evaluate", "changed command")]
        == "stage evaluate: changed command since dvc.lock"
    )


def test_format_report_names_each_disagreement():
    from pathtrail.review.verify import Check

    report = Report(
        "repo", [Check("audit", notes=["3 entries"]), Check("card", problems=["x.json: bad field"])]
    )
    text = format_report(report)
    assert "[PASS] audit trail: 3 entries" in text
    assert "[FAIL] model card" in text and "    - x.json: bad field" in text
    assert text.rstrip().endswith("RESULT: FAIL (1 disagreement)")
