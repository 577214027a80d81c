"""The recipes of `pathtrail predict` and `pathtrail drift`: check the card, score, report, publish.

Both start the same way: the card and the files it names are checked (`card_model`), the release
gate applied when asked, the cohort validated, normalized and scored through the pipeline's code
(`cohort`); then predict writes its tables and sidecar (`outputs`), drift its report and figure.
Every output path is checked before any work and every output is published together at the end,
so a refusal or failure leaves nothing new.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pathtrail import __version__
from pathtrail.card.public import public_path
from pathtrail.card.values import get
from pathtrail.config.loading import ParamsError, from_dict, read_params
from pathtrail.config.sections import DriftParams
from pathtrail.core.errors import PathTrailError
from pathtrail.core.execution import enforce
from pathtrail.core.files import read_table, repo_path, write_csv, write_json
from pathtrail.core.hashing import sha256_bytes, sha256_path
from pathtrail.data.store import load_rgb
from pathtrail.inference import outputs as out_files
from pathtrail.inference.card_model import CardModel, load_card_model, release_gate
from pathtrail.inference.cohort import ScoredCohort, score_manifest
from pathtrail.inference.drift import drift_report
from pathtrail.inference.drift_plot import drift_figure
from pathtrail.inference.slides import tile_slide_table
from pathtrail.pipeline.stain_fit import pick_reference_rows
from pathtrail.provenance import audit
from pathtrail.stain.inputs import image_sha256

REFERENCE_SCORES = "predictions/internal_test.csv"


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's bytes, read now (outputs and user inputs never go through the
    repository's shared hash cache)."""
    return sha256_bytes(Path(path).read_bytes())


@dataclass(frozen=True)
class Request:
    """What the user asked for (the command's options)."""

    card: str
    out: str
    manifest: str | None = None
    data_root: str | None = None
    slides: str | None = None
    root: str = "."
    model: str | None = None
    stain_reference: str | None = None
    reference_scores: str | None = None
    params: str | None = None
    require_release: bool = False
    trusted_keys: list[str] = field(default_factory=list)
    workers: int = 0


def predict(req: Request) -> dict[str, Any]:
    """Score the cohort; write OUT and its siblings (see `outputs`); returns the sidecar."""
    paths = out_files.output_paths(req.out)
    return _run(req, paths, _write_predictions)


def drift(req: Request) -> dict[str, Any]:
    """Score the cohort; write the drift report (OUT, a .json) and its figure; returns the report."""
    out = Path(req.out)
    if out.suffix.lower() != ".json" or not out.stem:
        raise PathTrailError(f"--out '{out}': name a .json file, e.g. --out drift.json (the figure is "
                             "written beside it as drift.png)")
    return _run(req, {"report": out, "drift_plot": out.with_suffix(".png")}, _write_drift)


def _run(req: Request, paths: dict[str, Path], write) -> dict[str, Any]:
    if (req.slides is None) == (req.manifest is None) or (req.manifest is None) != (req.data_root is None):
        raise PathTrailError("give either --manifest M.csv with --data-root D, or --slides S.csv")
    inputs = [Path(p) for p in (req.card, req.manifest, req.data_root, req.slides, req.model, req.stain_reference,
                                req.reference_scores, req.params) if p]
    out_files.check_output_paths(list(paths.values()), inputs)
    with tempfile.TemporaryDirectory(prefix="pathtrail-predict-") as tmp:
        work = Path(tmp)
        gate = (release_gate(req.card, req.root, req.trusted_keys or None) if req.require_release
                else {"required": False})
        cm = load_card_model(req.card, work, root=req.root, model=req.model, stain_reference=req.stain_reference)
        if (mode := get(cm.params, "data.label_mode")) in ("multilabel", "multiclass"):
            raise PathTrailError(
                f"the card is a {mode.replace('multi', 'multi-')} model (data.label_mode: {mode}): "
                "`pathtrail predict` and "
                "`drift` score binary models only in this build, and nothing was scored. The pipeline's "
                "evaluate stage writes its predictions (predictions/<cohort>.csv: prob_<label> and "
                "decision_<label> per label, or prob_<class> and the decision per class); score a new cohort by pointing "
                "data.external_manifest at it and running `dvc exp run`")
        if req.slides is not None:  # patches cut at the card's settings, into the private work folder
            manifest, data_root = tile_slide_table(Path(req.slides), cm.params, work / "tiles")
        else:
            manifest, data_root = Path(req.manifest), Path(req.data_root)
        params, params_source = drift_params(cm, req)
        reference_scores, scores_source = internal_test_scores(cm, req, required=paths.get("report") is not None)
        execution = enforce(cm.params.get("execution"))
        scored = score_manifest(cm, manifest, data_root, work, workers=req.workers)
        report = cohort_drift(cm, scored, reference_scores, params)
        report["sources"] = {"params": params_source, "reference_scores": scores_source}
        described = cm.describe()
        for key in ("card", "model", "stain_reference"):
            described[key]["path"] = public(described[key]["path"])
        facts = {"format": 1, "tool": f"pathtrail {__version__}", **described, "release_gate": gate,
                 "input": {"slide_table": public(req.slides) if req.slides else None,
                           "manifest": public(manifest), "manifest_sha256": sha256_file(manifest),
                           "data_root": public(data_root), "patches": len(scored.table),
                           "slides": int(scored.table.slide_id.nunique()),
                           "patients": int(scored.table.patient_id.nunique()), "validation": scored.validation},
                 "normalization": scored.normalization | {"enabled": scored.stain.enable_stain_norm,
                                                           "scope": scored.stain.scope},
                 "execution": execution, "device": scored.device}
        with out_files.published(list(paths.values())) as where:
            return write(cm, scored, report, facts, paths, where)


