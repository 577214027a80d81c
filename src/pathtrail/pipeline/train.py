"""train: fit the model on the normalized store with seeded, resumable training.

With `train.distributed.nproc_per_node > 1` it relaunches the stage under torchrun (DDP on this
node); started by torchrun itself (e.g. multi-node, `torchrun --nnodes 2 ... -m stages.train`) it
joins that run instead. Only rank 0 writes outputs, the checkpoint and the audit entries.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import torch

from pathtrail.config.label_section import is_multilabel, label_columns_of, output_names
from pathtrail.config.loading import parse_section
from pathtrail.config.sections import TRAINING_SECTIONS, TrainParams, training_sections
from pathtrail.core.errors import PathTrailError
from pathtrail.core.files import read_json, write_csv, write_json
from pathtrail.core.hashing import digest
from pathtrail.core.staging import temporary_files
from pathtrail.pipeline import other_mode
from pathtrail.pipeline.stagekit import get_logger, path_option, staged_run
from pathtrail.provenance import audit
from pathtrail.train import distributed as D
from pathtrail.train.curves import epoch_table, monitor, step_table, train_metrics
from pathtrail.train.inputs import load_training_inputs, probability_table
from pathtrail.train.loop import FitResult, fit
from pathtrail.train.model_file import write_model

STAGE_MODULE = "stages.train"  # what torchrun runs in each worker


@dataclass(frozen=True)
class Paths:
    store: str = path_option("data/store")
    split: str = path_option("data/split")
    reference: str = path_option("models/stain_reference.json")
    model_out: str = path_option("models/model.pt")
    val_probs: str = path_option("models/val_probs.csv")
    metrics: str = path_option("metrics/train.json")
    curves: str = path_option("plots/train", "folder for epochs.csv and steps.csv")
    checkpoint: str = path_option("checkpoints/train/last.pt", "resumable; removed when done")
    other_mode_run: str = path_option("models/other_mode_run.pt",
                                      "the same training in the other mode (eager/compiled), for compile_check")
    external: str = path_option("data/validated/external.csv",
                                "the external cohort the other mode's run scores for compile_check (if present)")


def run(params: Mapping[str, Any], paths: Paths, *, trail: str | None = None,
        relaunch_argv: Sequence[str] = ()) -> FitResult | None:
    """Train (this process, or N under torchrun); returns this rank's result, None after a relaunch."""
    nproc = parse_section(params, "train", TrainParams).distributed.nproc_per_node  # checked before any launch
    if D.should_relaunch(nproc):
        get_logger().info("train.relaunch", nproc_per_node=nproc)
        code = D.relaunch(STAGE_MODULE, list(relaunch_argv), nproc)
        if code != 0:
            raise PathTrailError(
                f"distributed training ({nproc} processes under torchrun) exited with code {code}; the "
                "workers' errors are above. A checkpoint, if one was saved, is resumed by the next run."
            )
        return None
    world = D.launched_world() or D.SINGLE
    device = D.device_for(world)
    if world.distributed:
        structlog.contextvars.bind_contextvars(rank=world.rank, world_size=world.size)
        get_logger().info("train.worker", local_rank=world.local_rank, device=str(device),
                          backend=D.backend_for(device))
    with D.process_group(world, device):
        return train_here(params, paths, world, device, trail)


