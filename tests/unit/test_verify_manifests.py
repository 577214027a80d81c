"""`pathtrail verify` re-hashes the cohort manifests the card names, wherever they live: a manifest
edited after the run (labels flipped) fails verify, named, even outside `data.data_root` and even
outside the repository."""

from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path

import pytest
import yaml

from fake_pipeline import CARD, TRAIL, dvc, fake_tree, run_card_stage, write_outputs
from pathtrail.core.files import write_json
from pathtrail.core.hashing import sha256_path
from pathtrail.provenance import audit
from pathtrail.review.verify import verify

CARD_JSON = f"model_cards/{CARD}.json"


def write_manifest(path: Path, flip: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "patient_id", "slide_id", "site"])
        for i in range(8):
            label = ("tumour", "benign")[(i + flip) % 2]
            w.writerow([f"p{i}.png", label, f"pt{i // 2}", f"s{i}", "site_a"])


def use_manifest(tree: Path, manifest: Path, name: str) -> None:
    """Run validate (recorded as the real stage records it) on `manifest`, named `name` in
    params.yaml, then the stages that read the data params, and the card, as `dvc repro` would."""
    params = yaml.safe_load((tree / "params.yaml").read_text())
    params["data"]["internal_manifest"] = name
    (tree / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    report = json.loads((tree / "reports/validation.json").read_text())
    report["cohorts"]["internal"].update(manifest=name, manifest_sha256=sha256_path(manifest))
    with contextlib.chdir(tree):
        with audit.stage("validate", inputs=[name], params={"data": params["data"]}, trail=TRAIL) as rec:
            write_json(report, tree / "reports/validation.json")
            rec.outputs("reports/validation.json")
        with audit.stage("split", inputs=[], params={"data": params["data"]}, trail=TRAIL) as rec:
            rec.outputs("reports/split.json")
        with audit.stage("train", inputs=[], params={s: params[s] for s in ("train", "model")}, trail=TRAIL) as rec:
            write_outputs(tree, "train", params)  # the weights record the hash of the data params
            rec.outputs("models/model.pt", "metrics/train.json", "plots/train/epochs.csv")
    dvc("commit", "-f", "-q", "validate", "split", "train", "compile_check", cwd=tree)
    run_card_stage(tree)
    dvc("commit", "-f", "-q", "model_card", cwd=tree)


@pytest.fixture
def tree(tmp_path, tmp_path_factory) -> Path:
    return fake_tree(tmp_path / "repo", tmp_path_factory)


def test_labels_flipped_in_a_manifest_outside_the_data_root(tree):
    manifest = tree / "manifests/internal.csv"  # data.data_root is data/raw
    write_manifest(manifest)
    use_manifest(tree, manifest, "manifests/internal.csv")
    card = json.loads((tree / CARD_JSON).read_text())
    assert card["provenance"]["manifests"]["internal"]["path"] == "manifests/internal.csv"
    report = verify(tree)
    assert report.ok, report.problems
    write_manifest(manifest, flip=True)
    found = verify(tree).problems
    assert any(p.startswith(f"{CARD_JSON}: card field provenance.manifests.internal: the manifest "
                            "manifests/internal.csv has sha256") and "Rerun `dvc repro`" in p for p in found), found
    assert any(p.startswith("stage validate: its outputs match run seq")
               and "read manifests/internal.csv with sha256" in p for p in found), found


def test_labels_flipped_in_a_manifest_outside_the_repository(tree, tmp_path):
    manifest = tmp_path / "hospital-share" / "cohort_2026.csv"
    write_manifest(manifest)
    use_manifest(tree, manifest, str(manifest))
    card = json.loads((tree / CARD_JSON).read_text())
    shown = card["provenance"]["manifests"]["internal"]["path"]
    assert shown == "<outside the repository>/cohort_2026.csv"
    report = verify(tree)
    assert report.ok, report.problems
    assert any("outside the repository not re-hashed" in n for c in report.checks for n in c.notes)
    write_manifest(manifest, flip=True)
    found = verify(tree, checks=("card",)).problems
    assert any(f"card field provenance.manifests.internal: the manifest {shown} has sha256" in p for p in found), found


def test_a_missing_manifest_is_named(tree):
    manifest = tree / "manifests/internal.csv"
    write_manifest(manifest)
    use_manifest(tree, manifest, "manifests/internal.csv")
    manifest.unlink()
    found = verify(tree, checks=("card",)).problems
    assert any("the manifest manifests/internal.csv is missing, but the card recorded" in p for p in found), found
