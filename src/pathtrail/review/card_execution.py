"""`verify`'s checks of the card's execution-contract record and of metrics/headline.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pathtrail.card.build import execution_record, normalise
from pathtrail.card.headline import headline_metrics
from pathtrail.card.values import get
from pathtrail.review.card_release import described_entries, show


def execution_problems(card: dict[str, Any], entries: list[dict[str, Any]]) -> list[str]:
    """The card's `environment.execution` is what the stage runs' start entries record, so a card
    edited to say "honoured" (its hashes rewritten to match) is found."""
    shown = get(card, "environment.execution")
    recorded = normalise(execution_record(described_entries(card, entries)))
    if recorded == shown:
        return []
    if not isinstance(shown, dict) or not isinstance(shown.get("stages"), dict):
        return [(f"card field environment.execution is {type(shown).__name__}, not the per-stage record the audit "
                f"trail gives (honoured={recorded['honoured']}); rebuild the card with `dvc repro -s model_card`")]
    diffs = []
    if shown.get("honoured") != recorded["honoured"]:
        diffs.append(f"honoured {show(shown.get('honoured'))} (trail {recorded['honoured']})")
    for stage in sorted(set(shown["stages"]) | set(recorded["stages"])):
        was, now = shown["stages"].get(stage), recorded["stages"].get(stage)
        if was == now:
            continue
        if not isinstance(was, dict) or not isinstance(now, dict):
            diffs.append(f"{stage}: {show(was)} (trail {show(now)})")
            continue
        diffs += [f"{stage}.{k} {show(was.get(k))} (trail {show(now.get(k))})"
                  for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)]
    return ["card field environment.execution is not what the audit trail's stage runs record: "
            + "; ".join(diffs[:5]) + (f" and {len(diffs) - 5} more" if len(diffs) > 5 else "")]


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
