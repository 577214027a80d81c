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
import fcntl
import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from pathtrail.core.hashing import digest, json_ready, sha256_path
from pathtrail.provenance.environment import actor, git_state, versions

DEFAULT_TRAIL = Path("audit/trail.jsonl")
GENESIS = "0" * 64
log = structlog.get_logger(__name__)


def trail_path(path: str | Path | None = None) -> Path:
    """The trail to write: explicit path, else $PATHTRAIL_AUDIT_TRAIL, else audit/trail.jsonl."""
    return Path(path or os.environ.get("PATHTRAIL_AUDIT_TRAIL") or DEFAULT_TRAIL)


def entry_digest(entry: dict[str, Any]) -> str:
    """The entry's `digest` without its own `entry_hash` field."""
    return digest({k: v for k, v in entry.items() if k != "entry_hash"})


def read_entries(path: str | Path) -> list[dict[str, Any]]:
    """Parse every line; a line that is not JSON is returned as {"_unparsable": text, "_line": n}."""
    p = Path(path)
    if not p.is_file():
        return []
    entries = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            entries.append({"_unparsable": line[:200], "_line": n})
    return entries


def chain_problems(entries: list[dict[str, Any]]) -> list[str]:
    """Every break in the chain: bad hash, wrong link, gap or reorder in sequence numbers."""
    problems = []
    prev = GENESIS
    for i, e in enumerate(entries):
        where = f"audit entry #{i + 1}"
        if "_unparsable" in e:
            problems.append(f"{where} (line {e['_line']}): not valid JSON")
            prev = None
            continue
        if e.get("seq") != i:
            problems.append(f"{where}: seq is {e.get('seq')!r}, expected {i} (entry deleted or reordered)")
        if prev is not None and e.get("prev_hash") != prev:
            problems.append(f"{where} (seq {e.get('seq')}): prev_hash does not match the entry before it")
        if e.get("entry_hash") != entry_digest(e):
            problems.append(f"{where} (seq {e.get('seq')}, stage {e.get('stage')}): entry_hash mismatch (entry edited)")
        prev = e.get("entry_hash")
    return problems


def chain_head(path: str | Path | None = None) -> str:
    entries = read_entries(trail_path(path))
    return entries[-1].get("entry_hash", GENESIS) if entries else GENESIS


def append(fields: dict[str, Any], path: str | Path | None = None) -> dict[str, Any]:
    """Append one entry (seq, time, prev_hash and entry_hash are filled in here) under a lock."""
    p = trail_path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.seek(0)
            last = None
            for line in f:
                if line.strip():
                    last = line
            prev = json.loads(last) if last else None
            entry = json_ready(fields)  # the line written is the value hashed
            entry["seq"] = prev["seq"] + 1 if prev else 0
            entry["prev_hash"] = prev["entry_hash"] if prev else GENESIS
            entry["time"] = datetime.now(UTC).isoformat(timespec="milliseconds")
            entry["entry_hash"] = entry_digest(entry)
            f.seek(0, os.SEEK_END)
            f.write(json.dumps(entry, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
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


class StageRecord:
    """Handed to the body of `stage(...)`: declare outputs and extra facts for the end entry."""

    def __init__(self) -> None:
        self._outputs: list[Path] = []
        self.facts: dict[str, Any] = {}

    def outputs(self, *paths: str | Path) -> None:
        self._outputs.extend(Path(p) for p in paths)

    def note(self, **facts: Any) -> None:
        self.facts.update(facts)


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
    append(
        {
            **common,
            "action": "start",
            "outcome": "running",
            "params": params or {},
            "params_sha256": digest(params or {}),
            "inputs": hash_paths(inputs),
            "versions": versions(),
            "pid": os.getpid(),
        },
        trail,
    )
    rec = StageRecord()
    t0 = time.monotonic()
    try:
        yield rec
    except BaseException as exc:
        append(
            {
                **common,
                "action": "end",
                "outcome": "failed",
                "error": f"{type(exc).__name__}: {exc}"[:2000],
                "duration_s": round(time.monotonic() - t0, 3),
                "facts": rec.facts,
            },
            trail,
        )
        raise
    append(
        {
            **common,
            "action": "end",
            "outcome": "ok",
            "outputs": hash_paths(rec._outputs),
            "duration_s": round(time.monotonic() - t0, 3),
            "facts": rec.facts,
        },
        trail,
    )
