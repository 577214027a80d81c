"""A small, fake but complete pipeline output tree for card and verify tests.

`fake_tree(dest)` copies a template built once per session: a git repository with one commit, a
DVC repository whose dvc.lock was written by `dvc commit` (no stage is actually run), tiny metrics
and reports, a tiny model file, figures, and an audit trail written with `audit.stage(...)`, then
the real `model_card` stage run on top and committed to dvc.lock. `pathtrail verify` passes on it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pathtrail.config.compose import compose_params
from pathtrail.config.sections import training_sections
from pathtrail.core.execution import enforce, environment_for
from pathtrail.core.figures import line_plot
from pathtrail.core.files import write_json, write_text
from pathtrail.core.hashing import digest
from pathtrail.provenance import audit

REPO = Path(__file__).resolve().parents[1]
TRAIL = "audit/trail.jsonl"
CARD = "pathtrail-fake"


@functools.cache
def _composed() -> str:
    return compose_params(REPO / "pipelines")


def committed_params() -> dict:
    """The params `pipelines/` composes to (what a fresh clone's params.yaml holds), independent of
    the workspace's params.yaml, which a `dvc exp run` rewrites."""
    return copy.deepcopy(yaml.safe_load(_composed()))


def cohort(auroc: float, n: int = 40, patients: int | None = None) -> dict:
    return {
        "auroc": auroc,
        "auroc_ci_low": round(auroc - 0.05, 4),
        "auroc_ci_high": round(auroc + 0.03, 4),
        "auprc": 0.88,
        "auprc_ci_low": 0.8,
        "auprc_ci_high": 0.93,
        "sensitivity": 0.9,
        "sensitivity_ci_low": 0.8,
        "sensitivity_ci_high": 0.97,
        "specificity": 0.85,
        "specificity_ci_low": None,
        "specificity_ci_high": None,
        "balanced_accuracy": 0.875,
        "brier": 0.11,
        "brier_ci_low": 0.08,
        "brier_ci_high": 0.14,
        "ece": 0.04,
        "n_samples": n,
        "n_patients": patients or n // 4,
        "n_positive": n // 2,
        "calibration_slope": 1.02,
        "calibration_intercept": -0.03,
        "n_negative": n // 2,
        "ci_level": 0.95,
        "threshold": 0.42,
        "warnings": [],
        "patient_level": {
            "auroc": auroc + 0.01,
            "auroc_ci_low": auroc - 0.1,
            "auroc_ci_high": 1.0,
            "n_samples": n // 4,
            "n_patients": n // 4,
            "warnings": [],
        },
    }


EVAL = {
    "threshold": 0.42,
    "threshold_rule": "youden",
    "classes": ["benign", "tumour"],
    "n_bootstrap": 200,
    "internal_test": cohort(0.93, patients=30),
    "external": cohort(0.91, patients=40),
    "per_site": {"site_a": cohort(0.94, 20), "site_b": cohort(0.92, 20)},
    "domain_shift": {
        "auroc_internal": 0.93,
        "auroc_external": 0.91,
        "auroc_difference": -0.02,
        "auroc_difference_ci_low": -0.08,
        "auroc_difference_ci_high": 0.04,
        "n_bootstrap": 200,
    },
}
COMPILE_CHECK = {
    "status": "passed",
    "passed": True,
    "enabled": True,
    "use_compile": False,
    "compile_mode": "default",
    "backend": "inductor",
    "torch_version": "2.13.0+cpu",
    "auroc_eager": 0.9512,
    "auroc_compiled": 0.95121,
    "auroc_delta": 1e-05,
    "auroc_delta_ci_low": -2e-05,
    "auroc_delta_ci_high": 4e-05,
    "auc_tolerance": 0.001,
    "loss_steps_compared": 16,
    "loss_steps_eager": 16,
    "loss_steps_compiled": 16,
    "loss_step0_delta": 0.0,
    "loss_max_abs_delta": 0.001,
    "loss_mean_abs_delta": 0.0002,
    "failures": [],
}
TRAIN = {
    "best_epoch": 2,
    "best_val_auroc": 0.9512,
    "best_val_loss": 0.31,
    "epochs_run": 3,
    "early_stopped": False,
    "final_train_loss": 0.28,
    "compile_used": False,
}
VALIDATION = {
    "status": "ok",
    "n_errors": 0,
    "n_warnings": 0,
    "error_counts": {},
    "warning_counts": {},
    "errors": [],
    "warnings": [],
    "cohorts": {
        "internal": {
            "manifest": "data/raw/internal.csv",
            "rows": 80,
            "patients": 16,
            "slides": 20,
            "classes": {"benign": 40, "tumour": 40},
            "sites": {"site_a": 40, "site_b": 40},
        },
        "external": {
            "manifest": "data/raw/external.csv",
            "rows": 40,
            "patients": 8,
            "slides": 10,
            "classes": {"benign": 20, "tumour": 20},
            "sites": {"site_c": 40},
        },
    },
}
SPLIT = {
    "seed": 7,
    "splits": {
        "train": {"patches": 48, "patients": 10, "slides": 12,
                  "sites": {"site_a": {"patches": 24, "patients": 5}, "site_b": {"patches": 24, "patients": 5}}},
        "val": {"patches": 16, "patients": 3, "slides": 4,
                "sites": {"site_a": {"patches": 8, "patients": 2}, "site_b": {"patches": 8, "patients": 1}}},
        "test": {"patches": 16, "patients": 3, "slides": 4,
                 "sites": {"site_a": {"patches": 8, "patients": 1}, "site_b": {"patches": 8, "patients": 2}}},
    },
}
NORMALIZATION = {
    "enabled": True,
    "scope": "patch",
    "fallback": "reference",
    "reference_sha256": "ab" * 32,
    "cohorts": {
        "internal": {"patches": 80, "fallback": 1},
        "external": {"patches": 40, "fallback": 0},
    },
}

# (stage, outputs written by hand, params sections); deps are the outputs of the stage before.
STAGES = [
    ("validate", ["reports/validation.json"], ["data"]),
    ("split", ["reports/split.json"], ["data"]),
    ("stain_fit", ["models/stain_reference.json"], ["stain"]),
    (
        "normalize",
        ["reports/normalization.json", "reports/figures/stain_before_after.png"],
        ["stain"],
    ),
    (
        "train",
        ["models/model.pt", "metrics/train.json", "plots/train/epochs.csv"],
        ["train", "model"],
    ),
    (
        "compile_check",
        ["metrics/compile_check.json", "reports/figures/compile_check_loss.png"],
        ["compile_check"],
    ),
    ("evaluate", ["metrics/eval.json", "reports/figures/eval"], ["eval", "release"]),
]
CARD_DEPS = [o for _, outs, _ in STAGES for o in outs] + ["pipelines/card/intended_use.md"]


def _run(*cmd: str, cwd: Path) -> None:
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "t@example.org",
        "GIT_AUTHOR_DATE": "2026-01-02T03:04:05+00:00",
        "GIT_COMMITTER_DATE": "2026-01-02T03:04:05+00:00",
    }
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True)


