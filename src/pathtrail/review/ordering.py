"""Ordering claims recorded in the audit trail, checked by `pathtrail verify`."""

from __future__ import annotations

from typing import Any


def threshold_order_problems(entries: list[dict[str, Any]], end: dict[str, Any] | None = None) -> list[str]:
    """The evaluate run that ends with `end` (by default the latest successful one; `verify` passes
    the run whose outputs are present, see `pathtrail.review.runs`) has a `threshold_locked` entry
    between its start and its end, holding the threshold its end entry (and so metrics/eval.json)
    reports, and a `criteria_locked` entry (the release criteria) before its end."""
    ends = [e for e in entries if e.get("stage") == "evaluate" and e.get("action") == "end"
            and e.get("outcome") == "ok"]
    if not ends:
        return []
    end = end if end is not None else ends[-1]
    run = [e for e in entries if e.get("run_id") == end.get("run_id") and e.get("stage") == "evaluate"]
    locks = [e for e in run if e.get("action") == "threshold_locked"]
    where = f"evaluate run seq {end.get('seq')}"
    if not locks:
        return [(f"{where}: no threshold_locked entry; the threshold is not proven to be fixed before the "
                "test split and the external cohort were read (rerun `dvc repro evaluate`)")]
    lock, facts = locks[0], end.get("facts") if isinstance(end.get("facts"), dict) else {}
    out = []
    if run[0].get("action") != "start" or run.index(lock) > run.index(end):
        out.append(f"{where}: the threshold_locked entry (seq {lock.get('seq')}) is not between its start and end")
    if facts.get("threshold") != lock.get("threshold"):
        out.append(f"{where}: the end entry reports threshold {facts.get('threshold')!r} but "
                   f"{lock.get('threshold')!r} was locked (seq {lock.get('seq')})")
    criteria = [e for e in run if e.get("action") == "criteria_locked"]
    if not criteria:
        out.append(f"{where}: no criteria_locked entry; the release criteria are not proven to be fixed before "
                   "evaluation (rerun `dvc repro evaluate`)")
    elif run.index(criteria[0]) > run.index(end):
        out.append(f"{where}: the criteria_locked entry (seq {criteria[0].get('seq')}) is not before its end")
    return out
