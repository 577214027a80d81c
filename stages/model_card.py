"""Stage model_card: the model card (Markdown + JSON + figures) from every pipeline output.

Also reads, without declaring them as DVC deps (they change whenever any stage runs, the card's own
included): dvc.lock, the audit trail's head, git state and the software environment.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from pathtrail import audit, figures, provenance
from pathtrail.card import CardInputs, build_card, card_chain_head, manifest_hashes, read_epochs
from pathtrail.errors import PathTrailError
from pathtrail.io import atomic_dir, read_json, sha256_path, write_json, write_text
from pathtrail.params import read_params
from pathtrail.settings import CardParams
from pathtrail.stagekit import entrypoint, get_logger, load, stage_parser

REQUIRED = (
    "model",
    "stain_reference",
    "train_metrics",
    "compile_check",
    "eval_metrics",
    "validation",
    "split_report",
    "normalization",
    "epochs",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = stage_parser("model_card", __doc__)
    p.add_argument("--model", default="models/model.pt")
    p.add_argument("--stain-reference", default="models/stain_reference.json")
    p.add_argument("--train-metrics", default="metrics/train.json")
    p.add_argument("--compile-check", default="metrics/compile_check.json")
    p.add_argument("--eval-metrics", default="metrics/eval.json")
    p.add_argument("--validation", default="reports/validation.json")
    p.add_argument("--split-report", default="reports/split.json")
    p.add_argument("--normalization", default="reports/normalization.json")
    p.add_argument("--epochs", default="plots/train/epochs.csv")
    p.add_argument(
        "--figures", default="reports/figures", help="stain, compile-check and eval/ figures"
    )
    p.add_argument("--dvc-lock", default="dvc.lock")
    p.add_argument("--out-dir", default="model_cards")
    return p.parse_args(argv)


def collect_figures(
    args: argparse.Namespace, epochs: list[dict[str, Any]], folder: Path
) -> dict[str, str]:
    """Draw the training curves, copy the pipeline's PNGs; {path relative to the card: sha256}."""
    x = [r["epoch"] for r in epochs]
    series = {
        k: (x, [r.get(k) for r in epochs])
        for k in ("train_loss", "val_loss", "val_auroc")
        if epochs and k in epochs[0]
    }
    figures.line_plot(
        series,
        folder / "training_curves.png",
        title="Training curves",
        xlabel="epoch",
        ylabel="value",
    )
    source = Path(args.figures)
    for png in sorted(source.glob("*.png")) + sorted(source.glob("eval/*.png")):
        target = folder / png.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, target)
    return {
        f"figures/{p.relative_to(folder).as_posix()}": sha256_path(p)
        for p in sorted(folder.rglob("*.png"))
    }


def read_inputs(
    args: argparse.Namespace,
    params: dict[str, Any],
    card: CardParams,
    epochs: list[dict[str, Any]],
    figure_hashes: dict[str, str],
    entries: list[dict[str, Any]],
) -> CardInputs:
    validation = read_json(args.validation)
    lock = (
        yaml.safe_load(Path(args.dvc_lock).read_text(encoding="utf-8"))
        if Path(args.dvc_lock).is_file()
        else None
    )
    files = [*(getattr(args, k) for k in REQUIRED), card.intended_use, args.params]
    env = provenance.environment() | {
        "env": {k: os.environ.get(k) for k in ("CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED")}
    }
    return CardInputs(
        params=params,
        intended_use=Path(card.intended_use).read_text(encoding="utf-8"),
        train_metrics=read_json(args.train_metrics),
        compile_check=read_json(args.compile_check),
        eval_metrics=read_json(args.eval_metrics),
        validation=validation,
        split=read_json(args.split_report),
        normalization=read_json(args.normalization),
        stain_reference_sha256=read_json(args.stain_reference).get("reference_sha256"),
        model_sha256=sha256_path(args.model),
        epochs=epochs,
        figures=figure_hashes,
        input_hashes={Path(f).as_posix(): sha256_path(f) for f in files},
        dvc_lock=lock,
        manifests=manifest_hashes(validation, entries),
        chain_head=card_chain_head(entries, audit.GENESIS),
        trail=audit.trail_path(args.trail).as_posix(),
        git=provenance.git_state().as_dict(),
        environment=env,
    )


@entrypoint("model_card")
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    card_params = load(args, "card", CardParams)
    params = read_params(args.params)
    needed = [getattr(args, k) for k in REQUIRED] + [card_params.intended_use]
    missing = [p for p in needed if not Path(p).is_file()]
    if missing:
        raise PathTrailError(
            "the model card needs these pipeline outputs, which are missing:\n  - "
            + "\n  - ".join(missing)
            + "\nRun `dvc repro` (or the stages that write them) first."
        )
    entries = audit.read_entries(audit.trail_path(args.trail))
    out = Path(args.out_dir)
    md_path, json_path = out / f"{card_params.name}.md", out / f"{card_params.name}.json"
    with audit.stage(
        "model_card", inputs=[*needed, args.figures, args.dvc_lock], params=params, trail=args.trail
    ) as rec:
        epochs = read_epochs(args.epochs)
        with atomic_dir(out / "figures") as tmp:
            figure_hashes = collect_figures(args, epochs, tmp)
        card, markdown = build_card(
            read_inputs(args, params, card_params, epochs, figure_hashes, entries)
        )
        write_text(markdown, md_path)
        write_json(card, json_path)
        rec.note(
            chain_head=card["audit"]["chain_head"],
            release_status=card["release_status"],
            release_reasons=card["release_reasons"],
        )
        rec.outputs(md_path, json_path, out / "figures")
    get_logger().info(
        "model_card.done", card=md_path.as_posix(), release_status=card["release_status"]
    )


if __name__ == "__main__":
    main()
