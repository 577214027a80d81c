"""Stage evaluate: internal test split, external cohort and each site, with patient-clustered CIs.

The operating threshold is chosen on the internal validation split and locked (logged and
recorded in the audit trail) before the test split or the external cohort is read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pathtrail import audit, figures
from pathtrail.checkpoints import read_model
from pathtrail.diagnostics import (
    calibration_bins,
    confusion_rows,
    most_confident_errors,
    pr_points,
    roc_points,
)
from pathtrail.evaluation import Cohort, choose_threshold, domain_shift, evaluate_cohort
from pathtrail.experiment import probability_table, score_loader
from pathtrail.io import read_table, write_csv, write_json
from pathtrail.settings import DataParams, EvalParams
from pathtrail.stagekit import entrypoint, get_logger, load, raw_section, stage_parser
from pathtrail.store import open_store
from pathtrail.training import predict


def parse_args(argv: list[str] | None):
    p = stage_parser("evaluate", __doc__)
    p.add_argument("--model", default="models/model.pt")
    p.add_argument("--store", default="data/store")
    p.add_argument("--split", default="data/split")
    p.add_argument("--external", default="data/validated/external.csv")
    p.add_argument("--metrics", default="metrics/eval.json")
    p.add_argument("--predictions", default="predictions")
    p.add_argument("--plots", default="plots/eval")
    p.add_argument("--figures", default="reports/figures/eval")
    return p.parse_args(argv)


def score(model, store, table: pd.DataFrame, data: DataParams, seed: int) -> np.ndarray:
    return predict(model, score_loader(store, table, data, 256, seed), None, torch.device("cpu"))[0]


def positive(probs: np.ndarray) -> np.ndarray:
    """Binary problems are scored on the positive-class column; K classes keep the matrix."""
    return probs[:, 1] if probs.shape[1] == 2 else probs


def cohort_plots(name: str, table: pd.DataFrame, probs: np.ndarray, threshold: float | None,
                 ev: EvalParams, plots: Path, figs: Path, data: DataParams, store) -> None:
    y = table.label.to_numpy()
    if probs.shape[1] != 2:
        return
    p = probs[:, 1]
    roc, pr, cal = roc_points(y, p), pr_points(y, p), calibration_bins(y, p, ev.ece_bins)
    write_csv(pd.DataFrame(roc, columns=["fpr", "tpr", "threshold"]), plots / f"roc_{name}.csv")
    write_csv(pd.DataFrame(pr, columns=["recall", "precision"]), plots / f"pr_{name}.csv")
    write_csv(pd.DataFrame(cal, columns=["bin", "mean_predicted", "fraction_positive", "count"]),
              plots / f"calibration_{name}.csv")
    write_csv(pd.DataFrame(confusion_rows(y, p, threshold), columns=["actual", "predicted"]),
              plots / f"confusion_{name}.csv")
    figures.line_plot({name: ([r["fpr"] for r in roc], [r["tpr"] for r in roc])}, figs / f"roc_{name}.png",
                      title=f"ROC: {name}", xlabel="false positive rate", ylabel="true positive rate", diagonal=True)
    figures.line_plot({name: ([r["recall"] for r in pr], [r["precision"] for r in pr])}, figs / f"pr_{name}.png",
                      title=f"Precision-recall: {name}", xlabel="recall", ylabel="precision")
    figures.line_plot({name: ([r["mean_predicted"] for r in cal], [r["fraction_positive"] for r in cal])},
                      figs / f"calibration_{name}.png", title=f"Reliability: {name}",
                      xlabel="mean predicted probability", ylabel="fraction positive", diagonal=True)
    frame = table.assign(prob=p)
    worst = most_confident_errors(frame, threshold, ev.n_failures)
    write_csv(worst, plots / f"failures_{name}.csv")
    if len(worst):
        imgs = store.patches(store.rows_for(worst.path))
        titles = [f"y={int(r.label)} p={r.prob:.2f}" for r in worst.itertuples()]
        figures.image_grid([(f"{name}: most confident errors", imgs)], figs / f"failures_{name}.png", titles)


@entrypoint("evaluate")
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    ev, data = load(args, "eval", EvalParams), load(args, "data", DataParams)
    split, plots, figs = Path(args.split), Path(args.plots), Path(args.figures)
    log = get_logger()
    with audit.stage("evaluate", inputs=[args.model, args.store, split, args.external],
                     params={"eval": raw_section(args, "eval")}, trail=args.trail) as rec:
        model, meta = read_model(args.model)
        store = open_store(args.store)
        val = read_table(split / "val.csv")
        val_probs = score(model, store, val, data, ev.seed)
        threshold = (choose_threshold(val.label, positive(val_probs), ev.threshold_rule, ev.target_sensitivity,
                                      ev.fixed_threshold) if val_probs.shape[1] == 2 else None)
        rec.note(threshold=threshold, threshold_rule=ev.threshold_rule)
        log.info("evaluate.threshold_locked", threshold=threshold, rule=ev.threshold_rule, n_val=len(val))
        # Only now are the test split and the external cohort read.
        cohorts = {"internal_test": read_table(split / "test.csv")}
        if args.external and Path(args.external).is_file():
            cohorts["external"] = read_table(args.external)
        results: dict = {"threshold": threshold, "threshold_rule": ev.threshold_rule,
                         "classes": meta["classes"], "n_bootstrap": ev.n_bootstrap}
        scored = {}
        for name, table in cohorts.items():
            probs = score(model, store, table, data, ev.seed)
            scored[name] = (table, probs)
            write_csv(probability_table(table, probs, meta["classes"]), Path(args.predictions) / f"{name}.csv")
            results[name] = evaluate_cohort(table.label, positive(probs), table.patient_id, threshold,
                                            n_bootstrap=ev.n_bootstrap, seed=ev.seed, ece_bins=ev.ece_bins,
                                            slide_ids=table.slide_id)
            cohort_plots(name, table, probs, threshold, ev, plots, figs, data, store)
        prob_cols = [f"prob_{c}" for c in meta["classes"]]
        scored_all = pd.concat([probability_table(t, p, meta["classes"]) for t, p in scored.values()])
        results["per_site"] = {
            site: evaluate_cohort(part.label, positive(part[prob_cols].to_numpy()), part.patient_id, threshold,
                                  n_bootstrap=ev.n_bootstrap, seed=ev.seed, ece_bins=ev.ece_bins)
            for site, part in scored_all.groupby("site", sort=True)
        }
        if "external" in scored:
            (ti, pi), (te, pe) = scored["internal_test"], scored["external"]
            results["domain_shift"] = domain_shift(
                Cohort(ti.label.to_numpy(), positive(pi), ti.patient_id.to_numpy()),
                Cohort(te.label.to_numpy(), positive(pe), te.patient_id.to_numpy()),
                threshold, n_bootstrap=ev.n_bootstrap, seed=ev.seed)
        write_json(results, args.metrics)
        rec.outputs(args.metrics, args.predictions, plots, figs)
    log.info("evaluate.done", **{n: results[n].get("auroc") for n in cohorts})


if __name__ == "__main__":
    main()
