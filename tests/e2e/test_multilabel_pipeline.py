"""The multi-label demo variant (`data=demo_multilabel`) through every stage in tmp_path, the card
included: per-label thresholds locked before the test data, predictions with a probability and
a decision per label, metrics that agree with scikit-learn per label (and macro / micro) to 1e-6,
the compile check per label, the card's per-label table, and `pathtrail predict` refusing the
multi-label card with what to do instead."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import average_precision_score, roc_auc_score

from conftest import REPO, tiny_params, write_params
from fake_pipeline import committed_params, contract_environment
from pathtrail.cli.main import main
from pathtrail.config.compose import compose_params
from pathtrail.provenance.audit import chain_problems, read_entries

pytestmark = pytest.mark.slow  # about 3 minutes on 2 cores: two small trainings (eager and compiled)

STAGES = ["demo_data", "validate", "split", "stain_fit", "normalize", "train", "compile_check", "evaluate",
          "model_card"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("multilabel")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.setenv("PATHTRAIL_AUDIT_TRAIL", str(root / "audit/trail.jsonl"))
    variant = yaml.safe_load(compose_params(REPO / "pipelines", ["data=demo_multilabel"]))["data"]
    params = tiny_params(root, **{"data.data_root": "data/raw", "data.internal_manifest": "data/raw/internal.csv",
                                  "data.external_manifest": "data/raw/external.csv",
                                  "data.label_mode": variant["label_mode"],
                                  "data.label_columns": variant["label_columns"],
                                  "data.demo.findings": variant["demo"]["findings"]})
    write_params(root, params)
    try:
        with contract_environment(committed_params()["execution"]):
            for name in STAGES:
                importlib.import_module(f"stages.{name}").main(["--log-file", f"logs/{name}.jsonl"])
        yield root, variant["label_columns"]
    finally:
        mp.undo()


def test_every_stage_ran_and_thresholds_were_locked_before_the_test_data(world):
    root, names = world
    entries = read_entries(root / "audit/trail.jsonl")
    assert chain_problems(entries) == []
    ends = [e for e in entries if e["action"] == "end"]
    assert [e["stage"] for e in ends] == STAGES and all(e["outcome"] == "ok" for e in ends)
    evaluate = [e for e in entries if e["stage"] == "evaluate"]
    actions = [e["action"] for e in evaluate]
    assert actions.index("threshold_locked") < actions.index("criteria_locked") < actions.index("end")
    locked = next(e for e in evaluate if e["action"] == "threshold_locked")
    ev = json.loads((root / "metrics/eval.json").read_text())
    assert set(locked["thresholds"]) == set(names) and locked["thresholds"] == ev["thresholds"]


def test_the_model_has_one_output_per_label(world):
    root, names = world
    meta = torch.load(root / "models/model.pt", weights_only=True)["metadata"]
    assert meta["label_mode"] == "multilabel" and meta["labels"] == names and meta["num_classes"] == len(names)
    val = pd.read_csv(root / "models/val_probs.csv")
    assert [f"prob_{n}" for n in names] == [c for c in val.columns if c.startswith("prob_")]
    assert not np.allclose(val[[f"prob_{n}" for n in names]].sum(axis=1), 1.0)  # sigmoids, not a softmax


def test_metrics_agree_with_sklearn_per_label_macro_and_micro(world):
    root, names = world
    ev = json.loads((root / "metrics/eval.json").read_text())
    for cohort in ("internal_test", "external"):
        preds = pd.read_csv(root / f"predictions/{cohort}.csv")
        y = preds[[f"label_{n}" for n in names]].to_numpy()
        p = preds[[f"prob_{n}" for n in names]].to_numpy()
        m = ev[cohort]
        for k, name in enumerate(names):
            assert m["labels"][name]["auroc"] == pytest.approx(roc_auc_score(y[:, k], p[:, k]), abs=1e-6)
            assert m["labels"][name]["auprc"] == pytest.approx(average_precision_score(y[:, k], p[:, k]), abs=1e-6)
            decided = (p[:, k] >= ev["thresholds"][name]).astype(int)
            assert (preds[f"decision_{name}"].to_numpy() == decided).all()
        assert m["auroc"] == pytest.approx(roc_auc_score(y, p, average="macro"), abs=1e-6)
        assert m["micro_auroc"] == pytest.approx(roc_auc_score(y, p, average="micro"), abs=1e-6)
        assert m["micro_auprc"] == pytest.approx(average_precision_score(y, p, average="micro"), abs=1e-6)
        assert m["auroc_ci_low"] <= m["auroc"] <= m["auroc_ci_high"]
    assert set(ev["per_site"]) == {"site_a", "site_b"}


def test_compile_check_compares_each_label(world):
    root, names = world
    check = json.loads((root / "metrics/compile_check.json").read_text())
    assert check["status"] == "passed", check.get("failures")
    assert len(check["auroc_per_label_eager"]) == len(names) == len(check["auroc_per_label_delta"])


def test_the_card_has_a_per_label_table(world):
    root, names = world
    card = json.loads(next((root / "model_cards").glob("*.json")).read_text())
    assert card["labels"]["names"] == names and set(card["labels"]["thresholds"]) == set(names)
    text = next((root / "model_cards").glob("*.md")).read_text()
    assert "## Per label" in text and "### Summaries over labels" in text
    for name in names:
        assert f"| {name} | Internal test |" in text and f"| {name} | External |" in text


def test_predict_refuses_a_multilabel_card_with_what_to_do(world, tmp_path, capsys):
    root, _ = world
    card = next((root / "model_cards").glob("*.json"))
    code = main(["predict", "--card", str(card), "--root", str(root), "--manifest",
                 str(root / "data/raw/external.csv"), "--data-root", str(root / "data/raw"),
                 "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err
    assert code == 1 and "multi-label model" in err and "Traceback" not in err
    assert not (tmp_path / "p.csv").exists()