def dvc(*args: str, cwd: Path) -> None:
    _run(sys.executable, "-m", "dvc", *args, cwd=cwd)


def git(*args: str, cwd: Path) -> None:
    """git with a fixed test identity and date."""
    _run("git", *args, cwd=cwd)


def dvc_yaml() -> dict:
    stages, prev = {}, []
    for name, outs, params in STAGES:
        body: dict = {"cmd": f"python -m stages.{name}", "params": params}
        if prev:
            body["deps"] = prev
        plain = [o for o in outs if o.endswith(".json") and o.startswith(("metrics/", "reports/"))]
        body["outs"] = [o for o in outs if o not in plain] + [{o: {"cache": False}} for o in plain]
        stages[name], prev = body, outs[:1]
    stages["model_card"] = {
        "cmd": "python -m stages.model_card",
        "deps": CARD_DEPS,
        "params": ["card", "data", "stain", "model", "train", "compile_check", "eval", "release", "profile"],
        "metrics": [{"metrics/headline.json": {"cache": False}}],
        "outs": [
            {"metrics/release.json": {"cache": False}},
            {f"model_cards/{CARD}.md": {"cache": False}},
            {f"model_cards/{CARD}.json": {"cache": False}},
            {"model_cards/figures": {"cache": False}},
        ],
    }
    return {"stages": stages}


def write_fake_model(path: Path, params: dict) -> None:
    import torch

    from pathtrail.train.model_file import write_model

    meta = {"arch": "small_cnn", "params_sha256": digest(training_sections(params))}
    write_model({"w": torch.arange(4, dtype=torch.float32)}, meta, path)


