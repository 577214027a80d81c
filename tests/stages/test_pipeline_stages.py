"""Every stage's `main([...])`, run in order in a temporary folder on a tiny demo cohort."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny_params, write_params
from pathtrail.core.files import read_table
from pathtrail.core.hashing import sha256_file
from pathtrail.provenance.audit import chain_problems, read_entries

STAGES = ["demo_data", "validate", "split", "stain_fit", "normalize", "train", "compile_check", "evaluate"]


def run_stage(name: str, *extra: str) -> None:
    importlib.import_module(f"stages.{name}").main(["--log-file", f"logs/{name}.jsonl", *extra])


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.setenv("PATHTRAIL_AUDIT_TRAIL", str(root / "audit/trail.jsonl"))
    write_params(root, tiny_params(root))
    try:
        for name in STAGES:
            run_stage(name)
        yield root
    finally:
        mp.undo()


def test_every_stage_wrote_its_outputs(pipeline):
    for rel in ["data/raw/internal.csv", "data/validated/internal.csv", "data/split/train.csv",
                "models/stain_reference.json", "data/store/index.csv", "models/model.pt",
                "metrics/train.json", "metrics/compile_check.json", "metrics/eval.json",
                "predictions/internal_test.csv", "predictions/external.csv",
                "reports/figures/stain_before_after.png", "plots/eval/roc_external.csv"]:
        assert (pipeline / rel).is_file(), rel


def test_audit_trail_has_a_start_and_end_per_stage_and_an_intact_chain(pipeline):
    entries = read_entries(pipeline / "audit/trail.jsonl")
    assert chain_problems(entries) == []
    ends = [e for e in entries if e["action"] == "end"]
    assert [e["stage"] for e in ends] == STAGES
    assert all(e["outcome"] == "ok" for e in ends)
    train_start = next(e for e in entries if e["stage"] == "train" and e["action"] == "start")
    assert train_start["inputs"]["data/store"] is not None and len(train_start["params_sha256"]) == 64


def test_model_file_is_plain_data_with_metadata(pipeline):
    blob = torch.load(pipeline / "models/model.pt", weights_only=True)
    meta = blob["metadata"]
    assert meta["classes"] == ["benign", "tumour"] and meta["arch"] == "small_cnn"
    assert len(meta["stain_reference_sha256"]) >= 1 and len(meta["params_sha256"]) == 64


def test_eval_metrics_are_keyed_by_cohort_with_cis(pipeline):
    ev = json.loads((pipeline / "metrics/eval.json").read_text())
    for cohort in ("internal_test", "external"):
        m = ev[cohort]
        assert 0.0 <= m["auroc"] <= 1.0
        assert m["auroc_ci_low"] <= m["auroc"] <= m["auroc_ci_high"]
        assert "auprc" in m
    # per_site is the internal test split's sites; the one external site is the `external` row itself
    assert set(ev["per_site"]) == {"site_a", "site_b"} and "external_per_site" not in ev
    preds = pd.read_csv(pipeline / "predictions/external.csv")
    assert {"path", "patient_id", "label", "prob_benign", "prob_tumour"} <= set(preds.columns)
    assert np.allclose(preds.prob_benign + preds.prob_tumour, 1.0)


def test_compile_check_reports_the_comparison(pipeline):
    cc = json.loads((pipeline / "metrics/compile_check.json").read_text())
    assert cc["status"] in {"passed", "failed", "not_available"}
    if cc["status"] != "not_available":
        assert {"passed", "auroc_eager", "auroc_compiled", "auroc_delta"} <= set(cc)
        assert cc["auroc_delta"] == pytest.approx(cc["auroc_compiled"] - cc["auroc_eager"])


def rerun_dir(pipeline: Path, tmp_path: Path) -> Path:
    """Where a test reruns a stage: inside the pipeline (a stage writes only inside the working
    directory, `pathtrail.core.output_paths`), one folder per test."""
    return pipeline / "reruns" / tmp_path.name


def test_training_stage_is_bitwise_reproducible(pipeline, tmp_path, monkeypatch):
    monkeypatch.chdir(pipeline)
    tmp_path = rerun_dir(pipeline, tmp_path)
    run_stage("train", "--model-out", str(tmp_path / "model.pt"), "--metrics", str(tmp_path / "train.json"),
              "--val-probs", str(tmp_path / "val.csv"), "--curves", str(tmp_path / "curves"),
              "--other-mode-run", str(tmp_path / "other.pt"))
    a = torch.load(pipeline / "models/model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "train.json").read_bytes() == (pipeline / "metrics/train.json").read_bytes()
    # the compiled run made beside it, in a second process, too
    assert (tmp_path / "other.pt").read_bytes() == (pipeline / "models/other_mode_run.pt").read_bytes()


def test_the_run_beside_train_is_the_one_compile_check_would_train(pipeline, tmp_path, monkeypatch):
    """compile_check given no run from train trains the compiled run itself: the report and the
    curves are the bytes the pipeline's compile_check wrote from the run made beside train."""
    other = torch.load(pipeline / "models/other_mode_run.pt", weights_only=True)
    assert other["metadata"]["computed"] and other["metadata"]["use_compile"]
    assert other["metadata"]["compile"].get("used") is True
    monkeypatch.chdir(pipeline)
    tmp_path = rerun_dir(pipeline, tmp_path)
    run_stage("compile_check", "--out", str(tmp_path / "cc.json"), "--curves", str(tmp_path / "loss.csv"),
              "--figure", str(tmp_path / "loss.png"), "--other-mode-run", str(tmp_path / "absent.pt"))
    assert (tmp_path / "cc.json").read_bytes() == (pipeline / "metrics/compile_check.json").read_bytes()
    assert (tmp_path / "loss.csv").read_bytes() == (pipeline / "plots/compile_check/loss.csv").read_bytes()
    entries = read_entries(pipeline / "audit/trail.jsonl")
    train_end = next(e for e in entries if e.get("stage") == "train" and e.get("action") == "end")
    assert train_end["facts"]["other_mode_run"] == {"computed": True, "use_compile": True}
    # it scored the external cohort too, in its (compiled) mode, and says which table it scored
    external = pipeline / "data/validated/external.csv"
    assert other["metadata"]["external_sha256"] == sha256_file(external)
    assert len(other["metadata"]["external_probs"]) == len(read_table(external))


