"""metrics/headline.json: the few values `dvc exp show` compares, taken from the card."""

from __future__ import annotations

from typing import Any

from pathtrail.card.values import get

# metrics/headline.json, the only DVC metric: (group, key in the card, name in the file). At most 15
# values, so `dvc exp show` stays a readable table; everything else is in metrics/*.json and the card.
HEADLINE = (
    ("internal_test", "metrics.eval.internal_test.auroc", "auroc"),
    ("internal_test", "metrics.eval.internal_test.auroc_ci_low", "auroc_ci_low"),
    ("internal_test", "metrics.eval.internal_test.auroc_ci_high", "auroc_ci_high"),
    ("external", "metrics.eval.external.auroc", "auroc"),
    ("external", "metrics.eval.external.auroc_ci_low", "auroc_ci_low"),
    ("external", "metrics.eval.external.auroc_ci_high", "auroc_ci_high"),
    ("compile_check", "compile_check.passed", "passed"),
    ("compile_check", "compile_check.auroc_delta", "auroc_delta"),
    ("release", "release.n_passed", "criteria_passed"),
    ("release", "release.n_failed", "criteria_failed"),
    ("train", "metrics.train.best_epoch", "best_epoch"),
    ("train", "metrics.train.best_val_auroc", "best_val_auroc"),
)


def headline_metrics(card: dict[str, Any]) -> dict[str, Any]:
    """The headline values, taken from the card (so they are the card's, value for value)."""
    out: dict[str, Any] = {"status": card["release_status"]}
    for group, key, name in HEADLINE:
        out.setdefault(group, {})[name] = get(card, key)
    return out
