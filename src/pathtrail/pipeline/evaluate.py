"""evaluate: internal test split, external cohort and each site, with patient-clustered CIs.

The operating threshold is chosen on the internal validation split and locked: a
`threshold_locked` audit entry (threshold, rule, sha256 of the validation probabilities), then a
`criteria_locked` entry (the release criteria and their sha256) are appended before the test
split or the external cohort is opened. `pathtrail verify` checks that order
(tests/stages/test_pipeline_stages.py), and the card accepts only criteria with that sha256.

`per_site` holds the internal test split's sites; `external_per_site` the external cohort's, only
when it has more than one site (one site would repeat the `external` row).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pathtrail.config.label_section import is_multiclass, is_multilabel
from pathtrail.config.loading import parse_section
from pathtrail.config.sections import (
    DataParams,
    EvalParams,
    ReleaseParams,
    RuntimeParams,
    runtime_of,
)
from pathtrail.core.files import read_table, write_csv, write_json
from pathtrail.core.hashing import digest
from pathtrail.core.progress import bar
from pathtrail.data.label_columns import label_matrix
from pathtrail.data.store import PatchStore, open_store
from pathtrail.evaluation import multilabel as ML
from pathtrail.evaluation.plots import cohort_plots, curve_figures
from pathtrail.evaluation.report import Cohort, choose_threshold, domain_shift, evaluate_cohort
from pathtrail.pipeline.stagekit import get_logger, path_option, staged_run
from pathtrail.train.compiling import scoring_module
from pathtrail.train.inputs import probability_table, score_table
from pathtrail.train.model_file import read_model
from pathtrail.train.scoring import scoring_device


@dataclass(frozen=True)
class Paths:
    model: str = path_option("models/model.pt")
    store: str = path_option("data/store")
    split: str = path_option("data/split")
    external: str = path_option("data/validated/external.csv")
    metrics: str = path_option("metrics/eval.json")
    predictions: str = path_option("predictions")
    plots: str = path_option("plots/eval")
    figures: str = path_option("reports/figures/eval")


# Patches per scoring batch: evaluate and `pathtrail predict` score through the same loader.
SCORE_BATCH_SIZE = 256


def positive(probs: np.ndarray) -> np.ndarray:
    """Binary problems are scored on the positive-class column; K classes keep the matrix."""
    return probs[:, 1] if probs.shape[1] == 2 else probs


def score_cohort(model: torch.nn.Module, store: PatchStore, table: pd.DataFrame, data: DataParams,
                 ev: EvalParams, *, runtime: RuntimeParams, device: torch.device) -> np.ndarray:
    """Class probabilities of `table`'s patches in table order: the one scoring path of evaluate and
    `pathtrail predict` (tests/stages/test_predict.py checks predict's bits against evaluate's).
    `model` is the one `scoring_module` returns for `ev.compile_mode` (both callers prepare it)."""
    return score_table(model, store, table, data, SCORE_BATCH_SIZE, ev.seed, runtime=runtime, device=device)


def run(params: Mapping[str, Any], paths: Paths, *, trail: str | None = None) -> dict[str, Any]:
    """Score and evaluate every cohort; write metrics, predictions and plots; returns the metrics."""
    ev, data = parse_section(params, "eval", EvalParams), parse_section(params, "data", DataParams)
    release = parse_section(params, "release", ReleaseParams)  # criteria checked before any work
    split, plots, figs = Path(paths.split), Path(paths.plots), Path(paths.figures)
    log = get_logger()
    with staged_run("evaluate", inputs=[paths.model, paths.store, split, paths.external],
                    outputs=[paths.metrics, paths.predictions, plots, figs],
                    params={"eval": params["eval"], "release": params["release"],
                            "execution": params.get("execution")}, trail=trail) as (rec, out):
        model, meta = read_model(paths.model)
        store = open_store(paths.store)
        device, runtime = scoring_device(), runtime_of(params)
        model, scoring = scoring_module(model, ev.compile_mode, device)
        rec.note(device=device.type, scoring=scoring)
        if "fallback" in scoring:
            log.warning("evaluate.compile_fallback", compile_mode=ev.compile_mode, reason=scoring["fallback"])

        def score(table: pd.DataFrame) -> np.ndarray:
            return score_cohort(model, store, table, data, ev, runtime=runtime, device=device)

        val = read_table(split / "val.csv")
        val_probs = score(val)
        if is_multilabel(data) or is_multiclass(data):  # per label / class (evaluation.multilabel)
            results = multilabel_run(data, ev, release, val, val_probs, score, paths, rec, out, scoring)
            log.info("evaluate.done", **{n: results[n].get("auroc") for n in ("internal_test", "external")
                                         if n in results})
            return results
        threshold = (choose_threshold(val.label, positive(val_probs), ev.threshold_rule, ev.target_sensitivity,
                                      ev.fixed_threshold) if val_probs.shape[1] == 2 else None)
        rec.note(threshold=threshold, threshold_rule=ev.threshold_rule)
        rec.record("threshold_locked", threshold=threshold, threshold_rule=ev.threshold_rule,
                   n_val=len(val), val_probabilities_sha256=digest(val_probs.tolist()))
        criteria = dict(sorted(release.criteria.items()))
        rec.record("criteria_locked", criteria=criteria, criteria_sha256=digest(criteria))
        log.info("evaluate.threshold_locked", threshold=threshold, rule=ev.threshold_rule, n_val=len(val),
                 criteria=len(criteria))
        # Only now are the test split and the external cohort read.
        cohorts = {"internal_test": read_table(split / "test.csv")}
        if paths.external and Path(paths.external).is_file():
            cohorts["external"] = read_table(paths.external)
        results: dict = {"threshold": threshold, "threshold_rule": ev.threshold_rule,
                         "classes": meta["classes"], "n_bootstrap": ev.n_bootstrap, "scoring": scoring}
        scored = {}
        shown = bar(len(cohorts), "evaluate", unit="cohort")
        for name, table in cohorts.items():
            shown.set_postfix(cohort=name)
            probs = score(table)
            scored[name] = (table, probs)
            write_csv(probability_table(table, probs, meta["classes"]), out(paths.predictions) / f"{name}.csv")
            results[name] = evaluate_cohort(table.label, positive(probs), table.patient_id, threshold,
                                            n_bootstrap=ev.n_bootstrap, seed=ev.seed, ece_bins=ev.ece_bins,
                                            slide_ids=table.slide_id)
            cohort_plots(name, table, probs, threshold, ev, out(plots), out(figs), store, metrics=results[name])
            shown.update(1)
        shown.close()
        results |= site_and_shift_metrics(scored, threshold, ev)
        write_json(results, out(paths.metrics))
    log.info("evaluate.done", **{n: results[n].get("auroc") for n in cohorts})
    return results


def site_and_shift_metrics(scored: dict[str, tuple[pd.DataFrame, np.ndarray]],
                           threshold: float | None, ev: EvalParams) -> dict[str, Any]:
    """`per_site` (internal test), `external_per_site` (when several sites), and `domain_shift`."""
    def by_site(table: pd.DataFrame, probs: np.ndarray) -> dict[str, Any]:
        sites = table["site"].astype(str).to_numpy()
        out = {}
        for site in sorted(set(sites)):
            rows = np.flatnonzero(sites == site)
            part = table.iloc[rows]
            out[site] = evaluate_cohort(part.label, positive(probs[rows]), part.patient_id, threshold,
                                        n_bootstrap=ev.n_bootstrap, seed=ev.seed, ece_bins=ev.ece_bins)
        return out

    out: dict[str, Any] = {"per_site": by_site(*scored["internal_test"])}
    if "external" in scored:
        table, probs = scored["external"]
        if table["site"].nunique() > 1:
            out["external_per_site"] = by_site(table, probs)
        (ti, pi), (te, pe) = scored["internal_test"], scored["external"]
        out["domain_shift"] = domain_shift(
            Cohort(ti.label.to_numpy(), positive(pi), ti.patient_id.to_numpy()),
            Cohort(te.label.to_numpy(), positive(pe), te.patient_id.to_numpy()),
            threshold, n_bootstrap=ev.n_bootstrap, seed=ev.seed)
    return out


def multilabel_run(data: DataParams, ev: EvalParams, release: ReleaseParams, val: pd.DataFrame,
                   val_probs: np.ndarray, score: Any, paths: Paths, rec: Any, out: Any,
                   scoring: dict[str, Any]) -> dict[str, Any]:
    """The multi-label evaluate: each label's threshold locked on validation (one `threshold_locked`
    entry with all of them), the criteria locked, then each cohort and site evaluated per label,
    macro and micro; predictions carry `prob_<label>` and `decision_<label>` per label.

    Multi-class: the same with the classes one-vs-rest as the labels (`label_<class>` is 1 where
    `label` is that class; the thresholds give each class's one-vs-rest sensitivity and
    specificity), plus the K-class metrics under `overall` (accuracy, confusion, ...) and one
    `decision` column: the most probable class."""
    multiclass = is_multiclass(data)
    names = list(data.classes) if multiclass else list(data.label_columns)

    def labels_of(table: pd.DataFrame, what: str = "table") -> np.ndarray:
        if multiclass:
            return np.eye(len(names), dtype=np.int64)[table.label.to_numpy(np.int64)]
        return label_matrix(table, names, what)

    thresholds, rules = ML.lock_thresholds(labels_of(val, "data/split/val.csv"), val_probs, names,
                                           ev.threshold_rule, ev.target_sensitivity, ev.fixed_threshold)
    rec.note(thresholds=thresholds, threshold_rule=ev.threshold_rule)
    rec.record("threshold_locked", thresholds=thresholds, threshold_rules=rules, threshold_rule=ev.threshold_rule,
               n_val=len(val), val_probabilities_sha256=digest(val_probs.tolist()))
    criteria = dict(sorted(release.criteria.items()))
    rec.record("criteria_locked", criteria=criteria, criteria_sha256=digest(criteria))
    # Only now are the test split and the external cohort read.
    cohorts = {"internal_test": read_table(Path(paths.split) / "test.csv")}
    if paths.external and Path(paths.external).is_file():
        cohorts["external"] = read_table(paths.external)
    results: dict[str, Any] = {"label_mode": data.label_mode, "labels": names, "threshold": None,
                               "thresholds": thresholds, "threshold_rules": rules,
                               "threshold_rule": ev.threshold_rule, "n_bootstrap": ev.n_bootstrap,
                               "scoring": scoring}

    def evaluate(table: pd.DataFrame, probs: np.ndarray) -> dict[str, Any]:
        kw = {"n_bootstrap": ev.n_bootstrap, "seed": ev.seed, "ece_bins": ev.ece_bins,
              "slide_ids": table.slide_id.to_numpy()}
        result = ML.evaluate_multilabel(labels_of(table), probs, names, table.patient_id.to_numpy(), thresholds,
                                        **kw)
        if multiclass:
            result |= {"label_mode": "multiclass",
                       "overall": evaluate_cohort(table.label, probs, table.patient_id, None, **kw)}
            y, decided = table.label.to_numpy(np.int64), probs.argmax(1)
            for k, name in enumerate(names):  # what the argmax decision does for each class
                hit = int(((decided == k) & (y == k)).sum())
                result["labels"][name]["decision_recall"] = hit / int((y == k).sum()) if (y == k).any() else None
                result["labels"][name]["decision_precision"] = (hit / int((decided == k).sum())
                                                                if (decided == k).any() else None)
        return result

    for name, table in cohorts.items():
        probs = score(table)
        if multiclass:
            frame = probability_table(table, probs, names)
            frame["decision"] = np.asarray(names, dtype=object)[probs.argmax(1)]
        else:
            frame = probability_table(table, probs, names, names)
            for k, col in enumerate(ML.decisions(probs, thresholds, names).T):
                frame[f"decision_{names[k]}"] = col
        write_csv(frame, out(paths.predictions) / f"{name}.csv")
        results[name] = evaluate(table, probs)
        truth = labels_of(table)  # (N, L) 0/1, once per cohort
        for k, label in enumerate(names):  # file names by index: label names are user strings
            curve_figures(f"{name}_label{k}", truth[:, k], probs[:, k], thresholds[label], out(paths.figures),
                          results[name]["labels"][label])
        sites = table["site"].astype(str).to_numpy()
        key = "per_site" if name == "internal_test" else "external_per_site"
        if key == "per_site" or len(set(sites)) > 1:
            results[key] = {site: evaluate(table.iloc[np.flatnonzero(sites == site)],
                                           probs[sites == site]) for site in sorted(set(sites))}
    out(paths.plots).mkdir(parents=True, exist_ok=True)
    write_json(results, out(paths.metrics))
    return results
