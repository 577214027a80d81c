"""Stage compile_check: train in the other mode (eager vs torch.compile) and compare.

The train stage's result is reused for its own mode. In `profile=production` with
`train.use_compile=true` a failed comparison fails the pipeline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pathtrail import audit, figures
from pathtrail.checkpoints import load_model_file
from pathtrail.compile_check import RunOutcome, compare
from pathtrail.errors import PathTrailError
from pathtrail.experiment import load_training_inputs, score_loader
from pathtrail.io import read_table, write_csv, write_json
from pathtrail.models import build_model
from pathtrail.settings import CompileCheckParams, ProfileParams
from pathtrail.stagekit import entrypoint, get_logger, load, raw_section, stage_parser
from pathtrail.training import fit, predict


def parse_args(argv: list[str] | None):
    p = stage_parser("compile_check", __doc__)
    p.add_argument("--store", default="data/store")
    p.add_argument("--split", default="data/split")
    p.add_argument("--external", default="data/validated/external.csv")
    p.add_argument("--model", default="models/model.pt")
    p.add_argument("--val-probs", default="models/val_probs.csv")
    p.add_argument("--train-steps", default="plots/train/steps.csv")
    p.add_argument("--out", default="metrics/compile_check.json")
    p.add_argument("--curves", default="plots/compile_check/loss.csv")
    p.add_argument("--figure", default="reports/figures/compile_check_loss.png")
    return p.parse_args(argv)


def _external_probs(state_dict, inp, table, compiled: bool) -> np.ndarray:
    """Score the external cohort with one mode's trained weights, in that mode."""
    model = build_model(inp.model.arch, len(inp.data.classes), inp.model.width, inp.model.dropout)
    model.load_state_dict(state_dict)
    if compiled:
        model = torch.compile(model, mode=inp.train.compile_mode)
    loader = score_loader(inp.store, table, inp.data, inp.train.batch_size * 2, inp.train.seed)
    return predict(model, loader, None, torch.device("cpu"))[0]


@entrypoint("compile_check")
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check = load(args, "compile_check", CompileCheckParams)
    profile = load(args, "profile", ProfileParams)
    inp = load_training_inputs(args.params, args.store, args.split)
    section = {k: raw_section(args, k) for k in ("compile_check", "train", "profile")}
    log = get_logger()
    with audit.stage("compile_check", inputs=[args.store, args.split, args.model, args.val_probs, args.train_steps],
                     params=section, trail=args.trail) as rec:
        report = {"enabled": check.enabled, "use_compile": inp.train.use_compile,
                  "compile_mode": inp.train.compile_mode, "backend": "inductor",
                  "torch_version": str(torch.__version__), "fallback_random": check.fallback_random,
                  "deterministic": inp.train.deterministic, "amp": inp.train.amp, "allow_tf32": inp.train.allow_tf32}
        curves = pd.DataFrame(columns=["step", "eager", "compiled"])
        if not check.enabled:
            report |= {"status": "skipped", "passed": None}
        else:
            # The mode the train stage really ran in (compile may have fallen back to eager).
            own_model = load_model_file(args.model)
            train_mode_compiled = bool(own_model["metadata"].get("compile", {}).get("used", False))
            own = RunOutcome(read_table(args.train_steps)["loss"].to_numpy(),
                             read_table(args.val_probs).filter(like="prob_").to_numpy())
            other = fit(inp.store, inp.splits["train"], inp.splits["val"], inp.train, inp.model, inp.data,
                        num_classes=len(inp.data.classes), fingerprint=inp.fingerprint,
                        use_compile=not train_mode_compiled, fallback_random=check.fallback_random)
            compiled_info = other.compile if not train_mode_compiled else {"used": True}
            if not compiled_info.get("used"):
                report |= {"status": "not_available", "passed": None, "error": compiled_info.get("error")}
            else:
                other_run = RunOutcome(np.array([s["loss"] for s in other.steps]), other.val_probs)
                eager, compiled = (own, other_run) if not train_mode_compiled else (other_run, own)
                ext = read_table(args.external) if args.external and Path(args.external).is_file() else None
                if ext is not None and len(ext):
                    states = {train_mode_compiled: own_model["state_dict"], not train_mode_compiled: other.state_dict}
                    eager.external_probs = _external_probs(states[False], inp, ext, compiled=False)
                    compiled.external_probs = _external_probs(states[True], inp, ext, compiled=True)
                labels = inp.splits["val"].labels
                report |= compare(eager, compiled, labels, inp.tables["val"].patient_id.to_numpy(),
                                  check, inp.train.seed)
                report["status"] = "passed" if report["passed"] else "failed"
                n = report["loss_steps_compared"]
                curves = pd.DataFrame({"step": np.arange(n), "eager": np.round(eager.losses[:n], 8),
                                       "compiled": np.round(compiled.losses[:n], 8)})
        figures.line_plot({"eager": (curves.step, curves.eager), "compiled": (curves.step, curves.compiled)},
                          args.figure, title=f"Training loss per step: eager vs compiled ({report['status']})",
                          xlabel="step", ylabel="loss")
        write_csv(curves, args.curves)
        write_json(report, args.out)
        rec.note(status=report["status"], auroc_delta=report.get("auroc_delta"))
        rec.outputs(args.out, args.curves, args.figure)
        log.info("compile_check.done", status=report["status"], auroc_delta=report.get("auroc_delta"))
        if report["status"] == "failed" and profile.name == "production" and inp.train.use_compile:
            raise PathTrailError(
                "compile validation FAILED, and profile=production uses the compiled model:\n  - "
                + "\n  - ".join(report["failures"])
                + f"\nDetails: {args.out}. Set train.use_compile=false or investigate the compiled path."
            )


if __name__ == "__main__":
    main()
