"""The optional stacking ensemble end to end: a tiny repository made from this checkout's code,
`dvc repro` (the main pipeline, which never runs the ensemble), then `dvc repro ensemble/dvc.yaml`
twice, the second forced and with other loader workers: every output the same bytes, and
`pathtrail verify` passing before and after."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from pathtrail.cli.main import main
from pathtrail.core.hashing import sha256_path
from tiny_repo import REPO, commit_all, dvc, dvc_repro, make_tiny_repo, run, tiny_params

pytestmark = pytest.mark.slow  # a tiny main pipeline (~90 s on 2 cores) and two ensemble runs

OUTPUTS = ("models/ensemble/members", "models/ensemble/meta_learner.json", "models/ensemble/predictions",
           "metrics/ensemble.json", "model_cards/ensemble")


def tiny_ensemble() -> dict:
    """pipelines/ensemble/demo.yaml's pairing, the ViT shrunk, two folds for a tiny validation split."""
    from pathtrail.ensemble.params import compose_ensemble

    section = yaml.safe_load(compose_ensemble("demo", REPO / "pipelines"))
    vit = section["ensemble"]["members"]["vit"]["model"]
    vit.update(width=16)
    vit["vit"].update(patch_size=16, num_layers=1, num_heads=2, mlp_ratio=2)
    section["ensemble"]["meta"]["folds"] = 2
    return section


def hashes(root: Path) -> dict[str, str]:
    files = [p for out in OUTPUTS for p in ([root / out] if (root / out).is_file() else (root / out).rglob("*"))
             if p.is_file()]
    return {p.relative_to(root).as_posix(): sha256_path(p) for p in sorted(files)}


def verify(root: Path, capsys) -> str:
    code = main(["verify", "--root", str(root)])
    out = capsys.readouterr().out
    assert code == 0, out
    return out


def test_the_ensemble_runs_after_the_main_pipeline_and_is_bitwise_reproducible(tmp_path, capsys):
    params = tiny_params()
    params["data"]["demo"].update(patients_per_site=24, patches_per_patient=4)  # 2+ validation patients per class
    root = make_tiny_repo(tmp_path / "repo", params)
    dvc_repro(root)
    assert not (root / "models/ensemble").exists()  # a plain `dvc repro` never runs the ensemble
    (root / "ensemble").mkdir(exist_ok=True)
    shutil.copy2(REPO / "ensemble/dvc.yaml", root / "ensemble/dvc.yaml")
    (root / "ensemble/params.yaml").write_text(yaml.safe_dump(tiny_ensemble(), sort_keys=False))
    commit_all(root, "main pipeline outputs; the ensemble's pipeline")
    assert "ensemble" not in dvc("status", "dvc.yaml", cwd=root).stdout
    verify(root, capsys)  # the main pipeline verifies with the ensemble's pipeline present but never run

    dvc_repro(root, "ensemble/dvc.yaml")
    first = hashes(root)
    assert {"models/ensemble/members/vit/model.pt", "models/ensemble/meta_learner.json",
            "models/ensemble/predictions/internal_test.csv", "models/ensemble/predictions/external.csv",
            "metrics/ensemble.json", "model_cards/ensemble/card.json", "model_cards/ensemble/card.md"} <= set(first)
    card = json.loads((root / "model_cards/ensemble/card.json").read_text())["ensemble"]
    members = {m["name"]: m for m in card["members"]}
    assert members["cnn"]["model_sha256"] == sha256_path(root / "models/model.pt")
    assert members["vit"]["model_sha256"] == first["models/ensemble/members/vit/model.pt"]
    assert members["vit"]["arch"] == "monai_vit" and members["cnn"]["arch"] == "small_cnn"
    assert all(m["gate"]["status"] == "skipped" and m["gate"]["gate_ok"] for m in members.values())
    assert card["meta_learner"]["sha256"] == first["models/ensemble/meta_learner.json"]
    assert card["meta_learner"]["members"] == ["cnn", "vit"] and card["meta_learner"]["seed"] == 7
    metrics = json.loads((root / "metrics/ensemble.json").read_text())
    assert 0.0 <= metrics["external"]["auroc"] <= 1.0 and set(metrics["members"]) == {"cnn", "vit"}
    trail = [json.loads(line) for line in (root / "audit/trail.jsonl").read_text().splitlines()]
    ens = [e for e in trail if e.get("stage") == "ensemble"]
    assert [e["action"] for e in ens][:3] == ["start", "threshold_locked", "criteria_locked"]
    assert {e.get("stage") for e in trail} >= {"ensemble_train.vit", "ensemble_compile_check.vit"}
    commit_all(root, "ensemble outputs")
    assert "PASS" in verify(root, capsys)

    # again from scratch, with loader workers (a runtime knob: no result may change); `-s`: the
    # ensemble's stages only (a forced `dvc repro -f ensemble/dvc.yaml` reruns the main pipeline too)
    for stage in ("ensemble_member@vit", "ensemble"):
        run("env", "PATHTRAIL_NUM_WORKERS=2", sys.executable, "-m", "dvc", "repro", "-f", "-s",
            f"ensemble/dvc.yaml:{stage}", cwd=root)
    assert hashes(root) == first
    verify(root, capsys)
