"""Text primitives for the model card Markdown: numbers, CIs, escaped table cells, bullet lists."""

from __future__ import annotations

import json
from typing import Any

from pathtrail.card.values import get, number
from pathtrail.core.text import md_inline

TABLE_METRICS = ("auroc", "auprc", "sensitivity", "specificity", "balanced_accuracy", "brier")
LABELS = {
    "auroc": "AUROC",
    "auprc": "AUPRC",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "balanced_accuracy": "Balanced accuracy",
    "brier": "Brier score",
}


class Md(str):
    """Text that is already inert Markdown (made here from numbers only): `cell` keeps it as it is."""


def cohorts(card: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    ev = get(card, "metrics.eval") or {}
    return [(c, ev[c]) for c in ("internal_test", "external") if isinstance(ev.get(c), dict)]


def num(value: Any, digits: int = 3) -> str:
    x = number(value)
    if x is None:
        return "–" if value is None else text(value)  # escaped where it is placed (table, bullets)
    return str(value) if isinstance(value, int) else f"{x:.{digits}f}"


def with_ci(m: dict[str, Any], key: str, digits: int = 3) -> str:
    low, high = m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")
    shown = num(m.get(key), digits)
    if low is None or high is None:
        return shown
    if all(number(v) is not None for v in (m.get(key), low, high)):
        return Md(f"{shown} [{num(low, digits)}, {num(high, digits)}]")
    return f"{shown} [{num(low, digits)}, {num(high, digits)}]"


def text(value: Any) -> str:
    """Strings as they are; anything else as JSON (true, null, [..], 0.002)."""
    return (
        value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    )


def cell(value: Any) -> str:
    """Any value as inert one-line Markdown (user strings cannot add HTML, rows, lines or banners)."""
    return value if isinstance(value, Md) else md_inline(text(value))


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