def train_here(params: Mapping[str, Any], paths: Paths, world: D.World, device: torch.device,
               trail: str | None, *, stage: str = "train", recorded: dict[str, Any] | None = None) -> FitResult:
    """Train in this process as stage `stage` of the trail. `recorded`: the params its start entry
    records instead of train's own sections (an ensemble member records its `ensemble.members.NAME`
    in place of `model`, which params.yaml holds for the main model)."""
    inp = load_training_inputs(params, paths.store, paths.split, paths.reference)
    # the trail records the sections as params.yaml has them (verify compares them with it); the
    # model file hashes them as `training_sections` says (a disabled stain_augment left out)
    section = {k: params.get(k) for k in TRAINING_SECTIONS}
    # the other mode's run also depends on these (they are DVC params of train too); recorded as
    # dotted keys, so that `verify` compares these two, not the whole compile_check section
    if recorded is None:
        recorded = {**section, **{f"compile_check.{k}": (params.get("compile_check") or {}).get(k)
                                  for k in other_mode.PARAMS}}
    checkpoint = Path(paths.checkpoint)
    curves = Path(paths.curves)
    # The checkpoint is not an output: it is kept across a stop, for the next run to resume.
    outputs = [paths.model_out, paths.val_probs, paths.metrics, curves / "epochs.csv", curves / "steps.csv",
               paths.other_mode_run]
    # local initial weights (model.weights_path) are an input too: the trail records their sha256
    inputs = [paths.store, paths.split, paths.reference, *([inp.model.weights_path] if inp.model.weights_path else [])]
    scored = paths.external if world.is_main and Path(paths.external).is_file() else None
    recording = (staged_run(stage, inputs=[*inputs, *([scored] if scored else [])], outputs=outputs,
                            params=recorded, trail=trail)
                 if world.is_main else contextlib.nullcontext((audit.StageRecord(), Path)))
    if world.is_main:  # a checkpoint write a kill cut short (the checkpoint before it is intact)
        for tmp in temporary_files(checkpoint):
            tmp.unlink(missing_ok=True)
    # Only a checkpoint this pipeline wrote and recorded is resumed (the file is not tracked, so
    # anyone able to write it could otherwise hand this stage a forged state).
    expected = recorded_checkpoint(audit.read_entries(audit.trail_path(trail)), stage) if world.is_main else None
    with recording as (rec, out), D.peer_failures_reported(world), contextlib.ExitStack() as beside_run:
        def saved(**facts: Any) -> None:
            rec.record("checkpoint_saved", checkpoint=checkpoint.as_posix(), **facts)

        beside = None
        if world.is_main:
            beside = other_mode.start(params, paths.store, paths.split, out(paths.other_mode_run),
                                      distributed=world.distributed, external=scored)
            if beside is not None:
                beside_run.enter_context(beside)
        result = fit(inp.store, inp.splits["train"], inp.splits["val"], inp.train, inp.model, inp.runtime,
                     num_classes=len(output_names(inp.data)), fingerprint=inp.fingerprint, checkpoint=checkpoint,
                     device=device, world=world, expected_sha256=expected,
                     on_saved=saved if world.is_main else None)
        if not world.is_main:
            return result
        if beside is not None:
            beside.finish()
        metadata = {
            "arch": inp.model.arch, "width": inp.model.width, "dropout": inp.model.dropout,
            "classes": inp.data.classes, "num_classes": len(inp.data.classes),
            "stain_reference_sha256": read_json(paths.reference).get("reference_sha256"),
            "params_sha256": digest(training_sections(params)), "best_epoch": result.best_epoch,
            "compile": result.compile, "torch_version": str(torch.__version__),
            "local_weights_sha256": result.weights_sha256,
            "gradient_checkpointing": inp.model.gradient_checkpointing, "world_size": result.world_size,
        }
        if is_multilabel(inp.data):  # one sigmoid output per label (absent for binary models)
            metadata |= {"num_classes": len(inp.data.label_columns), "label_mode": "multilabel",
                         "labels": list(inp.data.label_columns)}
        if inp.model.vit is not None:  # what read_model needs to rebuild monai_vit (absent for the others)
            metadata["vit"] = dataclasses.asdict(inp.model.vit)
        write_model(result.state_dict, metadata, out(paths.model_out))
        write_csv(probability_table(inp.tables["val"], result.val_probs, output_names(inp.data),
                                    label_columns_of(inp.data)), out(paths.val_probs))
        write_json(train_metrics(result), out(paths.metrics))
        write_csv(epoch_table(result.history), out(curves / "epochs.csv"))
        write_csv(step_table(result.steps), out(curves / "steps.csv"))
        rec.note(best_epoch=result.best_epoch, best_val_auroc=result.best_val_auroc, resumed_from=result.resumed_from,
                 resumed_checkpoint_sha256=result.resumed_sha256,
                 monitor=monitor(result.history), throughput=result.monitor, world_size=result.world_size,
                 other_mode_run={"computed": beside is not None,
                                 "use_compile": beside.use_compile if beside is not None else None})
    checkpoint.unlink(missing_ok=True)  # a finished run leaves nothing a later forced run could resume
    get_logger().info("train.done", best_epoch=result.best_epoch, best_val_auroc=result.best_val_auroc)
    return result


def recorded_checkpoint(entries: Sequence[Mapping[str, Any]], stage: str = "train") -> str:
    """The sha256 of the checkpoint a rerun may resume: the last `checkpoint_saved` of a train run
    that did not end ok (killed, stopped or failed); "" (resume none) when there is none."""
    ended_ok = {e.get("run_id") for e in entries if e.get("stage") == stage and e.get("action") == "end"
                and e.get("outcome") == "ok"}
    saved = [e for e in entries if e.get("stage") == stage and e.get("action") == "checkpoint_saved"]
    last = saved[-1] if saved else None
    if last is None or last.get("run_id") in ended_ok or not isinstance(last.get("sha256"), str):
        return ""
    return last["sha256"]
