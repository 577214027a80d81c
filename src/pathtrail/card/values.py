"""Plain values the card modules share: status words, dotted-key access, number formatting."""

from __future__ import annotations

from typing import Any

CARD_FORMAT = 1
CARD_STAGE = "model_card"
RELEASE_CANDIDATE = "RELEASE CANDIDATE"
RELEASED = "RELEASED"
EXPERIMENT = "EXPERIMENT"
DRAFT = "DRAFT – NOT FOR RELEASE"
COHORTS = ("internal_test", "external")
VALIDATION_KEYS = (
    "status",
    "n_errors",
    "n_warnings",
    "error_counts",
    "warning_counts",
    "cohorts",
    "rules",
)


def get(tree: Any, dotted: str, default: Any = None) -> Any:
    """`tree["a"]["b"]` for "a.b"; `default` when any step is missing."""
    node = tree
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys for nested mappings; lists and scalars are leaves; an empty mapping is a leaf."""
    if not isinstance(tree, dict) or (not tree and prefix):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key in sorted(tree, key=str):
        out |= flatten(tree[key], f"{prefix}.{key}" if prefix else str(key))
    return out


def number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def fmt(value: Any, digits: int = 6) -> str:
    x = number(value)
    return "n/a" if x is None else f"{x:.{digits}f}"
