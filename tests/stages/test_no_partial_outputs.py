"""No partial outputs from any stage: each real stage, run as `python -m stages.<name>` on a tiny
pipeline, is stopped with a real SIGTERM or SIGKILL at a real moment; afterwards nothing new is
among its outputs, what a SIGKILL left is cleaned when the stage next starts, the trail stays
verifiable, and the rerun writes the same bytes as an uninterrupted run.

The moments: `begin` (the start entry is written, nothing done), `commit` (every output complete,
still staged) and `mid_commit` (one output moved into place) are pauses of
`pathtrail.core.staging.pause`; in evaluate the first cohort's predictions appearing is watched
for (the moment the stage used to leave predictions, plot CSVs and PNGs behind).
"""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, tiny_params, write_params
from pathtrail.core.hashing import sha256_path
from pathtrail.core.staging import MARKER, PAUSE_ENV, SUFFIX
from pathtrail.provenance.audit import chain_problems, read_entries
from pathtrail.review.ordering import threshold_order_problems

# each stage's outputs, as dvc.yaml lists them (the card is named "tiny")
OUTPUTS = {
    "validate": ["data/validated", "reports/validation.json"],
    "split": ["data/split", "reports/split.json"],
    "stain_fit": ["models/stain_reference.json"],
    "normalize": ["data/store", "reports/figures/stain_before_after.png", "reports/normalization.json"],
    "train": ["models/model.pt", "models/val_probs.csv", "metrics/train.json", "plots/train/epochs.csv",
              "plots/train/steps.csv", "models/other_mode_run.pt"],
    "compile_check": ["reports/figures/compile_check_loss.png", "metrics/compile_check.json",
                      "plots/compile_check/loss.csv"],
    "evaluate": ["predictions", "reports/figures/eval", "plots/eval", "metrics/eval.json"],
    "model_card": ["metrics/release.json", "model_cards/tiny.md", "model_cards/tiny.json", "model_cards/figures",
                   "metrics/headline.json"],
}
STAGES = ["demo_data", *OUTPUTS]
NOT_OUTPUTS = ("audit", "logs", "checkpoints", "paused")
SIGNALS = {"SIGTERM": (signal.SIGTERM, 130), "SIGKILL": (signal.SIGKILL, -signal.SIGKILL)}


def stage_env(root: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PATHTRAIL_AUDIT_TRAIL": str(root / "audit/trail.jsonl"),
           **extra}
    env.pop(PAUSE_ENV, None)
    return {**env, **extra}


