"""model_card: the model card (Markdown + JSON + figures) from every pipeline output.

Also reads, without declaring them as DVC deps (they change whenever any stage runs, the card's own
included): dvc.lock, the audit trail's head, git state and the software environment.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pathtrail.card.build import (
    CardInputs,
    build_card,
    card_chain_head,
    criteria_lock,
    execution_record,
    manifest_hashes,
    read_epochs,
    upstream_dirty,
)
from pathtrail.card.headline import headline_metrics
from pathtrail.card.public import public_path, redact
from pathtrail.config.loading import parse_section, result_params
from pathtrail.config.sections import CardParams
from pathtrail.core import figures
from pathtrail.core.errors import PathTrailError
from pathtrail.core.files import read_json, write_json, write_text
from pathtrail.core.hashing import sha256_path
from pathtrail.pipeline.stagekit import get_logger, path_option, staged_run
from pathtrail.provenance import audit, environment
from pathtrail.train.model_file import load_model_file

REQUIRED = ("model", "stain_reference", "train_metrics", "compile_check", "eval_metrics", "validation",
            "split_report", "normalization", "epochs")


@dataclass(frozen=True)
class Paths:
    model: str = path_option("models/model.pt")
    stain_reference: str = path_option("models/stain_reference.json")
    train_metrics: str = path_option("metrics/train.json")
    compile_check: str = path_option("metrics/compile_check.json")
    eval_metrics: str = path_option("metrics/eval.json")
    validation: str = path_option("reports/validation.json")
    split_report: str = path_option("reports/split.json")
    normalization: str = path_option("reports/normalization.json")
    epochs: str = path_option("plots/train/epochs.csv")
    figures: str = path_option("reports/figures", "stain, compile-check and eval/ figures")
    dvc_lock: str = path_option("dvc.lock")
    out_dir: str = path_option("model_cards")
    release: str = path_option("metrics/release.json", "the release criteria verdicts")
    headline: str = path_option("metrics/headline.json", "the few values `dvc exp show` compares (the DVC metric)")


def run(params: Mapping[str, Any], paths: Paths, *, trail: str | None = None,
        params_file: str = "params.yaml") -> dict[str, Any]:
    """Build and write the card; returns the card JSON.

    The card records the params of `params_file` without its runtime knobs (`params`, compared key by
    key by `verify`), not the file's bytes: a runtime knob changes no result, so it must not make the
    card disagree with the file.
    """
    card_params = parse_section(params, "card", CardParams)
    needed = [getattr(paths, k) for k in REQUIRED] + [card_params.intended_use]
    missing = [p for p in needed if not Path(p).is_file()]
    if missing:
        raise PathTrailError(
            "the model card needs these pipeline outputs, which are missing:\n  - "
            + "\n  - ".join(missing)
            + "\nRun `dvc repro` (or the stages that write them) first."
        )
    entries = audit.read_entries(audit.trail_path(trail))
    out = Path(paths.out_dir)
    md_path, json_path = out / f"{card_params.name}.md", out / f"{card_params.name}.json"
    outputs = [md_path, json_path, out / "figures", Path(paths.release), Path(paths.headline)]
    with staged_run("model_card", inputs=[*needed, paths.figures, paths.dvc_lock], outputs=outputs,
                    params=result_params(params), trail=trail) as (rec, staged):
        epochs = read_epochs(paths.epochs)
        staged(out / "figures").mkdir()
        figure_hashes = collect_figures(paths, epochs, staged(out / "figures"))
        inputs = read_inputs(paths, params, card_params, epochs, figure_hashes, entries, trail)
        card, markdown = build_card(inputs)
        release = release_metrics(card)
        rec.record("release_criteria", **release)
        write_text(markdown, staged(md_path))
        write_json(card, staged(json_path))
        write_json(release, staged(paths.release))
        write_json(headline_metrics(card), staged(paths.headline))
        rec.note(chain_head=card["audit"]["chain_head"], release_status=card["release_status"],
                 release_reasons=card["release_reasons"])
    get_logger().info("model_card.done", card=md_path.as_posix(), release_status=card["release_status"])
    return card


def release_metrics(card: dict[str, Any]) -> dict[str, Any]:
    """metrics/release.json: status, passed, and each criterion's value, threshold and verdict (the
    same values are in the card and the trail)."""
    rel = card["release"]
    return {"status": card["release_status"], "passed": rel["passed"], "n_passed": rel["n_passed"],
            "n_failed": rel["n_failed"], "criteria_sha256": rel["criteria_sha256"],
            "criteria": {n: {k: r[k] for k in ("criterion", "value", "threshold", "passed", "margin")}
                         for n, r in rel["results"].items()}}


def collect_figures(paths: Paths, epochs: list[dict[str, Any]], folder: Path) -> dict[str, str]:
    """Draw the training curves, copy the pipeline's PNGs; {path relative to the card: sha256}."""
    x = [r["epoch"] for r in epochs]
    series = {k: (x, [r.get(k) for r in epochs])
              for k in ("train_loss", "val_loss", "val_auroc") if epochs and k in epochs[0]}
    figures.line_plot(series, folder / "training_curves.png", title="Training curves", xlabel="epoch",
                      ylabel="value")
    source = Path(paths.figures)
    for png in sorted(source.glob("*.png")) + sorted(source.glob("eval/*.png")):
        target = folder / png.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, target)
    return {f"figures/{p.relative_to(folder).as_posix()}": sha256_path(p) for p in sorted(folder.rglob("*.png"))}


def read_inputs(paths: Paths, params: Mapping[str, Any], card: CardParams, epochs: list[dict[str, Any]],
                figure_hashes: dict[str, str], entries: list[dict[str, Any]], trail: str | None) -> CardInputs:
    root = str(Path.cwd())
    validation = read_json(paths.validation)
    lock_path = Path(paths.dvc_lock)
    lock = yaml.safe_load(lock_path.read_text(encoding="utf-8")) if lock_path.is_file() else None
    files = [*(getattr(paths, k) for k in REQUIRED), card.intended_use]
    env = environment.environment() | {
        "env": {k: os.environ.get(k) for k in ("CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED")}
    }
    head, head_entry = card_chain_head(entries, audit.GENESIS)
    fit = read_json(paths.stain_reference).get("reference_sha256")
    return CardInputs(
        params=redact(result_params(params), root),
        intended_use=Path(card.intended_use).read_text(encoding="utf-8"),
        train_metrics=read_json(paths.train_metrics),
        compile_check=read_json(paths.compile_check),
        eval_metrics=read_json(paths.eval_metrics),
        validation=redact(validation, root),
        split=read_json(paths.split_report),
        normalization=read_json(paths.normalization),
        stain_reference={"path": public_path(Path(paths.stain_reference).as_posix(), root),
                         "sha256": sha256_path(paths.stain_reference),
                         "fit_patches": len(fit) if isinstance(fit, list) else None},
        model_sha256=sha256_path(paths.model),
        model_metadata=load_model_file(paths.model).get("metadata") or {},
        epochs=epochs,
        figures=figure_hashes,
        input_hashes={public_path(Path(f).as_posix(), root): sha256_path(f) for f in files},
        dvc_lock=lock,
        manifests=redact(manifest_hashes(validation, entries), root),
        chain_head=head,
        chain_head_entry=head_entry,
        criteria_lock=criteria_lock(entries),
        upstream_dirty=upstream_dirty(entries),
        execution=execution_record(entries),
        trail=public_path(audit.trail_path(trail).as_posix(), root),
        git=environment.git_state().as_dict(),
        environment=env,
    )
