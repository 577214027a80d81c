"""The card's multi-label parts (`data.label_mode: multilabel`); nothing for a binary model.

JSON: a `labels` section (`mode`, `names`, the per-label `thresholds` locked on validation and the
rules that chose them). Markdown: "Per label" tables, one row per label and cohort (AUROC, AUPRC,
sensitivity, specificity with 95% CIs clustered by patient, threshold), and the macro / micro
summaries. Label names are the user's strings: every cell goes through `card.text.cell`
(escaped inline Markdown), so no name can add a row, a link or HTML.
"""

from __future__ import annotations

from typing import Any

from pathtrail.card.text import num, table, with_ci
from pathtrail.card.values import get

COHORT_NAMES = (("internal_test", "Internal test"), ("external", "External"))
PER_LABEL_METRICS = ("auroc", "auprc", "sensitivity", "specificity")


def label_fields(params: dict[str, Any], eval_metrics: dict[str, Any] | None) -> dict[str, Any]:
    """`{"labels": ...}` for the card JSON of a multi-label or multi-class model, `{}` for a binary one."""
    mode = get(params, "data.label_mode")
    if mode not in ("multilabel", "multiclass"):
        return {}
    ev = eval_metrics or {}
    names = get(params, "data.classes" if mode == "multiclass" else "data.label_columns") or []
    return {"labels": {"mode": mode, "names": list(names),
                       "thresholds": ev.get("thresholds"), "threshold_rules": ev.get("threshold_rules")}}


def overall_table(ev: dict[str, Any]) -> str:
    """The K-class metrics of a multi-class model per cohort (accuracy, Brier, top-label ECE)."""
    rows = [[shown, with_ci(m, "accuracy"), with_ci(m, "brier"), with_ci(m, "ece")]
            for key, shown in COHORT_NAMES if isinstance(m := (ev.get(key) or {}).get("overall"), dict)]
    return table(["Cohort", "Accuracy (95% CI)", "Brier (95% CI)", "Top-label ECE (95% CI)"], rows) + "\n" \
        if rows else ""


def per_label(card: dict[str, Any]) -> str:
    """The "Per label" Markdown section ("" for a binary model)."""
    section = card.get("labels")
    if not isinstance(section, dict):
        return ""
    ev = get(card, "metrics.eval") or {}
    thresholds = section.get("thresholds") or {}
    multiclass = section.get("mode") == "multiclass"
    rows = []
    for name in section.get("names") or []:
        for key, shown in COHORT_NAMES:
            m = ((ev.get(key) or {}).get("labels") or {}).get(name)
            if isinstance(m, dict):
                rows.append([name, shown, num(m.get("n_positive")), num(m.get("n_samples")),
                             *(with_ci(m, k) for k in PER_LABEL_METRICS), num(thresholds.get(name)),
                             *((num(m.get("decision_recall")), num(m.get("decision_precision"))) if multiclass
                               else ())])
    out = ("## Per label\n\nEach label is evaluated as its own binary problem at its threshold, locked on "
           "the validation split before the test data were opened; 95% CIs resample patients.\n\n")
    if section.get("mode") == "multiclass":
        out = ("## Per class\n\nEach class is evaluated one-vs-rest as its own binary problem (sensitivity and "
               "specificity at a one-vs-rest threshold, locked on the validation split before the test data "
               "were opened). The model's decision is the most probable class, not these thresholds: its "
               "recall and precision per class are the last two columns. 95% CIs resample patients.\n\n")
        out += overall_table(ev)
    what = "Class" if multiclass else "Label"
    out += table([what, "Cohort", "Positives", "Samples", "AUROC (95% CI)", "AUPRC (95% CI)",
                  "Sensitivity (95% CI)", "Specificity (95% CI)", "Threshold",
                  *(("Recall of the decision", "Precision of the decision") if multiclass else ())], rows) \
        if rows else f"_No per-{what.lower()} results recorded._\n"
    summary = [[shown, with_ci(m, "auroc"), with_ci(m, "auprc"), with_ci(m, "micro_auroc"),
                with_ci(m, "micro_auprc")]
               for key, shown in COHORT_NAMES if isinstance(m := ev.get(key), dict)]
    if summary:
        over = "classes" if multiclass else "labels"
        out += f"\n### Summaries over {over}\n\nMacro: the mean of the {over}' values; micro: every " \
               f"(patch, {over[:-1] if not multiclass else 'class'}) pair pooled.\n\n" + table(
                   ["Cohort", "Macro AUROC (95% CI)", "Macro AUPRC (95% CI)", "Micro AUROC (95% CI)",
                    "Micro AUPRC (95% CI)"], summary)
    return out