def start(root: Path, stage: str, **extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", f"stages.{stage}", "--log-file", f"logs/{stage}.jsonl"],
                            cwd=root, env=stage_env(root, **extra), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def tree(root: Path) -> dict[str, str | None]:
    """Every file and folder of the tiny repository but the trail, logs and checkpoints: {path: sha256}."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not rel.startswith(NOT_OUTPUTS) and "/__pycache__" not in rel and not rel.startswith("stages"):
            out[rel] = sha256_path(p) if p.is_file() else None
    return out


def staged(t: dict) -> set[str]:
    return {p for p in t if any(part.endswith(SUFFIX) for part in p.split("/"))}


def without_staging(t: dict) -> dict:
    gone = staged(t)
    return {p: h for p, h in t.items() if p not in gone}


def wait_for(proc: subprocess.Popen, path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path.name} never appeared (exit {proc.poll()}): {proc.stderr.read()[-3000:]}")
        time.sleep(0.01)


class Pipeline:
    """The tiny pipeline in `root`, its stages run uninterrupted (in this process) on demand."""

    def __init__(self, root: Path) -> None:
        self.root, self.done = root, []
        self.expected: dict[str, dict] = {}  # {stage: its outputs' tree after an uninterrupted run}

    def ready(self, stage: str) -> None:
        """Every stage up to and including `stage` has run."""
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(self.root)
            mp.setenv("PATHTRAIL_AUDIT_TRAIL", str(self.root / "audit/trail.jsonl"))
            for name in STAGES[: STAGES.index(stage) + 1]:
                if name not in self.done:
                    importlib.import_module(f"stages.{name}").main(["--log-file", f"logs/{name}.jsonl"])
                    self.done.append(name)
                    if name in OUTPUTS:
                        self.expected[name] = outputs_tree(self.root, name)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    shutil.copytree(REPO / "stages", root / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    params = tiny_params(root, **{"train.epochs": 1, "compile_check.enabled": False, "eval.n_bootstrap": 200,
                                  "card.name": "tiny"})
    write_params(root, params)
    return Pipeline(root)


def outputs_tree(root: Path, stage: str) -> dict:
    return {p: h for p, h in tree(root).items() if p.startswith(tuple(OUTPUTS[stage]))}


def remove_outputs(root: Path, stage: str) -> None:
    """What `dvc repro` does before it runs a stage."""
    for rel in OUTPUTS[stage]:
        p = root / rel
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def rerun_and_check(root: Path, stage: str, expected: dict, before: dict, killed: bool) -> None:
    """The next start cleans what was left (checked at its `begin` pause), then succeeds with the
    bytes of an uninterrupted run and a verifiable trail."""
    marker = root / "paused"
    proc = start(root, stage, **{PAUSE_ENV: f"begin:{marker}"})
    wait_for(proc, marker)
    at_start = tree(root)
    assert without_staging(at_start) == before, "the next start did not clean what the killed run left"
    fresh = {p: h for p, h in at_start.items() if p in staged(at_start) and not p.endswith("/" + MARKER)}
    assert all(h is None for h in fresh.values())  # fresh, empty staging (but for the pipeline's mark)
    marker.unlink()
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    after = tree(root)
    assert not staged(after)
    if stage != "model_card":  # the card records the trail's head, which the killed run moved on
        assert outputs_tree(root, stage) == expected
    check_trail(root, stage)
    end = [e for e in read_entries(root / "audit/trail.jsonl") if e.get("action") == "end"][-1]
    recovered = end["facts"].get("recovered", [])
    assert any(SUFFIX in p for p in recovered) if killed else not recovered  # the trail says what was cleaned


def check_trail(root: Path, stage: str) -> None:
    entries = read_entries(root / "audit/trail.jsonl")
    assert chain_problems(entries) == []
    assert threshold_order_problems(entries) == []
    end = [e for e in entries if e.get("stage") == stage and e.get("action") == "end"][-1]
    assert end["outcome"] == "ok"
    assert end["outputs"] == {rel: sha256_path(root / rel) for rel in OUTPUTS[stage]}


def interrupt(pipeline: Pipeline, stage: str, signame: str, point: str, rerun: bool = True) -> None:
    """Stop `stage` with `signame` at `point`, check what is left, then (`rerun`) rerun it."""
    pipeline.ready(stage)
    root, expected = pipeline.root, pipeline.expected
    signum, code = SIGNALS[signame]
    remove_outputs(root, stage)
    before = tree(root)
    marker = root / "paused"
    if point == "first_prediction":
        proc = start(root, stage)
        wait_for(proc, root / ".predictions.staging/predictions/internal_test.csv")
    else:
        proc = start(root, stage, **{PAUSE_ENV: f"{point}:{marker}"})
        wait_for(proc, marker)
    proc.send_signal(signum)
    marker.unlink(missing_ok=True)
    returned = proc.wait(timeout=120)
    stderr = proc.stderr.read()
    assert "Traceback" not in stderr
    after = tree(root)
    if point == "mid_commit" and signame == "SIGTERM":  # held until the commit is complete
        assert returned == code
        assert outputs_tree(root, stage) == expected[stage] and not staged(after)
        check_trail(root, stage)
        return
    assert returned == code, stderr[-3000:]
    if signame == "SIGTERM":
        assert after == before, "a SIGTERM left something new"
        ends = [e for e in read_entries(root / "audit/trail.jsonl") if e.get("stage") == stage]
        assert ends[-1]["action"] == "end" and ends[-1]["outcome"] == "failed"
    elif point == "mid_commit":
        assert set(after) - set(before) - staged(after), "the pause is after the first output moved"
    else:
        assert without_staging(after) == before, "a SIGKILL left something new among the outputs"
    if rerun:
        rerun_and_check(root, stage, expected[stage], before, killed=signame == "SIGKILL")


def test_split_stopped_then_killed_mid_commit_then_rerun(pipeline):
    interrupt(pipeline, "split", "SIGTERM", "commit", rerun=False)
    interrupt(pipeline, "split", "SIGKILL", "mid_commit")


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGKILL"])
def test_evaluate_stopped_after_its_first_cohort_leaves_nothing(pipeline, signame):
    interrupt(pipeline, "evaluate", signame, "first_prediction")


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(OUTPUTS))
def test_every_stage_stopped_with_every_output_staged_leaves_nothing(pipeline, stage):
    """Every output written, none moved yet: a write that bypassed the staging would show here."""
    interrupt(pipeline, stage, "SIGTERM", "commit", rerun=False)
    interrupt(pipeline, stage, "SIGKILL", "commit")


@pytest.mark.slow
def test_a_stage_stopped_at_its_start_or_during_its_commit(pipeline):
    for point in ("begin", "mid_commit"):
        interrupt(pipeline, "normalize", "SIGTERM", point, rerun=False)
        interrupt(pipeline, "normalize", "SIGKILL", point)
