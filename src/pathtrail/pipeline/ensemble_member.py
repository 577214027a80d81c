"""ensemble_member: train one member of the stacking ensemble, then its compile gate.

The member is trained by the train stage's own code (`train.train_here`: the same keyed
randomness, determinism, resumable checkpoint and other-mode run beside it) with the main params
and the member's `model` section and `train` changes (`ensemble/params.yaml`), then compared with
that other-mode run by compile_check's own code (`compile_check.run`; in profile=production with
train.use_compile a failed comparison fails the stage, as it fails the main pipeline). Both are
recorded in the trail, as stages `ensemble_train.NAME` and `ensemble_compile_check.NAME`, whose
params entries name `ensemble.members.NAME` where train's name `model`. Every output lies in
`<out>/NAME/`. One process: a member is not trained under torchrun (train.distributed.nproc_per_node
must be 1 here).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pathtrail.config.loading import parse_section
from pathtrail.config.sections import TRAINING_SECTIONS, TrainParams
from pathtrail.core.errors import PathTrailError
from pathtrail.ensemble.layout import MEMBER_PREFIXES, member_files
from pathtrail.ensemble.params import ENSEMBLE_PARAMS, member_params, read_ensemble
from pathtrail.pipeline import compile_check, other_mode, train
from pathtrail.pipeline.stagekit import get_logger, path_option
from pathtrail.train import distributed as D


@dataclass(frozen=True)
class Paths:
    member: str = path_option("", "the member's name in ensemble.members (required)")
    ensemble_params: str = path_option(ENSEMBLE_PARAMS, "the ensemble's params file")
    store: str = path_option("data/store")
    split: str = path_option("data/split")
    reference: str = path_option("models/stain_reference.json")
    external: str = path_option("data/validated/external.csv")
    out: str = path_option("models/ensemble/members", "the members' folders: <out>/NAME/")
    checkpoints: str = path_option("checkpoints/ensemble", "resumable checkpoints: <checkpoints>/NAME/last.pt")


def run(params: Mapping[str, Any], paths: Paths, *, trail: str | None = None) -> dict[str, Any]:
    """Train member `paths.member` and check its compiled twin; returns the compile check's report."""
    if not paths.member:
        raise PathTrailError("ensemble_member needs --member NAME (a key of ensemble.members)")
    ensemble, raw = read_ensemble(paths.ensemble_params)
    name = paths.member
    mparams = member_params(params, ensemble, name)
    if parse_section(mparams, "train", TrainParams).distributed.nproc_per_node != 1:
        raise PathTrailError(f"ensemble member {name!r}: train.distributed.nproc_per_node must be 1 (members are "
                             "trained in one process); set it in ensemble.members.{name}.train")
    files = member_files(paths.out, name)
    key = f"ensemble.members.{name}"
    recorded = {**{k: params.get(k) for k in TRAINING_SECTIONS if k != "model"}, key: raw["members"][name],
                **{f"compile_check.{k}": (params.get("compile_check") or {}).get(k) for k in other_mode.PARAMS}}
    train_paths = train.Paths(store=paths.store, split=paths.split, reference=paths.reference,
                              model_out=str(files["model"]), val_probs=str(files["val_probs"]),
                              metrics=str(files["train"]), curves=str(files["curves"]),
                              checkpoint=str(Path(paths.checkpoints) / name / "last.pt"),
                              other_mode_run=str(files["other_mode_run"]), external=paths.external)
    get_logger().info("ensemble_member.train", member=name, arch=mparams["model"].get("arch"))
    train.train_here(mparams, train_paths, D.SINGLE, D.device_for(D.SINGLE), trail,
                     stage=f"{MEMBER_PREFIXES[0]}{name}", recorded=recorded)
    check_paths = compile_check.Paths(store=paths.store, split=paths.split, external=paths.external,
                                      model=str(files["model"]), val_probs=str(files["val_probs"]),
                                      train_steps=str(files["curves"] / "steps.csv"),
                                      other_mode_run=str(files["other_mode_run"]), out=str(files["compile_check"]),
                                      curves=str(files["compile_curves"]), figure=str(files["compile_figure"]))
    check_recorded = {**{k: params.get(k) for k in ("compile_check", "train", "profile", "execution")},
                      key: raw["members"][name]}
    return compile_check.run(mparams, check_paths, trail=trail, stage=f"{MEMBER_PREFIXES[1]}{name}",
                             recorded=check_recorded)