def _write_predictions(cm: CardModel, scored: ScoredCohort, report: dict, facts: dict, paths: dict, where) -> dict:
    tables = out_files.patch_tables(scored.table, scored.probs, cm.classes, cm.threshold)
    written = {}
    for kind, frame in tables.items():
        written[paths[kind].name] = sha256_file(write_csv(frame, where(paths[kind])))
    drift_figure(report, where(paths["drift_plot"]))
    written[paths["drift_plot"].name] = sha256_file(where(paths["drift_plot"]))
    sidecar = facts | {"aggregation": out_files.AGGREGATION, "decisions": out_files.level_counts(tables, cm.classes),
                       "drift": report, "outputs": dict(sorted(written.items()))}
    write_json(sidecar, where(paths["sidecar"]))
    return sidecar


def _write_drift(cm: CardModel, scored: ScoredCohort, report: dict, facts: dict, paths: dict, where) -> dict:
    drift_figure(report, where(paths["drift_plot"]))
    full = facts | {"drift": report,
                    "outputs": {paths["drift_plot"].name: sha256_file(where(paths["drift_plot"]))}}
    write_json(full, where(paths["report"]))
    return full


def public(path: str | Path) -> str:
    """A path as the sidecar shows it: relative to the working folder, or `<outside …>/name`."""
    return public_path(str(Path(path).resolve()), str(Path.cwd().resolve()))


def drift_params(cm: CardModel, req: Request) -> tuple[DriftParams, str]:
    """The card's `drift` section (fixed with the model); a card built before the section existed
    takes it from `--params` (default params.yaml here)."""
    if isinstance(cm.params.get("drift"), dict):
        return from_dict(DriftParams, cm.params["drift"], "drift"), "card"
    path = Path(req.params or "params.yaml")
    if not path.is_file():
        raise PathTrailError(f"the card has no `drift` params section and there is no params file '{path}' to "
                             "take the drift limits from: pass --params FILE with a `drift` section")
    try:
        section = read_params(path).get("drift")
        if not isinstance(section, dict):
            raise ParamsError(f"{path}: no `drift` section")
        return from_dict(DriftParams, section, "drift"), path.as_posix()
    except ParamsError as exc:
        raise PathTrailError(f"drift limits: {exc}; add the `drift` section (pipelines/drift/) and `make params`") from None