def test_external_scores_of_another_table_are_not_used(pipeline, tmp_path, monkeypatch):
    """A run file whose external probabilities score another table: compile_check scores the
    external cohort itself and writes the pipeline's report."""
    monkeypatch.chdir(pipeline)
    tmp_path = rerun_dir(pipeline, tmp_path)
    tmp_path.mkdir(parents=True)
    blob = torch.load(pipeline / "models/other_mode_run.pt", weights_only=True)
    blob["metadata"]["external_probs"] = torch.zeros_like(blob["metadata"]["external_probs"])
    blob["metadata"]["external_sha256"] = "0" * 64
    torch.save(blob, tmp_path / "stale.pt")
    run_stage("compile_check", "--out", str(tmp_path / "cc.json"), "--curves", str(tmp_path / "loss.csv"),
              "--figure", str(tmp_path / "loss.png"), "--other-mode-run", str(tmp_path / "stale.pt"))
    assert (tmp_path / "cc.json").read_bytes() == (pipeline / "metrics/compile_check.json").read_bytes()


class _Skewed(torch.nn.Module):
    """A deliberately wrong "compiled" model: the real one, with its logits distorted."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        logits = self.net(x)
        return logits * 3.0 + torch.linspace(-2.0, 2.0, logits.shape[-1])


def _rerun_compile_check(pipeline, tmp_path, monkeypatch, **overrides):
    """Run compile_check on the trained fixture with a broken compiled path and `overrides`."""
    monkeypatch.chdir(pipeline)
    monkeypatch.setattr(torch, "compile", lambda model, **_: _Skewed(model))
    params = write_params(tmp_path, tiny_params(pipeline, **overrides))
    tmp_path = rerun_dir(pipeline, tmp_path)
    out = tmp_path / "compile_check.json"
    # no run from train (the path is absent): compile_check trains the compiled run here, broken
    args = ["--params", str(params), "--out", str(out), "--curves", str(tmp_path / "loss.csv"),
            "--figure", str(tmp_path / "loss.png"), "--other-mode-run", str(tmp_path / "absent.pt")]
    try:
        run_stage("compile_check", *args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, json.loads(out.read_text()) if out.is_file() else None


def test_a_broken_compiled_path_fails_the_gate(pipeline, tmp_path, monkeypatch, capsys):
    code, report = _rerun_compile_check(pipeline, tmp_path, monkeypatch)
    assert code == 0  # use_compile=false: the check informs, it does not stop an eager pipeline
    assert report["status"] == "failed" and report["passed"] is False
    assert any("loss" in f for f in report["failures"])
    assert report["loss_step0_delta"] > 1e-3


def test_production_with_compile_stops_on_a_failed_gate(pipeline, tmp_path, monkeypatch, capsys):
    code, report = _rerun_compile_check(pipeline, tmp_path, monkeypatch, **{"train.use_compile": True})
    assert code == 1
    assert report["status"] == "failed"
    err = capsys.readouterr().err
    assert "compile validation FAILED" in err and "step-0 loss differs" in err


class _RecompileFails(torch.nn.Module):
    """A "compiled" model whose third call fails as a recompile would (the real module otherwise)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 3:
            from torch._dynamo.exc import RecompileError

            raise RecompileError("recompiling for a new input shape failed")
        return self.net(x)


