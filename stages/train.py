"""Stage train: fit the model on the normalized store with seeded, resumable training."""

from __future__ import annotations

from pathlib import Path

import torch

from pathtrail import audit
from pathtrail.checkpoints import write_model
from pathtrail.curves import epoch_table, monitor, step_table, train_metrics
from pathtrail.experiment import load_training_inputs, probability_table
from pathtrail.io import read_json, write_csv, write_json
from pathtrail.params import params_sha256
from pathtrail.stagekit import entrypoint, get_logger, raw_section, stage_parser
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
    inp = load_training_inputs(args.params, args.store, args.split)
    section = {k: raw_section(args, k) for k in ("data", "model", "train")}
    checkpoint = Path(args.checkpoint)
    curves = Path(args.curves)
    with audit.stage("train", inputs=[args.store, args.split, args.reference], params=section,
                     trail=args.trail) as rec:
        result = fit(inp.store, inp.splits["train"], inp.splits["val"], inp.train, inp.model, inp.data,
                     num_classes=len(inp.data.classes), fingerprint=inp.fingerprint, checkpoint=checkpoint)
        metadata = {
            "arch": inp.model.arch, "width": inp.model.width, "dropout": inp.model.dropout,
            "classes": inp.data.classes, "num_classes": len(inp.data.classes),
            "stain_reference_sha256": read_json(args.reference).get("reference_sha256"),
            "params_sha256": params_sha256(section), "best_epoch": result.best_epoch,
            "compile": result.compile, "torch_version": str(torch.__version__),
            "local_weights_sha256": result.weights_sha256,
        }
        write_model(result.state_dict, metadata, args.model_out)
        write_csv(probability_table(inp.tables["val"], result.val_probs, inp.data.classes), args.val_probs)
        write_json(train_metrics(result), args.metrics)
        write_csv(epoch_table(result.history), curves / "epochs.csv")
        write_csv(step_table(result.steps), curves / "steps.csv")
        rec.note(best_epoch=result.best_epoch, best_val_auroc=result.best_val_auroc, resumed_from=result.resumed_from,
                 monitor=monitor(result.history), throughput=result.monitor)
        rec.outputs(args.model_out, args.val_probs, args.metrics, curves)
    checkpoint.unlink(missing_ok=True)  # a finished run leaves nothing a later forced run could resume
    get_logger().info("train.done", best_epoch=result.best_epoch, best_val_auroc=result.best_val_auroc)


if __name__ == "__main__":
    main()
