"""The card checks of `pathtrail verify` that recompute a verdict: the training params hash, the
release criteria and the status (from the card's own values, which the other checks tie to files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pathtrail.card.build import (
    TRAINING_PARAMS_SCOPE,
    criteria_lock,
    status_of,
    upstream_dirty,
)
from pathtrail.card.checklist import checklist
from pathtrail.card.public import OUTSIDE, redact
from pathtrail.card.release import criteria_results, is_demo_data, release_facts
from pathtrail.card.values import get
from pathtrail.config.loading import result_params
from pathtrail.config.sections import TRAINING_SECTIONS, training_sections
from pathtrail.core.hashing import digest
from pathtrail.review.release import load_lock


def show(value: Any) -> str:
    """A value for a one-line finding: JSON unless a string, cut at 80 characters."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def training_params_problems(card: dict[str, Any], model: Path) -> list[str]:
    """The card's training params hash is the model file's, and the hash of the card's own sections."""
    import torch

    try:
        meta = torch.load(model, map_location="cpu", weights_only=True).get("metadata") or {}
    except Exception as exc:  # noqa: BLE001 - any unreadable model file is the finding
        return [f"models/model.pt cannot be read for its metadata ({type(exc).__name__})"]
    shown, out = get(card, "model.training_params_sha256"), []
    if shown != meta.get("params_sha256"):
        out.append(f"card field model.training_params_sha256 = {str(shown)[:12]}… but models/model.pt records "
                   f"params_sha256 {str(meta.get('params_sha256'))[:12]}…")
    if get(card, "model.initial_weights_sha256") != meta.get("local_weights_sha256"):
        out.append(f"card field model.initial_weights_sha256 = {show(get(card, 'model.initial_weights_sha256'))} "
                   f"but models/model.pt records local_weights_sha256 {show(meta.get('local_weights_sha256'))}")
    params = card.get("params") if isinstance(card.get("params"), dict) else {}
    sections = training_sections(params)
    if get(card, "model.training_params_scope") == TRAINING_PARAMS_SCOPE and digest(sections) != shown \
            and not _redacted(sections):
        out.append(f"card field model.training_params_sha256 = {str(shown)[:12]}… is not the hash of the card's "
                   f"own {', '.join(TRAINING_SECTIONS)} params ({digest(sections)[:12]}…)")
    return out


def _redacted(tree: Any) -> bool:
    return OUTSIDE in json.dumps(tree, ensure_ascii=False)


def described_entries(card: dict[str, Any], entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trail as the card saw it: up to its chain head (all of it when the head is unknown)."""
    hashes = [e.get("entry_hash") for e in entries]
    head = get(card, "audit.chain_head")
    return entries[: hashes.index(head) + 1] if head in hashes else entries


def release_problems(card: dict[str, Any], root: Path, entries: list[dict[str, Any]]) -> list[str]:
    """Recompute the criteria verdicts and the status from the card's own values (which the other
    checks tie to the files): an edited verdict or status is found even when rewritten consistently."""
    rel = card.get("release") if isinstance(card.get("release"), dict) else {}
    params = card.get("params") if isinstance(card.get("params"), dict) else {}
    lock = load_lock(root / "dvc.lock")[0] if (root / "dvc.lock").is_file() else None
    facts = release_facts(eval_metrics=get(card, "metrics.eval"), compile_check=card.get("compile_check"),
                          normalization=get(card, "data.normalization"), split=get(card, "data.split"),
                          params=params, intended_use=str(card.get("intended_use") or ""),
                          demo=is_demo_data(lock, params))
    out = []
    try:
        verdicts = criteria_results(get(params, "release.criteria") or {}, facts)
    except ValueError as exc:
        return [f"card params release.criteria cannot be parsed: {exc}"]
    for name, r in sorted(verdicts["results"].items()):
        shown = (rel.get("results") or {}).get(name) or {}
        if shown.get("passed") != r["passed"] or shown.get("value") != r["value"]:
            out.append(f"card field release.results.{name} says passed={shown.get('passed')} with value "
                       f"{show(shown.get('value'))}, but the card's own values give passed={r['passed']} "
                       f"with {show(r['value'])}")
    if set(rel.get("results") or {}) != set(verdicts["results"]):
        out.append("card field release.results does not list exactly the criteria in its params")
    # What the card describes is the trail up to its chain head (later runs that reproduced the same
    # outputs, e.g. a fresh clone's `dvc repro`, are judged by the chain-head check).
    described = described_entries(card, entries)
    locked = criteria_lock(described) or {}
    shown_lock = rel.get("locked_before_evaluation") or {}
    if any(shown_lock.get(k) != locked.get(k) for k in ("seq", "criteria_sha256")) \
            or (shown_lock.get("changed_after_test") or []) != (locked.get("changed_after_test") or []):
        out.append(f"card field release.locked_before_evaluation (seq {shown_lock.get('seq')}, sha256 "
                   f"{str(shown_lock.get('criteria_sha256'))[:12]}…, {len(shown_lock.get('changed_after_test') or [])} "
                   f"earlier change(s)) is not the "
                   f"criteria_locked entry of the latest evaluate run up to the card's chain head (seq {locked.get('seq')})")
    lock_ok = bool(locked) and locked.get("criteria_sha256") == verdicts["criteria_sha256"]
    again = {**card, "release": {**rel, **verdicts, "locked_before_evaluation": {**locked, "matches": lock_ok}}}
    again["checklist"] = checklist(again)
    upstream = upstream_dirty(described)
    if upstream != (get(card, "provenance.upstream_dirty") or []):
        out.append(f"card field provenance.upstream_dirty does not list the dirty stage runs the trail records: "
                   f"{show(upstream)}")
    again["provenance"] = {**(card.get("provenance") or {}), "upstream_dirty": upstream}
    status, _ = status_of(again)
    if status != card.get("release_status"):
        out.append(f"card field release_status = {show(card.get('release_status'))}, but its own values give "
                   f"{status!r}")
    metrics = root / "metrics/release.json"
    if metrics.is_file():
        try:
            doc = json.loads(metrics.read_text(encoding="utf-8"))
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or doc.get("status") != card.get("release_status") \
                or doc.get("passed") != rel.get("passed"):
            out.append("metrics/release.json does not agree with the card's release status and criteria")
    return out + committed_params_problems(card, root)


def committed_params_problems(card: dict[str, Any], root: Path) -> list[str]:
    """A card that says its params are the committed ones has the params.yaml of its commit."""
    commit, params = get(card, "provenance.git_commit"), card.get("params")
    if not commit or get(card, "provenance.params_changed") or not isinstance(params, dict):
        return []
    import git
    import yaml

    try:
        text = git.Repo(root, search_parent_directories=True).git.show(f"{commit}:params.yaml")
        committed = redact(result_params(yaml.safe_load(text) or {}), str(root.resolve()))
    except (git.exc.GitError, ValueError, yaml.YAMLError):
        return []  # a commit that does not exist is reported by the git check
    if committed != params:
        return [(f"card field provenance.params_changed is empty, but the card's params differ from params.yaml "
                f"at commit {str(commit)[:12]}: the card claims committed params it did not have")]
    return []