def test_a_compile_failure_after_the_first_step_is_reported_not_compared(pipeline, tmp_path, monkeypatch):
    """The compiled run went eager at step 2: a mixed run is no comparison, and the report says so."""
    monkeypatch.chdir(pipeline)
    monkeypatch.setattr(torch, "compile", lambda model, **_: _RecompileFails(model))
    params = write_params(tmp_path, tiny_params(pipeline))
    tmp_path = rerun_dir(pipeline, tmp_path)
    out = tmp_path / "compile_check.json"
    run_stage("compile_check", "--params", str(params), "--out", str(out), "--curves", str(tmp_path / "loss.csv"),
              "--figure", str(tmp_path / "loss.png"), "--other-mode-run", str(tmp_path / "absent.pt"))
    report = json.loads(out.read_text())
    assert report["status"] == "not_available" and report["passed"] is None
    assert "fell back to eager at step 2: RecompileError" in report["error"]


def test_the_threshold_is_locked_in_the_trail_before_test_or_external_is_opened(pipeline, tmp_path,
                                                                                  monkeypatch):
    from pathtrail.pipeline import evaluate

    trail = tmp_path / "trail.jsonl"
    monkeypatch.chdir(pipeline)  # the stage's default paths are the pipeline's
    monkeypatch.setenv("PATHTRAIL_AUDIT_TRAIL", str(trail))
    opened, real = [], evaluate.read_table

    def spy(path):
        actions = [e.get("action") for e in read_entries(trail)]
        opened.append((Path(path).name, "threshold_locked" in actions))
        return real(path)

    monkeypatch.setattr(evaluate, "read_table", spy)
    out = rerun_dir(pipeline, tmp_path)
    run_stage("evaluate", "--metrics", str(out / "eval.json"), "--predictions", str(out / "pred"),
              "--plots", str(out / "plots"), "--figures", str(out / "figs"))
    assert ("val.csv", False) in opened
    assert ("test.csv", True) in opened and ("external.csv", True) in opened
    entries = read_entries(trail)
    assert [e["action"] for e in entries] == ["start", "threshold_locked", "criteria_locked", "end"]
    lock = entries[1]
    assert lock["threshold"] == json.loads((out / "eval.json").read_text())["threshold"]
    assert len(lock["val_probabilities_sha256"]) == 64 and lock["n_val"] > 0
