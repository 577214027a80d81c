"""`pathtrail predict` / `pathtrail drift` on a tiny real pipeline run in tmp_path: the evaluate
stage's bits, every refusal (weights, stain reference, card edits, release gate, outputs), hostile
manifest strings, and drift on a shifted cohort against an unshifted one."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import tiny_params, write_params
from fake_pipeline import CARD, committed_params, contract_environment, fake_tree
from pathtrail.cli.main import main
from pathtrail.core.hashing import sha256_bytes

STAGES = ["demo_data", "validate", "split", "stain_fit", "normalize", "train", "compile_check", "evaluate",
          "model_card"]


@pytest.mark.slow  # about 40 s: the fake pipeline, keygen, sign and three `verify --release` runs
def test_require_release_passes_a_signed_release_candidate_only(tmp_path, tmp_path_factory, capsys):
    from pathtrail.core.errors import PathTrailError
    from pathtrail.inference.card_model import release_gate

    tree = fake_tree(tmp_path / "repo", tmp_path_factory)
    card_path = tree / f"model_cards/{CARD}.json"
    status = json.loads(card_path.read_text())["release_status"]
    if status != "RELEASE CANDIDATE":  # ATen picked its kernels before the contract's pins were set
        pytest.skip(f"the fake pipeline's card is {status} in this process (an earlier test loaded ATen's "
                    "kernels without the execution contract's pins); test_signing.py covers signing")
    with pytest.raises(PathTrailError, match="UNSIGNED"):
        release_gate(card_path, tree)
    assert main(["keygen", "--out", str(tmp_path / "keys"), "--name", "QA"]) == 0
    key, pub = next((tmp_path / "keys").glob("*.key")), next((tmp_path / "keys").glob("*.pub.json"))
    assert main(["sign", "--key", str(key), "--root", str(tree)]) == 0
    with pytest.raises(PathTrailError, match="UNTRUSTED|no valid signature"):
        release_gate(card_path, tree)  # signed, but by a key the repository does not trust
    gate = release_gate(card_path, tree, [str(pub)])
    assert gate["status"] == "RELEASED" and gate["signatures"]
    capsys.readouterr()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny pipeline, run stage by stage, with its card (model_cards/pathtrail-demo.json)."""
    root = tmp_path_factory.mktemp("predict-world")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.setenv("PATHTRAIL_AUDIT_TRAIL", str(root / "audit/trail.jsonl"))
    # data paths relative to the repository, as in a real one (the card shows them as they are)
    write_params(root, tiny_params(root, **{"compile_check.enabled": False, "train.epochs": 1,
                                            "data.data_root": "data/raw",
                                            "data.internal_manifest": "data/raw/internal.csv",
                                            "data.external_manifest": "data/raw/external.csv"}))
    try:
        with contract_environment(committed_params()["execution"]):  # as `python -m stages.X` sets it
            for name in STAGES:
                importlib.import_module(f"stages.{name}").main(["--log-file", f"logs/{name}.jsonl"])
        yield root
    finally:
        mp.undo()


def card(world: Path) -> Path:
    return next((world / "model_cards").glob("*.json"))


def predict(world: Path, out: Path, *extra: str, manifest: str = "data/raw/external.csv",
            data_root: str | Path | None = None, command: str = "predict") -> int:
    return main([command, "--card", str(card(world)), "--root", str(world), "--manifest", str(world / manifest),
                 "--data-root", str(data_root or world / "data/raw"), "--out", str(out), *extra])


