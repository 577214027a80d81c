"""A three-class cohort (`data.label_mode: multiclass`) through every stage in tmp_path, the card
included: softmax over the classes, one-vs-rest thresholds locked before the test data, the most
probable class as the decision, per-class and macro / micro metrics that agree with scikit-learn
to 1e-6, the K-class accuracy, the card's per-class table, and `pathtrail predict` refusing it.

The cohort is the multi-label demo's with its first finding made a third class (benign, tumour,
and any patch showing the finding), so the classes are visible in the pixels."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

from conftest import REPO, tiny_params, write_params
from fake_pipeline import committed_params, contract_environment
from pathtrail.cli.main import main
from pathtrail.config.compose import compose_params
from pathtrail.provenance.audit import chain_problems, read_entries

pytestmark = pytest.mark.slow  # about 3 minutes on 2 cores: two small trainings (eager and compiled)

CLASSES = ["benign", "tumour", "=finding"]  # a formula-like class name on purpose
STAGES = ["validate", "split", "stain_fit", "normalize", "train", "compile_check", "evaluate", "model_card"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiclass")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.setenv("PATHTRAIL_AUDIT_TRAIL", str(root / "audit/trail.jsonl"))
    variant = yaml.safe_load(compose_params(REPO / "pipelines", ["data=demo_multilabel"]))["data"]
    base = {"data.data_root": "data/raw", "data.internal_manifest": "data/raw/internal.csv",
            "data.external_manifest": "data/raw/external.csv"}
    try:
        with contract_environment(committed_params()["execution"]):
            write_params(root, tiny_params(root, **base, **{"data.label_mode": "multilabel",
                                                            "data.label_columns": variant["label_columns"],
                                                            "data.demo.findings": variant["demo"]["findings"]}))
            importlib.import_module("stages.demo_data").main(["--log-file", "logs/demo_data.jsonl"])
            finding = variant["label_columns"][0]
            for cohort in ("internal", "external"):
                path = root / f"data/raw/{cohort}.csv"
                table = pd.read_csv(path)
                table["label"] = np.where(table[finding] == 1, 2, table["label"])
                table[["path", "label", "patient_id", "slide_id", "site"]].to_csv(path, index=False)
            write_params(root, tiny_params(root, **base, **{"data.label_mode": "multiclass", "data.classes": CLASSES}))
            for name in STAGES:
                importlib.import_module(f"stages.{name}").main(["--log-file", f"logs/{name}.jsonl"])
        yield root
    finally:
        mp.undo()


def test_every_stage_ran_and_thresholds_were_locked_before_the_test_data(world):
    entries = read_entries(world / "audit/trail.jsonl")
    assert chain_problems(entries) == []
    ends = [e for e in entries if e["action"] == "end"]
    assert [e["stage"] for e in ends] == ["demo_data", *STAGES] and all(e["outcome"] == "ok" for e in ends)
    actions = [e["action"] for e in entries if e["stage"] == "evaluate"]
    assert actions.index("threshold_locked") < actions.index("criteria_locked") < actions.index("end")
    ev = json.loads((world / "metrics/eval.json").read_text())
    assert ev["label_mode"] == "multiclass" and set(ev["thresholds"]) == set(CLASSES)


def test_the_model_is_a_softmax_over_the_classes(world):
    meta = torch.load(world / "models/model.pt", weights_only=True)["metadata"]
    assert meta["num_classes"] == 3
    val = pd.read_csv(world / "models/val_probs.csv")
    probs = val[[c for c in val.columns if c.startswith("prob_")]].to_numpy()
    assert probs.shape[1] == 3 and np.allclose(probs.sum(axis=1), 1.0)


def test_metrics_agree_with_sklearn_per_class_macro_micro_and_accuracy(world):
    ev = json.loads((world / "metrics/eval.json").read_text())
    for cohort in ("internal_test", "external"):
        preds = pd.read_csv(world / f"predictions/{cohort}.csv", keep_default_na=False)
        p = preds[[f"prob_{c}" for c in CLASSES]].to_numpy()
        y = preds["label"].to_numpy()
        onehot = np.eye(3, dtype=int)[y]
        m = ev[cohort]
        for k, name in enumerate(CLASSES):
            if onehot[:, k].min() == onehot[:, k].max():
                continue
            assert m["labels"][name]["auroc"] == pytest.approx(roc_auc_score(onehot[:, k], p[:, k]), abs=1e-6)
            assert m["labels"][name]["auprc"] == pytest.approx(average_precision_score(onehot[:, k], p[:, k]),
                                                               abs=1e-6)
        present = [k for k in range(3) if 0 < onehot[:, k].sum() < len(y)]
        assert m["auroc"] == pytest.approx(np.mean([roc_auc_score(onehot[:, k], p[:, k]) for k in present]), abs=1e-6)
        assert m["micro_auroc"] == pytest.approx(roc_auc_score(onehot, p, average="micro"), abs=1e-6)
        assert m["overall"]["accuracy"] == pytest.approx(accuracy_score(y, p.argmax(1)), abs=1e-6)
        decided = preds["decision"].str.lstrip("'").to_numpy()  # formula cells are neutralised with a quote
        assert (decided == np.asarray(CLASSES, dtype=object)[p.argmax(1)]).all()
        for k, name in enumerate(CLASSES):
            if (y == k).any():
                assert m["labels"][name]["decision_recall"] == pytest.approx(((p.argmax(1) == k) & (y == k)).sum() / (y == k).sum())


def test_the_card_has_a_per_class_table(world):
    card = json.loads(next((world / "model_cards").glob("*.json")).read_text())
    assert card["labels"]["mode"] == "multiclass" and card["labels"]["names"] == CLASSES
    text = next((world / "model_cards").glob("*.md")).read_text()
    assert "## Per class" in text and "Accuracy (95% CI)" in text
    assert "| benign | Internal test |" in text and "| tumour | External |" in text
    assert "finding | Internal test |" in text  # the formula-like name is shown as text


def test_predict_refuses_a_multiclass_card_with_what_to_do(world, tmp_path, capsys):
    card = next((world / "model_cards").glob("*.json"))
    code = main(["predict", "--card", str(card), "--root", str(world), "--manifest",
                 str(world / "data/raw/external.csv"), "--data-root", str(world / "data/raw"),
                 "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err
    assert code == 1 and "multi-class model (data.label_mode: multiclass)" in err and "Traceback" not in err
    assert not (tmp_path / "p.csv").exists()
