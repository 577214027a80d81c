"""The card's per-label tables: one row per label and cohort, user label names escaped."""

from __future__ import annotations

from pathtrail.card.labels import label_fields, per_label

HOSTILE = ["lymphocytes", "a|b\n| injected | row |", "<img src=x onerror=alert(1)>", "[link](http://x)"]


def metrics(auroc: float) -> dict:
    return {"auroc": auroc, "auroc_ci_low": auroc - 0.1, "auroc_ci_high": auroc + 0.05, "auprc": 0.5,
            "auprc_ci_low": 0.4, "auprc_ci_high": 0.6, "sensitivity": 0.7, "specificity": 0.8,
            "n_positive": 5, "n_samples": 20}


def card_for(names: list[str]) -> dict:
    params = {"data": {"label_mode": "multilabel", "label_columns": names}}
    ev = {"thresholds": {n: 0.25 for n in names}, "threshold_rules": {n: "youden" for n in names}}
    for cohort in ("internal_test", "external"):
        ev[cohort] = {"labels": {n: metrics(0.8) for n in names}, **metrics(0.75), "micro_auroc": 0.7,
                      "micro_auroc_ci_low": 0.6, "micro_auroc_ci_high": 0.8}
    return {**label_fields(params, ev), "metrics": {"eval": ev}}


def test_a_binary_card_has_no_label_section():
    assert label_fields({"data": {"label_mode": "binary", "label_columns": []}}, {}) == {}
    assert per_label({"metrics": {"eval": {}}}) == ""


def test_per_label_table_has_a_row_per_label_and_cohort_and_the_summaries():
    card = card_for(["lymphocytes", "fibrosis"])
    assert card["labels"]["names"] == ["lymphocytes", "fibrosis"]
    assert card["labels"]["thresholds"] == {"lymphocytes": 0.25, "fibrosis": 0.25}
    text = per_label(card)
    rows = [line for line in text.splitlines() if line.startswith(("| lymphocytes", "| fibrosis"))]
    assert len(rows) == 4
    assert "| lymphocytes | Internal test | 5 | 20 | 0.800 [0.700, 0.850] |" in text
    assert "Micro AUROC (95% CI)" in text and "0.700 [0.600, 0.800]" in text


def test_hostile_label_names_cannot_add_rows_html_or_links():
    text = per_label(card_for(HOSTILE))
    tables = [[line for line in block.splitlines() if line.startswith("|")] for block in text.split("\n\n")]
    tables = [t for t in tables if t]
    assert len(tables) == 2
    for lines in tables:  # every row has the header's cells: no name adds a cell or a row
        cells = lines[0].count("|")
        assert all(line.count("|") - line.count("\\|") == cells for line in lines)
    assert len(tables[0]) == 2 + 2 * len(HOSTILE)
    assert "<img" not in text and "[link](" not in text and "&lt;img" in text
