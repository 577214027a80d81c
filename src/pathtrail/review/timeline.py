"""`pathtrail trail`: the audit trail as a readable timeline, one line per entry."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from pathtrail.core.text import printable

HEADER = ("seq", "time (UTC)", "actor", "stage", "action", "outcome", "entry", "details")


def utc(text: Any) -> str:
    """An ISO time as `YYYY-MM-DD HH:MM:SS.mmmZ` in UTC; anything unparsable as it is."""
    try:
        t = datetime.fromisoformat(str(text))
    except ValueError:
        return str(text)
    if t.tzinfo is not None:
        t = t.astimezone(UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def details(e: dict[str, Any]) -> str:
    parts = []
    if e.get("action") == "start":
        parts.append(f"params {str(e.get('params_sha256', ''))[:8]}")
        parts.append(f"{len(e['inputs']) if isinstance(e.get('inputs'), dict) else 0} inputs")
        commit = str(e.get("git_commit"))[:8] if e.get("git_commit") else "none"
        parts.append(f"commit {commit}{'+dirty' if e.get('git_dirty') else ''}")
    elif e.get("action") == "threshold_locked":
        parts.append(f"threshold {e.get('threshold')} ({e.get('threshold_rule')}) locked")
    elif e.get("action") == "checkpoint_saved":
        parts.append(f"checkpoint at epoch {e.get('epoch')} batch {e.get('batch')}, sha256 {str(e.get('sha256'))[:12]}")
    elif e.get("action") == "recover":
        parts.append(f"torn line {e.get('torn_line')} kept verbatim ({e.get('torn_bytes')} bytes)")
    else:
        if isinstance(e.get("duration_s"), int | float) and math.isfinite(float(min(e["duration_s"], 1e300))):
            parts.append(f"{float(min(e['duration_s'], 1e300)):.1f} s")
        if isinstance(e.get("outputs"), dict):
            parts.append(f"{len(e['outputs'])} outputs")
        if e.get("error"):
            parts.append(f"error: {str(e['error'])[:120]}")
    return ", ".join(parts)


def row(e: dict[str, Any]) -> tuple[str, ...]:
    if "_unparsable" in e:
        return ("?", "", "", "", "", "", "", f"line {e.get('_line')}: not valid JSON")
    return (
        str(e.get("seq")),
        utc(e.get("time")),
        str(e.get("actor", "")),
        str(e.get("stage", "")),
        str(e.get("action", "")),
        str(e.get("outcome", "")),
        str(e.get("entry_hash", ""))[:12],
        details(e),
    )


def select(entries: list[dict[str, Any]], stage: str | None) -> list[dict[str, Any]]:
    return [e for e in entries if stage is None or e.get("stage") == stage or "_unparsable" in e]


def format_timeline(
    entries: list[dict[str, Any]], problems: list[str], stage: str | None = None
) -> str:
    rows = [HEADER, *(row(e) for e in select(entries, stage))]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER) - 1)]
    lines = [
        printable("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1])
        for r in rows
    ]
    if problems:
        lines += ["", f"CHAIN BROKEN ({len(problems)} problem{'s' if len(problems) != 1 else ''}):"]
        lines += [f"  - {printable(p)}" for p in problems]
    else:
        lines += ["", f"chain intact: {len(entries)} entries"]
    return "\n".join(lines) + "\n"


def format_json(entries: list[dict[str, Any]], stage: str | None = None) -> str:
    return "".join(
        json.dumps(e, sort_keys=True, ensure_ascii=False) + "\n" for e in select(entries, stage)
    )