def write_outputs(root: Path, name: str, params: dict) -> None:
    """The files one fake stage writes."""
    files = {
        "reports/validation.json": VALIDATION,
        "reports/split.json": SPLIT,
        "reports/normalization.json": NORMALIZATION,
        "models/stain_reference.json": {"reference_sha256": "ab" * 32, "io": 240},
        "metrics/train.json": TRAIN,
        "metrics/compile_check.json": COMPILE_CHECK,
        "metrics/eval.json": EVAL,
    }
    for _, outs, _ in (s for s in STAGES if s[0] == name):
        for rel in outs:
            if rel in files:
                write_json(files[rel], root / rel)
            elif rel == "models/model.pt":
                write_fake_model(root / rel, params)
            elif rel == "plots/train/epochs.csv":
                write_text(
                    "epoch,train_loss,val_loss,val_auroc,lr\n0,0.69,0.6,0.8,0.002\n1,0.4,0.35,0.93,0.0015\n"
                    "2,0.28,0.31,0.9512,0.0005\n",
                    root / rel,
                )
            elif rel.endswith(".png"):
                line_plot({"a": ([0, 1], [0, 1])}, root / rel, title=rel, xlabel="x", ylabel="y")
            elif rel == "reports/figures/eval":
                for fig in ("roc_external", "roc_internal_test", "calibration_external"):
                    line_plot(
                        {fig: ([0, 1], [0, 1])},
                        root / rel / f"{fig}.png",
                        title=fig,
                        xlabel="x",
                        ylabel="y",
                    )


def _build(root: Path) -> None:
    _run("git", "init", "-q", "-b", "main", cwd=root)
    params = committed_params()
    params["card"] = {"name": CARD, "intended_use": "pipelines/card/intended_use.md"}
    write_text(yaml.safe_dump(params, sort_keys=False), root / "params.yaml")
    write_text(
        "Research demonstration only; NOT for clinical use.\n",
        root / "pipelines/card/intended_use.md",
    )
    write_text(yaml.safe_dump(dvc_yaml(), sort_keys=False), root / "dvc.yaml")
    dvc("init", "-q", cwd=root)
    _run("git", "add", "-A", cwd=root)
    _run("git", "commit", "-q", "-m", "fake pipeline code and params", cwd=root)  # stages run from clean source
    # what the stage entry points record: the execution contract (honoured as under `dvc repro`)
    with contextlib.chdir(root), contract_environment(params["execution"]):
        audit.set_run_context(execution=enforce(params["execution"]), runtime=params["runtime"])
        for name, outs, sections in STAGES:
            with audit.stage(
                name, inputs=[], params={s: params[s] for s in sections}, trail=TRAIL
            ) as rec:
                if name == "evaluate":  # as the real stage: locked before any result is written
                    rec.record("threshold_locked", threshold=EVAL["threshold"],
                               threshold_rule=EVAL["threshold_rule"])
                    criteria = dict(sorted(params["release"]["criteria"].items()))
                    rec.record("criteria_locked", criteria=criteria, criteria_sha256=digest(criteria))
                    rec.note(threshold=EVAL["threshold"], threshold_rule=EVAL["threshold_rule"])
                write_outputs(root, name, params)
                rec.outputs(*outs)
        audit.set_run_context()
    dvc("commit", "-f", "-q", *(s for s, _, _ in STAGES), cwd=root)
    _run("git", "add", "-A", cwd=root)
    _run("git", "commit", "-q", "-m", "fake pipeline", cwd=root)
    run_card_stage(root)
    dvc("commit", "-f", "-q", "model_card", cwd=root)


@contextlib.contextmanager
def contract_environment(execution: dict):
    """os.environ as `stages/__init__.py` sets it for `execution`, for the duration of the block."""
    saved = dict(os.environ)
    os.environ.update(environment_for(execution))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_card_stage(root: Path, *extra: str) -> None:
    from stages.model_card import main

    with contextlib.chdir(root):
        main(["--trail", TRAIL, "--log-file", "logs/model_card.jsonl", *extra])


_TEMPLATE: list[Path] = []


def fake_tree(dest: Path, factory: pytest.TempPathFactory) -> Path:
    """A fresh copy of the template tree at `dest` (the template is built on first use, ~5 s)."""
    if not _TEMPLATE:
        base = factory.mktemp("fake-pipeline-template")
        _build(base)
        _TEMPLATE.append(base)
    shutil.copytree(_TEMPLATE[0], dest, symlinks=True, dirs_exist_ok=True)
    return dest
