"""`pathtrail reproduce` end to end on the real pipeline: a tiny repository made from this
checkout's code, `dvc repro`, its card, then a re-run of the card's commit in a worktree."""

from __future__ import annotations

import json
import shutil

import pytest

from pathtrail.cli.main import main
from pathtrail.core.files import write_json
from pathtrail.core.hashing import sha256_file
from tiny_repo import commit_all, dvc_repro, git, make_tiny_repo

pytestmark = pytest.mark.slow  # two real pipeline runs of ~90 s each on 2 cores, plus one to set up


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = make_tiny_repo(tmp_path_factory.mktemp("reproduce") / "repo")
    dvc_repro(root)
    commit_all(root, "pipeline outputs and card")
    return root


def table(out: str) -> dict[str, list[str]]:
    return {cells[0]: cells for line in out.splitlines() if len(cells := line.split(None, 4)) == 5
            and cells[1] in ("sha256", "md5")}


def test_a_fresh_run_of_the_cards_commit_is_identical(pipeline, capsys):
    card = json.loads((pipeline / "model_cards/tiny.json").read_text())
    assert card["provenance"]["git_commit"] == git("rev-parse", "HEAD~1", cwd=pipeline)
    code = main(["reproduce", "--root", str(pipeline)])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    rows = table(out)
    for name in ("models/model.pt", "metrics/eval.json", "data/raw/internal.csv",
                 "model_cards/figures/eval/roc_external.png", "data/store", "predictions"):
        assert rows[name][4] == "identical", name
    assert all(r[4] == "identical" for r in rows.values())
    assert "model_cards/tiny.json" not in rows  # the card records the run itself, not a result
    assert [line for line in err.splitlines() if line.startswith("reproduce: running stage")] == [
        f"reproduce: running stage {s}" for s in ("demo_data", "validate", "split", "stain_fit",
                                                  "normalize", "train", "compile_check", "evaluate",
                                                  "model_card")]
    assert git("status", "--porcelain", cwd=pipeline) == ""


def test_a_tampered_metric_is_marked_with_its_difference(pipeline, tmp_path, capsys):
    root = tmp_path / "repo"
    shutil.copytree(pipeline, root, symlinks=True)
    metrics = json.loads((root / "metrics/eval.json").read_text())
    metrics["external"]["auroc"] += 0.01
    write_json(metrics, root / "metrics/eval.json")
    card_path = root / "model_cards/tiny.json"
    card = json.loads(card_path.read_text())
    card["provenance"]["inputs"]["metrics/eval.json"] = sha256_file(root / "metrics/eval.json")
    card_path.write_text(json.dumps(card, indent=2, sort_keys=True))
    code = main(["reproduce", "--root", str(root)])
    out, _ = capsys.readouterr()
    assert code == 1
    rows = table(out)
    assert rows["metrics/eval.json"][4] == "differs (max |Δ| 0.01)"
    assert rows["models/model.pt"][4] == "identical"
    assert sum(r[4] != "identical" for r in rows.values()) == 1
    assert out.rstrip().endswith("NOT REPRODUCED")
