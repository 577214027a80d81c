"""The append-only, hash-chained audit trail (`audit/trail.jsonl`).

Each line is one JSON entry. `entry_hash` is the sha256 of the entry's canonical JSON without
`entry_hash`; `prev_hash` is the previous entry's `entry_hash` (64 zeros for the first), so editing,
deleting or reordering any entry breaks the chain. Entries are only ever appended (under a file
lock); a correction is a new entry. A stage records, at its start, the sha256 of every input and of
its params section, and at its end the sha256 of every output, or the error it failed with. DVC
hashes dependencies only after a stage has run, so the start-of-stage hashes here are what prove
what a stage actually read.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import structlog

from pathtrail.core.errors import PathTrailError
from pathtrail.core.hashing import digest, sha256_path
from pathtrail.provenance.environment import actor, git_state, versions
from pathtrail.provenance.trail import (  # noqa: F401  (the trail API, re-exported)
    GENESIS,
    TrailWriteError,
    append_entry,
    chain_problems,
    chain_report,
    entry_digest,
    read_entries,
)

DEFAULT_TRAIL = Path("audit/trail.jsonl")
log = structlog.get_logger(__name__)
# What this process runs with, beyond its params (the execution contract as honoured, the runtime
# knobs): set once by the stage entry point, recorded in every start entry, hashed by no artifact.
_run_context: dict[str, Any] = {}


def set_run_context(**facts: Any) -> None:
    """Record `facts` (e.g. execution=..., runtime=...) in the start entry of every later stage run
    of this process (replacing what was set before; no arguments: record nothing more)."""
    _run_context.clear()
    _run_context.update(facts)


def trail_path(path: str | Path | None = None) -> Path:
    """The trail to write: explicit path, else $PATHTRAIL_AUDIT_TRAIL, else audit/trail.jsonl."""
    return Path(path or os.environ.get("PATHTRAIL_AUDIT_TRAIL") or DEFAULT_TRAIL)


def chain_head(path: str | Path | None = None) -> str:
    entries = [e for e in read_entries(trail_path(path)) if "_unparsable" not in e]
    return entries[-1].get("entry_hash", GENESIS) if entries else GENESIS


def append(fields: dict[str, Any], path: str | Path | None = None) -> dict[str, Any]:
    """Append one entry (seq, time, prev_hash and entry_hash are filled in here) under a lock.

    A torn or unterminated last line is first preserved in a recovery entry (see
    `pathtrail.provenance.trail`); a failed write raises TrailWriteError and changes nothing."""
    entry = append_entry(trail_path(path), fields)
    log.info("audit.append", seq=entry["seq"], stage=entry.get("stage"), action=entry.get("action"),
             outcome=entry.get("outcome"), entry_hash=entry["entry_hash"][:12])
    return entry


def hash_paths(paths: Iterable[str | Path]) -> dict[str, str | None]:
    """sha256 of each path (None when missing), keyed by the path as given (posix)."""
    out: dict[str, str | None] = {}
    for p in paths:
        key = Path(p).as_posix()
        out[key] = sha256_path(p) if Path(p).exists() else None
    return out


class InputChangedError(PathTrailError):
    """A stage's input was modified while the stage ran."""


def changed_inputs(recorded: dict[str, str | None]) -> list[str]:
    """One sentence per input whose sha256 now differs from the one recorded at the stage's start."""
    now = hash_paths(recorded)
    return [f"{path} changed while the stage ran (sha256 {str(was)[:12]}… at the start, "
            f"{str(now[path])[:12]}… at the end)" for path, was in sorted(recorded.items()) if now[path] != was]


class StageRecord:
    """Handed to the body of `stage(...)`: declare outputs, facts for the end entry, and entries
    that must be recorded while the stage runs (`record`)."""

    def __init__(self, common: dict[str, Any] | None = None, trail: str | Path | None = None) -> None:
        self._outputs: list[Path] = []
        self.facts: dict[str, Any] = {}
        self._common, self._trail = common or {}, trail
        self._started: dict[str, str | None] = {}

    def outputs(self, *paths: str | Path) -> None:
        self._outputs.extend(Path(p) for p in paths)

    def note(self, **facts: Any) -> None:
        self.facts.update(facts)

    def check_inputs(self) -> None:
        """Raise InputChangedError when an input differs from its hash at the start (`stage` checks
        again before its end entry; calling this first lets a caller do so before publishing outputs)."""
        if changed := changed_inputs(self._started):
            raise InputChangedError("; ".join(changed) + ". Rerun the stage once nothing edits its inputs.")

    def record(self, action: str, **fields: Any) -> dict[str, Any]:
        """Append an entry of this run now (e.g. `threshold_locked`), before the stage goes on."""
        return append({**self._common, **fields, "action": action, "outcome": fields.get("outcome", "ok")},
                      self._trail)


@contextlib.contextmanager
def stage(
    name: str,
    *,
    inputs: Iterable[str | Path],
    params: dict[str, Any] | None = None,
    trail: str | Path | None = None,
) -> Iterator[StageRecord]:
    """Record a stage run: a `start` entry with input/params hashes, then an `end` entry.

    On an exception the `end` entry has outcome `failed` and the error; the exception propagates.
    Before a successful end entry every input is hashed again (the stat-keyed cache makes an
    unchanged file cheap); an input that changed while the stage ran fails the stage
    (InputChangedError, the file named in the end entry).
    """
    git = git_state()
    run_id = uuid.uuid4().hex
    common = {
        "stage": name,
        "run_id": run_id,
        "actor": actor(),
        "git_commit": git.commit,
        "git_dirty": git.dirty,
        "git_modified": git.modified,
    }
    started = hash_paths(inputs)
    append({**common, "action": "start", "outcome": "running", "params": params or {},
            "params_sha256": digest(params or {}), "inputs": started, "versions": versions(),
            "pid": os.getpid(), **_run_context}, trail)
    rec = StageRecord(common, trail)
    rec._started = started
    t0 = time.monotonic()
    try:
        yield rec
        rec.check_inputs()
    except BaseException as exc:
        append({**common, "action": "end", "outcome": "failed",
                "error": f"{type(exc).__name__}: {exc}"[:2000],
                "duration_s": round(time.monotonic() - t0, 3), "facts": rec.facts}, trail)
        raise
    append({**common, "action": "end", "outcome": "ok", "outputs": hash_paths(rec._outputs),
            "inputs_rechecked": True, "duration_s": round(time.monotonic() - t0, 3),
            "facts": rec.facts}, trail)
