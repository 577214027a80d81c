"""compile_check: train in the other mode (eager vs torch.compile) and compare.

The train stage's result is reused for its own mode. In `profile=production` with
`train.use_compile=true` a failed comparison fails the pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pathtrail.config.loading import parse_section
from pathtrail.config.sections import CompileCheckParams, ProfileParams
from pathtrail.core import figures
from pathtrail.core.errors import PathTrailError
from pathtrail.core.files import read_table, write_csv, write_json
from pathtrail.core.hashing import sha256_file
from pathtrail.pipeline import other_mode
from pathtrail.pipeline.stagekit import get_logger, path_option, staged_run
from pathtrail.train.compile_gate import RunOutcome, compare
from pathtrail.train.inputs import TrainingInputs, load_training_inputs
from pathtrail.train.model_file import load_model_file


@dataclass(frozen=True)
class Paths:
    store: str = path_option("data/store")
    split: str = path_option("data/split")
    external: str = path_option("data/validated/external.csv")
    model: str = path_option("models/model.pt")
    val_probs: str = path_option("models/val_probs.csv")
    train_steps: str = path_option("plots/train/steps.csv")
    other_mode_run: str = path_option("models/other_mode_run.pt", "the train stage's run in the other mode")
    out: str = path_option("metrics/compile_check.json")
    curves: str = path_option("plots/compile_check/loss.csv")
    figure: str = path_option("reports/figures/compile_check_loss.png")


def run(params: Mapping[str, Any], paths: Paths, *, trail: str | None = None,
        stage: str = "compile_check", recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the comparison report, loss curves and figure; returns the report. The trail records
    it as stage `stage` with params `recorded` (default: the sections below)."""
    check = parse_section(params, "compile_check", CompileCheckParams)
    profile = parse_section(params, "profile", ProfileParams)
    inp = load_training_inputs(params, paths.store, paths.split)
    section = {**{k: params[k] for k in ("compile_check", "train", "profile")},
               "execution": params.get("execution")}
    inputs = [paths.store, paths.split, paths.model, paths.val_probs, paths.train_steps, paths.other_mode_run]
    with staged_run(stage, inputs=inputs, outputs=[paths.out, paths.curves, paths.figure],
                    params=section if recorded is None else recorded,
                    trail=trail) as (rec, out):
        report = {"enabled": check.enabled, "use_compile": inp.train.use_compile,
                  "compile_mode": inp.train.compile_mode, "backend": "inductor",
                  "torch_version": str(torch.__version__), "fallback_random": check.fallback_random,
                  "deterministic": inp.train.deterministic, "amp": inp.train.amp, "allow_tf32": inp.train.allow_tf32}
        if not check.enabled:
            found, curves = {"status": "skipped", "passed": None}, no_curves()
        else:
            found, curves = compare_modes(inp, check, paths)
        report |= found
        figures.line_plot({"eager": (curves.step, curves.eager), "compiled": (curves.step, curves.compiled)},
                          out(paths.figure), title=f"Training loss per step: eager vs compiled ({report['status']})",
                          xlabel="step", ylabel="loss")
        write_csv(curves, out(paths.curves))
        write_json(report, out(paths.out))
        rec.note(status=report["status"], auroc_delta=report.get("auroc_delta"))
        get_logger().info("compile_check.done", status=report["status"], auroc_delta=report.get("auroc_delta"))
        if report["status"] == "failed" and profile.name == "production" and inp.train.use_compile:
            # the run fails and publishes nothing, but its report is kept for review
            write_json(report, paths.out)
            raise PathTrailError(
                "compile validation FAILED, and profile=production uses the compiled model:\n  - "
                + "\n  - ".join(report["failures"])
                + f"\nDetails: {paths.out}. Set train.use_compile=false or investigate the compiled path."
            )
    return report


def compare_modes(inp: TrainingInputs, check: CompileCheckParams,
                  paths: Paths) -> tuple[dict[str, Any], pd.DataFrame]:
    """Train in the mode the train stage did not use and compare; (report fields, loss curves)."""
    # The mode the train stage really ran in (compile may have fallen back to eager).
    own_model = load_model_file(paths.model)
    own_info = own_model["metadata"].get("compile", {})
    if own_info.get("eager_from_step", 0) > 0:  # compiled steps, then eager: neither mode to compare
        return _mixed(own_info, "the train stage's run"), no_curves()
    train_mode_compiled = bool(own_info.get("used", False)) and "eager_from_step" not in own_info
    own = RunOutcome(read_table(paths.train_steps)["loss"].to_numpy(),
                     read_table(paths.val_probs).filter(like="prob_").to_numpy())
    other = other_mode.read_run(paths.other_mode_run)
    if other is None or other.use_compile == train_mode_compiled:  # not computed beside train: train it here
        other = other_mode.fit_other(inp, check, use_compile=not train_mode_compiled)
    compiled_info = other.compile if not train_mode_compiled else {"used": True}
    if compiled_info.get("eager_from_step", 0) > 0:
        return _mixed(compiled_info, "the compiled run"), no_curves()
    if not compiled_info.get("used") or "eager_from_step" in compiled_info:
        return {"status": "not_available", "passed": None, "error": compiled_info.get("error")}, no_curves()
    own_run, other_run = own, RunOutcome(other.losses, other.val_probs)
    eager, compiled = (own_run, other_run) if not train_mode_compiled else (other_run, own_run)
    ext = read_table(paths.external) if paths.external and Path(paths.external).is_file() else None
    if ext is not None and len(ext):
        own_run.external_probs = other_mode.external_probs(own_model["state_dict"], inp, ext,
                                                           compiled=train_mode_compiled)
        scored_beside = other.external_sha256 is not None and other.external_sha256 == sha256_file(paths.external)
        other_run.external_probs = (other.external_probs if scored_beside else other_mode.external_probs(
            other.state_dict, inp, ext, compiled=not train_mode_compiled))
    labels = inp.splits["val"].labels
    found = compare(eager, compiled, labels, inp.tables["val"].patient_id.to_numpy(), check, inp.train.seed)
    found["status"] = "passed" if found["passed"] else "failed"
    n = found["loss_steps_compared"]
    curves = pd.DataFrame({"step": np.arange(n), "eager": np.round(eager.losses[:n], 8),
                           "compiled": np.round(compiled.losses[:n], 8)})
    return found, curves


def _mixed(info: dict[str, Any], which: str) -> dict[str, Any]:
    """The report when compile failed after some compiled steps and the run went on eagerly."""
    return {"status": "not_available", "passed": None,
            "error": f"{which} fell back to eager at step {info['eager_from_step']}: {info.get('error')}"}


def no_curves() -> pd.DataFrame:
    """The loss-curve table when no comparison ran (skipped, or compile not available)."""
    return pd.DataFrame(columns=["step", "eager", "compiled"])
