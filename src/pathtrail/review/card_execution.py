"""`verify`'s checks of the card's execution-contract record and of metrics/headline.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pathtrail.card.build import execution_record, normalise
from pathtrail.card.headline import headline_metrics
from pathtrail.card.values import get


def described_entries(card: dict[str, Any], entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trail as the card saw it: up to its chain head (all of it when the head is unknown)."""
    hashes = [e.get("entry_hash") for e in entries]
    head = get(card, "audit.chain_head")
    return entries[: hashes.index(head) + 1] if head in hashes else entries


def execution_problems(card: dict[str, Any], entries: list[dict[str, Any]]) -> list[str]:
    """The card's `environment.execution` is what the stage runs' start entries record, so a card
    edited to say "honoured" (its hashes rewritten to match) is found."""
    shown = get(card, "environment.execution")
    recorded = normalise(execution_record(described_entries(card, entries)))
    if recorded == shown:
        return []
    said = shown.get("honoured") if isinstance(shown, dict) else None
    lapsed = sorted(s for s, r in recorded["stages"].items() if not (r and r.get("honoured")))
    return [f"card field environment.execution (honoured={said}) is not what the audit trail's stage runs "
            f"record: honoured={recorded['honoured']}" + (f" (not honoured by {', '.join(lapsed)})" if lapsed else "")]


def headline_problems(card: dict[str, Any], root: Path) -> list[str]:
    """metrics/headline.json, when present, holds exactly the card's own values."""
    path = root / "metrics/headline.json"
    if not path.is_file():
        return []
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ["metrics/headline.json cannot be read as JSON; rebuild it with `dvc repro -s model_card`"]
    if doc != normalise(headline_metrics(card)):
        return [("metrics/headline.json does not hold the card's values (status, AUROCs, compile check, criteria, "
                 "best epoch): it was edited or belongs to another card; rebuild it with `dvc repro -s model_card`")]
    return []
