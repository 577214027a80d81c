"""Stage train: fit the model on the normalized store with seeded, resumable training.

With `train.distributed.nproc_per_node > 1` it relaunches itself under torchrun (DDP on this node);
started by torchrun itself (e.g. multi-node, `torchrun --nnodes 2 ... -m stages.train`) it joins
that run instead. Only rank 0 writes outputs, the checkpoint and the audit entries.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import structlog
import torch

from pathtrail import audit
from pathtrail import distributed as D
from pathtrail.checkpoints import write_model
from pathtrail.curves import epoch_table, monitor, step_table, train_metrics
from pathtrail.errors import PathTrailError
from pathtrail.experiment import load_training_inputs, probability_table
from pathtrail.io import read_json, write_csv, write_json
from pathtrail.params import params_sha256
from pathtrail.settings import TrainParams
from pathtrail.stagekit import entrypoint, get_logger, load, raw_section, stage_parser
from pathtrail.training import fit


def parse_args(argv: list[str] | None):
    p = stage_parser("train", __doc__)
    p.add_argument("--store", default="data/store")
    p.add_argument("--split", default="data/split")
    p.add_argument("--reference", default="models/stain_reference.json")
    p.add_argument("--model-out", default="models/model.pt")
    p.add_argument("--val-probs", default="models/val_probs.csv")
    p.add_argument("--metrics", default="metrics/train.json")
    p.add_argument("--curves", default="plots/train", help="folder for epochs.csv and steps.csv")
    p.add_argument("--checkpoint", default="checkpoints/train/last.pt", help="resumable; removed when done")
    return p.parse_args(argv)


@entrypoint("train")
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    nproc = load(args, "train", TrainParams).distributed.nproc_per_node  # params checked before any launch
    if D.should_relaunch(nproc):
        get_logger().info("train.relaunch", nproc_per_node=nproc)
        code = D.relaunch("stages.train", sys.argv[1:] if argv is None else list(argv), nproc)
        if code != 0:
            raise PathTrailError(
                f"distributed training ({nproc} processes under torchrun) exited with code {code}; the "
                "workers' errors are above. A checkpoint, if one was saved, is resumed by the next run."
            )
        return
    world = D.launched_world() or D.SINGLE
    device = D.device_for(world)
    if world.distributed:
        structlog.contextvars.bind_contextvars(rank=world.rank, world_size=world.size)
        get_logger().info("train.worker", local_rank=world.local_rank, device=str(device),
                          backend=D.backend_for(device))
    with D.process_group(world, device):
        _train(args, world, device)


def _train(args, world: D.World, device: torch.device) -> None:
    inp = load_training_inputs(args.params, args.store, args.split)
    section = {k: raw_section(args, k) for k in ("data", "model", "train")}
    checkpoint = Path(args.checkpoint)
    curves = Path(args.curves)
    recording = (audit.stage("train", inputs=[args.store, args.split, args.reference], params=section,
                             trail=args.trail)
                 if world.is_main else contextlib.nullcontext(audit.StageRecord()))
    with recording as rec:
        result = fit(inp.store, inp.splits["train"], inp.splits["val"], inp.train, inp.model, inp.data,
                     num_classes=len(inp.data.classes), fingerprint=inp.fingerprint, checkpoint=checkpoint,
                     device=device, world=world)
        if not world.is_main:
            return
        metadata = {
            "arch": inp.model.arch, "width": inp.model.width, "dropout": inp.model.dropout,
            "classes": inp.data.classes, "num_classes": len(inp.data.classes),
            "stain_reference_sha256": read_json(args.reference).get("reference_sha256"),
            "params_sha256": params_sha256(section), "best_epoch": result.best_epoch,
            "compile": result.compile, "torch_version": str(torch.__version__),
            "local_weights_sha256": result.weights_sha256,
            "gradient_checkpointing": inp.model.gradient_checkpointing, "world_size": result.world_size,
        }
        write_model(result.state_dict, metadata, args.model_out)
        write_csv(probability_table(inp.tables["val"], result.val_probs, inp.data.classes), args.val_probs)
        write_json(train_metrics(result), args.metrics)
        write_csv(epoch_table(result.history), curves / "epochs.csv")
        write_csv(step_table(result.steps), curves / "steps.csv")
        rec.note(best_epoch=result.best_epoch, best_val_auroc=result.best_val_auroc, resumed_from=result.resumed_from,
                 monitor=monitor(result.history), throughput=result.monitor, world_size=result.world_size)
        rec.outputs(args.model_out, args.val_probs, args.metrics, curves)
    checkpoint.unlink(missing_ok=True)  # a finished run leaves nothing a later forced run could resume
    get_logger().info("train.done", best_epoch=result.best_epoch, best_val_auroc=result.best_val_auroc)


if __name__ == "__main__":
    main()
