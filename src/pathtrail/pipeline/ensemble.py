"""ensemble: stack the members' probabilities with a meta-learner and evaluate it like any model.

Binary problems only. Every member (the trained ones of `ensemble.members`, and the main
pipeline's model as `ensemble.reuse`) scores the validation split through evaluate's own scoring
path (`evaluate.score_cohort`). The meta-learner (`pathtrail.ensemble.meta`) is fitted on those
validation probabilities only; the operating threshold is chosen on its out-of-fold validation
probabilities and locked (`threshold_locked`, then `criteria_locked`, as evaluate records them)
before the test split or the external cohort is read. Then both are scored by every member,
stacked and evaluated as evaluate does (patient-clustered bootstrap CIs, per site, domain shift);
each member is evaluated too, with its own threshold locked on its validation probabilities.
The card section (`pathtrail.card.ensemble`) names each member's weights sha256 and compile gate
and the meta-learner's file sha256.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathtrail.card.ensemble import ensemble_section, gate_of, render
from pathtrail.config.loading import parse_section
from pathtrail.config.sections import DataParams, EvalParams, ReleaseParams, runtime_of
from pathtrail.core.errors import PathTrailError
from pathtrail.core.files import read_json, read_table, write_csv, write_json, write_text
from pathtrail.core.hashing import digest, sha256_file
from pathtrail.data.store import open_store
from pathtrail.ensemble.layout import ENSEMBLE_STAGE, member_files
from pathtrail.ensemble.meta import fit_logistic, out_of_fold
from pathtrail.ensemble.params import ENSEMBLE_PARAMS, read_ensemble
from pathtrail.evaluation.report import choose_threshold, evaluate_cohort
from pathtrail.pipeline.evaluate import score_cohort, site_and_shift_metrics
from pathtrail.pipeline.stagekit import get_logger, path_option, staged_run
from pathtrail.train.inputs import probability_table
from pathtrail.train.model_file import read_model
from pathtrail.train.scoring import scoring_device


@dataclass(frozen=True)
class Paths:
    ensemble_params: str = path_option(ENSEMBLE_PARAMS, "the ensemble's params file")
    members: str = path_option("models/ensemble/members", "the trained members' folders (ensemble_member)")
    main_model: str = path_option("models/model.pt", "the main pipeline's model (the member `ensemble.reuse`)")
    main_compile_check: str = path_option("metrics/compile_check.json", "its compile check")
    store: str = path_option("data/store")
    split: str = path_option("data/split")
    external: str = path_option("data/validated/external.csv")
    meta: str = path_option("models/ensemble/meta_learner.json")
    metrics: str = path_option("metrics/ensemble.json")
    predictions: str = path_option("models/ensemble/predictions", "the ensemble's predictions/<cohort>.csv")
    card: str = path_option("model_cards/ensemble", "the ensemble's card section: card.json and card.md")


def member_sources(ensemble: Any, paths: Paths) -> dict[str, tuple[str, Path, Path]]:
    """name -> (source, model file, compile check report), in the meta-learner's feature order."""
    out = {}
    for name in ensemble.names():
        if name == ensemble.reuse:
            out[name] = ("main pipeline", Path(paths.main_model), Path(paths.main_compile_check))
        else:
            f = member_files(paths.members, name)
            out[name] = ("ensemble_member", f["model"], f["compile_check"])
    missing = [p.as_posix() for _, m, c in out.values() for p in (m, c) if not p.is_file()]
    if missing:
        raise PathTrailError("the ensemble's members are not all there: missing " + ", ".join(missing)
                             + ". Run `dvc repro ensemble/dvc.yaml` (it trains them), after `dvc repro`.")
    return out