def test_predict_equals_evaluate_bit_for_bit(world, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    assert predict(world, out) == 0
    assert out.read_bytes() == (world / "predictions/external.csv").read_bytes()
    # the internal test split (a validated table is a manifest too) gives evaluate's file as well
    assert predict(world, tmp_path / "test.csv", manifest="data/split/test.csv") == 0
    assert (tmp_path / "test.csv").read_bytes() == (world / "predictions/internal_test.csv").read_bytes()
    side = json.loads((tmp_path / "preds.json").read_text())
    doc = json.loads(card(world).read_text())
    assert side["model"]["sha256"] == sha256_bytes((world / "models/model.pt").read_bytes()) == doc["model"]["sha256"]
    assert side["card"]["sha256"] == sha256_bytes(card(world).read_bytes())
    assert side["card"]["git_commit"] == doc["provenance"]["git_commit"]
    assert side["stain_reference"]["sha256"] == doc["provenance"]["stain_reference"]["sha256"]
    for name, sha in side["outputs"].items():
        assert sha256_bytes((tmp_path / name).read_bytes()) == sha, name
    assert set(side["outputs"]) == {"preds.csv", "preds.decisions.csv", "preds.slides.csv", "preds.patients.csv",
                                    "preds.drift.png"}
    assert "scored" in capsys.readouterr().out


def test_decisions_and_aggregates_follow_the_locked_threshold(world, tmp_path):
    out = tmp_path / "p.csv"
    assert predict(world, out) == 0
    threshold = json.loads((world / "metrics/eval.json").read_text())["threshold"]
    probs = pd.read_csv(world / "predictions/external.csv")
    decided = pd.read_csv(tmp_path / "p.decisions.csv")
    assert (decided.path == probs.path).all() and (decided.score == probs.prob_tumour).all()
    patients = pd.read_csv(tmp_path / "p.patients.csv", dtype={"patient_id": str})
    mean = probs.groupby("patient_id").prob_tumour.mean()
    assert np.allclose(patients.set_index("patient_id").prob_tumour.loc[mean.index], mean, atol=1e-9)
    for frame, col in ((decided, "score"), (patients, "prob_tumour")):
        clear = (frame[col] - threshold).abs() > 1e-9  # decided on the unrounded value
        assert ((frame.decision == "tumour") == (frame[col] >= threshold))[clear].all()
        assert set(frame.decision) <= {"benign", "tumour"}
    metrics = json.loads((world / "metrics/eval.json").read_text())["external"]
    assert len(patients) == metrics["patient_level"]["n_samples"]
    slides = pd.read_csv(tmp_path / "p.slides.csv", dtype={"slide_id": str})
    assert len(slides) == probs.slide_id.nunique() and slides.n_patches.sum() == len(probs)


def test_a_second_run_writes_the_same_bytes(world, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert predict(world, a / "x.csv") == 0 and predict(world, b / "x.csv") == 0
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for p in a.iterdir():
        assert p.read_bytes() == (b / p.name).read_bytes(), p.name


def refused(world, tmp_path, capsys, *extra, card_path=None, **kw) -> str:
    out = tmp_path / "out" / "preds.csv"
    args = list(extra)
    if card_path is not None:
        args = ["--card", str(card_path), *args]  # the later --card wins
    assert predict(world, out, *args, **kw) == 1
    assert not out.parent.exists() or not any(out.parent.iterdir()), "a refusal left outputs"
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_a_model_whose_sha256_differs_is_refused(world, tmp_path, capsys):
    blob = torch.load(world / "models/model.pt", weights_only=True)
    key = next(iter(blob["state_dict"]))
    blob["state_dict"][key] = blob["state_dict"][key] + 1e-3
    torch.save(blob, tmp_path / "other.pt")
    err = refused(world, tmp_path, capsys, "--model", str(tmp_path / "other.pt"))
    assert "model" in err and "sha256" in err and "not the card's file" in err


def test_a_stain_reference_whose_sha256_differs_is_refused(world, tmp_path, capsys):
    ref = json.loads((world / "models/stain_reference.json").read_text())
    ref["max_concentrations"][0] *= 1.01
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    err = refused(world, tmp_path, capsys, "--stain-reference", str(tmp_path / "ref.json"))
    assert "stain reference" in err and "not the card's file" in err


@pytest.mark.parametrize("edit", ["threshold", "params", "params_and_hash", "stain_params"])
def test_an_edited_card_is_refused(world, tmp_path, capsys, edit):
    from pathtrail.core.hashing import digest

    doc = json.loads(card(world).read_text())
    if edit == "threshold":
        doc["metrics"]["eval"]["threshold"] = 0.01
    elif edit == "params":
        doc["params"]["eval"]["threshold_rule"] = "fixed"
    elif edit == "params_and_hash":  # rewritten consistently, but the weights carry their params hash
        doc["params"]["model"]["width"] += 1
        doc["params_sha256"] = digest(doc["params"])
    else:
        doc["params"]["stain"]["enable_stain_norm"] = False
        doc["params_sha256"] = digest(doc["params"])
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(doc))
    err = refused(world, tmp_path, capsys, card_path=edited)
    assert "was edited after it was built" in err


def test_require_release_refuses_a_card_that_is_not_released(world, tmp_path, capsys):
    err = refused(world, tmp_path, capsys, "--require-release")
    assert "not RELEASED" in err


def test_slides_are_refused_for_a_card_trained_on_patches(world, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    assert main(["predict", "--card", str(card(world)), "--root", str(world), "--slides", str(tmp_path / "s.csv"),
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "trained on patches" in err and "no `tile` section" in err and "--manifest" in err
    assert not out.exists()


def test_outputs_over_inputs_or_in_the_data_root_are_refused(world, tmp_path, capsys):
    copy = tmp_path / "m.csv"
    shutil.copy(world / "data/raw/external.csv", copy)
    assert main(["predict", "--card", str(card(world)), "--root", str(world), "--manifest", str(copy),
                 "--data-root", str(world / "data/raw"), "--out", str(copy)]) == 1
    assert copy.read_bytes() == (world / "data/raw/external.csv").read_bytes()
    assert predict(world, world / "data/raw/preds.csv") == 1
    assert not (world / "data/raw/preds.csv").exists()
    assert "nothing was written" in capsys.readouterr().err


def test_a_manifest_with_errors_is_refused_listing_them(world, tmp_path, capsys):
    frame = pd.read_csv(world / "data/raw/external.csv", dtype=str)
    frame.loc[0, "path"] = "missing/nowhere.png"
    frame.to_csv(tmp_path / "bad.csv", index=False)
    err = refused(world, tmp_path, capsys, manifest=str(tmp_path / "bad.csv"))
    assert "error(s) in the manifest" in err and "nowhere.png" in err


def test_hostile_strings_in_a_manifest_stay_data(world, tmp_path, capsys):
    frame = pd.read_csv(world / "data/raw/external.csv", dtype=str)
    frame["site"] = "=HYPERLINK(\"http://x\")"
    frame["patient_id"] = "<b>" + frame["patient_id"] + "</b>"
    frame.to_csv(tmp_path / "hostile.csv", index=False)
    out = tmp_path / "h.csv"
    assert predict(world, out, manifest=str(tmp_path / "hostile.csv")) == 0
    text = out.read_text()
    assert "'=HYPERLINK" in text and ",=HYPERLINK" not in text
    side = json.loads((tmp_path / "h.json").read_text())
    assert side["input"]["patients"] == frame.patient_id.nunique()
    printed = capsys.readouterr()
    assert "\x1b" not in printed.out + printed.err


def shifted_cohort(world: Path, folder: Path) -> Path:
    """The internal test patches with their stain turned (channels rotated, darkened)."""
    table = pd.read_csv(world / "data/split/test.csv", dtype=str)
    for rel in table.path:
        img = np.asarray(Image.open(world / "data/raw" / rel).convert("RGB"), dtype=np.float64)
        turned = np.clip(img[..., [2, 0, 1]] * 0.7, 0, 255).astype(np.uint8)
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(turned).save(folder / rel)
    table.drop(columns=["sha256"]).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def test_drift_tells_a_shifted_cohort_from_an_unshifted_one(world, tmp_path, capsys):
    same, turned = tmp_path / "same.json", tmp_path / "turned.json"
    assert predict(world, same, manifest="data/split/test.csv", command="drift") == 0
    manifest = shifted_cohort(world, tmp_path / "shifted")
    assert main(["drift", "--card", str(card(world)), "--root", str(world), "--manifest", str(manifest),
                 "--data-root", str(tmp_path / "shifted"), "--out", str(turned), "--fail-on-drift"]) == 3
    a, b = json.loads(same.read_text())["drift"], json.loads(turned.read_text())["drift"]
    assert a["verdict"] == "NO DRIFT", a["drifted"]
    assert b["verdict"] == "DRIFT"
    assert a["scores"]["psi"] == 0 and a["scores"]["ks"] == 0  # the internal test set against itself
    assert {"stain_angle_H", "intensity_psi_R"} <= set(b["drifted"])
    assert a["sources"]["reference_scores"]["verified"].startswith("the folder's sha256")
    assert (tmp_path / "same.png").is_file() and (tmp_path / "turned.png").is_file()
    assert "DRIFT" in capsys.readouterr().out


def test_internal_test_scores_missing_or_not_the_cards(world, tmp_path, capsys):
    copy = tmp_path / "w"
    shutil.copytree(world, copy, symlinks=True)
    kept = (copy / "predictions/internal_test.csv").read_text()
    shutil.rmtree(copy / "predictions")
    args = ["--card", str(card(copy)), "--root", str(copy), "--manifest", str(copy / "data/raw/external.csv"),
            "--data-root", str(copy / "data/raw")]
    assert main(["predict", *args, "--out", str(tmp_path / "p.csv")]) == 0  # predict still scores
    checks = {c["name"]: c for c in json.loads((tmp_path / "p.json").read_text())["drift"]["checks"]}
    assert checks["score_psi"]["value"] is None and not checks["score_psi"]["drift"]
    assert "no internal test scores" in checks["score_ks"]["note"]
    assert main(["drift", *args, "--out", str(tmp_path / "d.json")]) == 1  # drift needs them
    assert "no such file" in capsys.readouterr().err and not (tmp_path / "d.json").exists()
    (copy / "predictions").mkdir()
    (copy / "predictions/internal_test.csv").write_text(kept.replace("0.", "0.1", 1))
    assert main(["predict", *args, "--out", str(tmp_path / "q.csv")]) == 1
    assert "is not what the card's evaluate run wrote" in capsys.readouterr().err
    assert not (tmp_path / "q.csv").exists()
