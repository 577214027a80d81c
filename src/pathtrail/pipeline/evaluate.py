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

from pathtrail.config.loading import parse_section
from pathtrail.config.sections import DataParams, EvalParams, ReleaseParams
from pathtrail.core.files import read_table, write_csv, write_json
from pathtrail.core.hashing import digest
from pathtrail.core.progress import bar
from pathtrail.data.store import open_store
from pathtrail.evaluation.plots import cohort_plots
from pathtrail.evaluation.report import Cohort, choose_threshold, domain_shift, evaluate_cohort
from pathtrail.pipeline.stagekit import get_logger, path_option, staged_run
from pathtrail.train.inputs import probability_table, score_table
from pathtrail.train.model_file import read_model


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


def positive(probs: np.ndarray) -> np.ndarray:
    """Binary problems are scored on the positive-class column; K classes keep the matrix."""
    return probs[:, 1] if probs.shape[1] == 2 else probs


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
        val = read_table(split / "val.csv")
        val_probs = score_table(model, store, val, data, 256, ev.seed)
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
                         "classes": meta["classes"], "n_bootstrap": ev.n_bootstrap}
        scored = {}
        shown = bar(len(cohorts), "evaluate", unit="cohort")
        for name, table in cohorts.items():
            shown.set_postfix(cohort=name)
            probs = score_table(model, store, table, data, 256, ev.seed)
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