def run(params: Mapping[str, Any], paths: Paths, *, trail: str | None = None) -> dict[str, Any]:
    """Fit, lock, score and evaluate; write the meta-learner, metrics, predictions and card section."""
    ensemble, raw = read_ensemble(paths.ensemble_params)
    ev, data = parse_section(params, "eval", EvalParams), parse_section(params, "data", DataParams)
    release = parse_section(params, "release", ReleaseParams)
    if len(data.classes) != 2 or data.label_mode != "binary":
        raise PathTrailError(f"the ensemble supports binary problems only; data.label_mode is {data.label_mode} "
                             f"and data.classes has {len(data.classes)} classes")
    sources = member_sources(ensemble, paths)
    split = Path(paths.split)
    inputs = [paths.ensemble_params, paths.store, split, paths.external,
              *(p for _, m, c in sources.values() for p in (m, c))]
    recorded = {"ensemble": raw, "eval": params["eval"], "release": params["release"],
                "execution": params.get("execution")}
    log = get_logger()
    with staged_run(ENSEMBLE_STAGE, inputs=inputs, outputs=[paths.meta, paths.metrics, paths.predictions, paths.card],
                    params=recorded, trail=trail) as (rec, out):
        models = {}
        for name, (_, model_file, _) in sources.items():
            model, meta = read_model(model_file)
            if list(meta["classes"]) != list(data.classes):
                raise PathTrailError(f"ensemble member {name!r} ({model_file}) was trained for classes "
                                     f"{meta['classes']}, not data.classes {data.classes}: retrain it")
            models[name] = (model, meta)
        store, device, runtime = open_store(paths.store), scoring_device(), runtime_of(params)
        names = list(sources)

        def score(table: pd.DataFrame) -> np.ndarray:  # (n, members): each member's positive-class probability
            return np.stack([score_cohort(models[n][0], store, table, data, ev, runtime=runtime,
                                          device=device)[:, 1] for n in names], axis=1)

        val = read_table(split / "val.csv")
        v = score(val)
        oof = out_of_fold(v, val.label.to_numpy(), val.patient_id.to_numpy(), names, ensemble.meta)
        fitted = fit_logistic(v, val.label.to_numpy(), names, ensemble.meta.l2)
        meta_json = {**fitted.to_json(), "folds": ensemble.meta.folds, "seed": ensemble.meta.seed,
                     "fitted_on": {"split": "val", "n_samples": len(val), "n_patients": int(val.patient_id.nunique()),
                                   "probabilities_sha256": digest(v.tolist())}}
        write_json(meta_json, out(paths.meta))
        meta_sha = sha256_file(out(paths.meta))

        def locked(labels: Any, probs: np.ndarray) -> float:
            return choose_threshold(labels, probs, ev.threshold_rule, ev.target_sensitivity, ev.fixed_threshold)

        threshold = locked(val.label, oof)
        member_thresholds = {n: locked(val.label, v[:, i]) for i, n in enumerate(names)}
        rec.record("threshold_locked", threshold=threshold, threshold_rule=ev.threshold_rule, n_val=len(val),
                   val_probabilities_sha256=digest(oof.tolist()), meta_learner_sha256=meta_sha,
                   member_thresholds=member_thresholds)
        criteria = dict(sorted(release.criteria.items()))
        rec.record("criteria_locked", criteria=criteria, criteria_sha256=digest(criteria))
        # Only now are the test split and the external cohort read.
        cohorts = {"internal_test": read_table(split / "test.csv")}
        if paths.external and Path(paths.external).is_file():
            cohorts["external"] = read_table(paths.external)
        results: dict[str, Any] = {"threshold": threshold, "threshold_rule": ev.threshold_rule,
                                   "classes": data.classes, "n_bootstrap": ev.n_bootstrap, "members": {}}
        scored, member_scored = {}, {n: {} for n in names}
        for cohort, table in cohorts.items():
            m = score(table)
            p = fitted.predict(m)
            scored[cohort] = (table, np.stack([1.0 - p, p], axis=1))
            write_csv(probability_table(table, scored[cohort][1], data.classes),
                      out(paths.predictions) / f"{cohort}.csv")
            results[cohort] = evaluate_cohort(table.label, p, table.patient_id, threshold, n_bootstrap=ev.n_bootstrap,
                                              seed=ev.seed, ece_bins=ev.ece_bins, slide_ids=table.slide_id)
            for i, n in enumerate(names):
                member_scored[n][cohort] = evaluate_cohort(
                    table.label, m[:, i], table.patient_id, member_thresholds[n], n_bootstrap=ev.n_bootstrap,
                    seed=ev.seed, ece_bins=ev.ece_bins, slide_ids=table.slide_id)
        results |= site_and_shift_metrics(scored, threshold, ev)
        results["members"] = {n: {"threshold": member_thresholds[n], **member_scored[n]} for n in names}
        write_json(results, out(paths.metrics))
        members = [{"name": n, "source": src, "arch": models[n][1]["arch"], "width": models[n][1]["width"],
                    "model_file": model_file.as_posix(), "model_sha256": sha256_file(model_file),
                    "params_sha256": models[n][1].get("params_sha256"),
                    "compile_check_file": check.as_posix(), "compile_check_sha256": sha256_file(check),
                    "gate": gate_of(read_json(check))}
                   for n, (src, model_file, check) in sources.items()]
        section = ensemble_section(members, {**meta_json, "sha256": meta_sha, "file": Path(paths.meta).as_posix()},
                                   results, digest(raw))
        write_json({"ensemble": section}, out(paths.card) / "card.json")
        write_text(render(section), out(paths.card) / "card.md")
        rec.note(threshold=threshold, meta_learner_sha256=meta_sha, gates_ok=section["gates_ok"],
                 auroc={c: results[c].get("auroc") for c in cohorts})
    log.info("ensemble.done", **{c: results[c].get("auroc") for c in cohorts})
    return results