def internal_test_scores(cm: CardModel, req: Request, *, required: bool = True
                         ) -> tuple[np.ndarray | None, dict[str, Any]]:
    """The internal test set's scores: evaluate's `predictions/internal_test.csv`, tied to the card
    through the audit trail (the folder's sha256 as the card's evaluate run recorded it). Absent,
    `drift` fails and `predict` reports the score checks as not computed (a deployment may ship
    the card, weights and reference only); present but not the card's, both refuse."""
    given = req.reference_scores is not None
    if given:
        path = Path(req.reference_scores)
    else:
        path, problem = repo_path(cm.root, REFERENCE_SCORES, "internal test predictions")
        if problem or path is None:
            raise PathTrailError(f"{problem}; pass --reference-scores")
    if not path.is_file() and not given and not required:
        return None, {"path": public(path), "missing": True}
    if not path.is_file():
        raise PathTrailError(f"'{path}': no such file; drift compares the scores with the internal test set's, "
                             "which the evaluate stage writes: `dvc pull` (or `dvc repro`), or pass --reference-scores")
    source = {"path": public(path), "sha256": sha256_file(path), "verified": "not tied to the card (given)"}
    if not given:
        source["verified"] = trail_check(cm, path.parent)
    frame = read_table(path)
    cols = [f"prob_{c}" for c in cm.classes]
    if not set(cols) <= set(frame.columns):
        raise PathTrailError(f"'{path}' has no columns {', '.join(cols)}: not predictions of this card's model")
    probs = frame[cols].to_numpy(np.float64)
    return (probs[:, 1] if probs.shape[1] == 2 else probs.max(axis=1)), source


def trail_check(cm: CardModel, folder: Path) -> str:
    entries = audit.read_entries(cm.root / audit.DEFAULT_TRAIL) if (cm.root / audit.DEFAULT_TRAIL).is_file() else []
    head = get(cm.card, "audit.chain_head")
    hashes = [e.get("entry_hash") for e in entries]
    seen = entries[: hashes.index(head) + 1] if head in hashes else []
    runs = [e for e in seen if e.get("stage") == "evaluate" and e.get("action") == "end" and e.get("outcome") == "ok"]
    if not runs:
        return "not tied to the card (no audit trail up to the card's head here)"
    recorded = (runs[-1].get("outputs") or {}).get("predictions")
    if recorded != sha256_path(folder):
        raise PathTrailError(f"'{folder}' is not what the card's evaluate run wrote (audit seq {runs[-1].get('seq')}); "
                             "restore it (`dvc checkout predictions`) and write predict's outputs elsewhere")
    return f"the folder's sha256 is the card's evaluate run's (audit seq {runs[-1].get('seq')})"


def cohort_drift(cm: CardModel, scored: ScoredCohort, reference_scores: np.ndarray | None,
                 params: DriftParams) -> dict[str, Any]:
    """Sample the cohort's raw patches (seeded, as stain_fit samples), gather the reference's fit
    patches when they are at hand, and compute the report (`drift.drift_report`)."""
    table, data = scored.table, scored.data
    rows = pick_reference_rows(len(table), params.max_patches, params.seed)
    images = [load_rgb(Path(data.data_root) / table.path[i], data.patch_size) for i in rows]
    ref_images, note = reference_patches(cm, params)
    # at the 10 decimals the predictions files hold, as the internal test scores it is compared with
    new = np.round(scored.probs[:, 1] if scored.probs.shape[1] == 2 else scored.probs.max(axis=1), 10)
    return drift_report(new, reference_scores, images, ref_images, cm.reference, scored.stain, params,
                        reference_note=note, scores_note=f"no internal test scores here ({REFERENCE_SCORES})")


def reference_patches(cm: CardModel, params: DriftParams) -> tuple[list[np.ndarray] | None, str]:
    """The stain reference's fit patches under the card's data root, each checked against the
    reference's image hashes; (None, why) when they are not at hand."""
    import torch

    paths, hashes = cm.reference.get("fit_paths") or [], cm.reference.get("reference_sha256") or []
    root, problem = repo_path(cm.root, get(cm.params, "data.data_root"), "the card's data root")
    if problem or root is None or not paths or len(paths) != len(hashes):
        return None, "the reference's fit patches are not at hand (no data root or fit list)"
    size = get(cm.params, "data.patch_size")
    images = []
    for i in pick_reference_rows(len(paths), params.max_patches, params.seed):
        file = root / str(paths[i])
        if not file.is_file():
            return None, f"the reference's fit patches are not at hand ({public(file)} is missing)"
        img = load_rgb(file, size)
        if image_sha256(torch.from_numpy(img.copy())) != hashes[i]:
            return None, f"the reference's fit patch {public(file)} is not the one it was fitted on"
        images.append(img)
    return images, ""
