"""Text primitives for the model card Markdown: numbers, CIs, escaped table cells, bullet lists."""

from __future__ import annotations

import json
from typing import Any

from pathtrail.card.values import get, number

TABLE_METRICS = ("auroc", "auprc", "sensitivity", "specificity", "balanced_accuracy", "brier")
LABELS = {
    "auroc": "AUROC",
    "auprc": "AUPRC",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "balanced_accuracy": "Balanced accuracy",
    "brier": "Brier score",
}


def cohorts(card: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    ev = get(card, "metrics.eval") or {}
    return [(c, ev[c]) for c in ("internal_test", "external") if isinstance(ev.get(c), dict)]


def num(value: Any, digits: int = 3) -> str:
    x = number(value)
    if x is None:
        return "–" if value is None else cell(value)
    return str(value) if isinstance(value, int) else f"{x:.{digits}f}"


def with_ci(m: dict[str, Any], key: str, digits: int = 3) -> str:
    low, high = m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")
    shown = num(m.get(key), digits)
    return (
        shown
        if low is None or high is None
        else f"{shown} [{num(low, digits)}, {num(high, digits)}]"
    )


def text(value: Any) -> str:
    """Strings as they are; anything else as JSON (true, null, [..], 0.002)."""
    return (
        value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    )


def cell(value: Any) -> str:
    return text(value).replace("|", "\\|").replace("\n", " ")


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def metric_table(named: list[tuple[str, dict[str, Any]]], first: str) -> str:
    header = [
        first,
        "Samples",
        "Patients",
        *(f"{LABELS[k]} (95% CI)" for k in TABLE_METRICS),
        "ECE",
    ]
    rows = [
        [
            name,
            num(m.get("n_samples")),
            num(m.get("n_patients")),
            *(with_ci(m, k) for k in TABLE_METRICS),
            num(m.get("ece")),
        ]
        for name, m in named
    ]
    return table(header, rows) if rows else "_No results recorded._\n"


def bullets(pairs: list[tuple[str, Any]]) -> str:
    return "".join(
        f"- **{k}:** {num(v, 6) if number(v) is not None else cell(v) if v is not None else '–'}\n"
        for k, v in pairs
    )
