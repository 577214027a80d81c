"""The trail file itself: reading it, checking its chain, and crash-safe appends.

The trail is JSON lines. An append writes one complete line (`\\n`-terminated) under an exclusive
lock and fsyncs it. A crash or a full disk in the middle of a write can leave a *torn* last line (a
prefix of an entry) or an entry without its final newline. The next append detects that, keeps the
line in the file exactly as it is, and first writes a `recover` entry that holds the line verbatim
(its text, base64 of its bytes and their sha256); the chain then continues from the last valid
entry. `chain_report` accepts a torn line only when the entry right after it is the recovery entry
that describes it, and reports the repair as a note. A failed write (ENOSPC, EIO) is undone by
truncating the file back to its previous length, so the trail is left exactly as it was. An append
reads only the end of the file (`last_lines`), whatever the trail's length; the whole file only when
its last line needs that repair.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pathtrail.core.errors import PathTrailError
from pathtrail.core.hashing import digest, json_ready, sha256_bytes

GENESIS = "0" * 64
RECOVERY_STAGE = "audit"
MAX_TORN_TEXT = 100_000
TAIL_WINDOW = 1 << 16


class TrailWriteError(PathTrailError):
    """An entry could not be written (disk full, I/O error); the trail is unchanged."""


def entry_digest(entry: dict[str, Any]) -> str:
    """The entry's `digest` without its own `entry_hash` field."""
    return digest({k: v for k, v in entry.items() if k != "entry_hash"})


def is_entry(value: Any) -> bool:
    """A JSON object whose `entry_hash` is its own digest and whose `seq` is an integer."""
    return (isinstance(value, dict) and isinstance(value.get("seq"), int)
            and not isinstance(value.get("seq"), bool) and value.get("entry_hash") == entry_digest(value))


def _parse(raw: bytes, n: int) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # bad UTF-8 or JSON, an int past Python's digit limit
        value, why = None, "not valid JSON"
    else:
        why = "" if isinstance(value, dict) else f"a JSON {type(value).__name__}, not an entry object"
    if why:
        return {"_unparsable": raw[:200].decode("utf-8", "backslashreplace"), "_line": n,
                "_sha256": sha256_bytes(raw), "_why": why}
    return value


def split_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """(newline-terminated lines, the unterminated remainder, b"" when the data ends with one)."""
    *lines, tail = data.split(b"\n")
    return lines, tail


def read_entries(path: str | Path) -> list[dict[str, Any]]:
    """Every non-blank line parsed; a line that is not a JSON object is returned as
    {"_unparsable": text, "_line": n, "_sha256": sha256 of its bytes, "_why": reason}."""
    p = Path(path)
    if not p.is_file():
        return []
    lines, tail = split_lines(p.read_bytes())
    return [_parse(raw, n) for n, raw in enumerate([*lines, tail], start=1) if raw.strip()]


def chain_report(entries: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(problems, notes): every break in the chain, and every torn line that was repaired."""
    problems: list[str] = []
    notes: list[str] = []
    prev: str | None = GENESIS
    seq = 0
    for i, e in enumerate(entries):
        where = f"audit entry #{i + 1}"
        if "_unparsable" in e:
            nxt = entries[i + 1] if i + 1 < len(entries) else {}
            if (nxt.get("action") == "recover" and nxt.get("torn_line") == e["_line"]
                    and nxt.get("torn_sha256") == e["_sha256"]):
                notes.append(f"line {e['_line']} is a torn entry ({e['_why']}: {e['_unparsable'][:60]!r}), "
                             f"kept verbatim and repaired by the recovery entry seq {nxt.get('seq')}")
                continue
            problems.append(f"{where} (line {e['_line']}): {e['_why']}")
            prev = None
            continue
        if e.get("seq") != seq:
            problems.append(f"{where}: seq is {e.get('seq')!r}, expected {seq} (entry deleted or reordered)")
        if prev is not None and e.get("prev_hash") != prev:
            problems.append(f"{where} (seq {e.get('seq')}): prev_hash does not match the entry before it")
        if e.get("entry_hash") != entry_digest(e):
            problems.append(f"{where} (seq {e.get('seq')}, stage {e.get('stage')}): "
                            "entry_hash mismatch (entry edited)")
        if e.get("action") == "recover" and not problems:
            notes.append(f"seq {e.get('seq')}: {e.get('reason')} at line {e.get('torn_line')} was repaired "
                         f"({e.get('torn_bytes')} bytes kept verbatim, sha256 {str(e.get('torn_sha256'))[:12]}…)")
        prev = e.get("entry_hash")
        seq += 1
    return problems, notes


def chain_problems(entries: list[dict[str, Any]]) -> list[str]:
    """Every break in the chain: bad hash, wrong link, gap or reorder in sequence numbers."""
    return chain_report(entries)[0]


def _encode(entry: dict[str, Any]) -> bytes:
    return (json.dumps(entry, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def _seal(fields: dict[str, Any], prev: dict[str, Any] | None) -> dict[str, Any]:
    entry = json_ready(fields)  # the line written is the value hashed
    entry["seq"] = prev["seq"] + 1 if prev else 0
    entry["prev_hash"] = prev["entry_hash"] if prev else GENESIS
    entry["time"] = datetime.now(UTC).isoformat(timespec="milliseconds")
    entry["entry_hash"] = entry_digest(entry)
    return entry


def _recovery(raw: bytes, line: int, complete: bool) -> dict[str, Any]:
    text = raw.decode("utf-8", "backslashreplace")
    return {"stage": RECOVERY_STAGE, "action": "recover", "outcome": "repaired",
            "reason": ("unterminated last line (a complete entry without its newline; it stays in the chain)"
                       if complete else "torn last line (not a complete entry; the chain continues "
                       "from the entry before it)"),
            "torn_line": line, "torn_bytes": len(raw), "torn_sha256": sha256_bytes(raw),
            "torn_text": text[:MAX_TORN_TEXT], "torn_base64": base64.b64encode(raw).decode("ascii")}


def plan_append(data: bytes, fields: dict[str, Any]) -> tuple[bytes, list[dict[str, Any]]]:
    """The bytes to append to a trail holding `data`, and the entries they hold (a recovery entry
    first when the last line is torn or unterminated, then the new entry)."""
    lines, tail = split_lines(data)
    numbered = [(n, raw) for n, raw in enumerate(lines, start=1) if raw.strip()]
    prefix, torn = b"", None
    if tail.strip():
        prefix, torn = b"\n", (tail, len(lines) + 1)
    elif numbered and "_unparsable" in _parse(numbered[-1][1], numbered[-1][0]):
        torn = (numbered[-1][1], numbered[-1][0])  # a torn line someone already terminated
    if torn is not None and not tail.strip():
        numbered = numbered[:-1]
    last = next((v for _, raw in reversed(numbered) if _linkable(v := _parse(raw, 0))), None)
    out: list[dict[str, Any]] = []
    if torn is not None:
        candidate = _parse(torn[0], torn[1])
        complete = is_entry(candidate) and candidate.get("prev_hash") == (last or {}).get("entry_hash", GENESIS)
        last = candidate if complete else last
        out.append(_seal(_recovery(torn[0], torn[1], complete), last))
        last = out[-1]
    out.append(_seal(fields, last))
    return prefix + b"".join(_encode(e) for e in out), out


def _linkable(value: dict[str, Any]) -> bool:
    """An entry the next one can link to (its recorded hash and seq), valid or not: an edited entry
    stays a visible break instead of being bypassed."""
    seq = value.get("seq")
    return (isinstance(seq, int) and not isinstance(seq, bool)
            and isinstance(value.get("entry_hash"), str))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def append_entry(path: Path, fields: dict[str, Any]) -> dict[str, Any]:
    """Append one entry under an exclusive lock, repairing a torn tail first; returns the entry.

    On a failed write the file is truncated back to its previous length and TrailWriteError raised.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        payload, entries = plan_append(last_lines(fd, size), fields)
        try:
            _write_all(fd, payload)
            os.fsync(fd)
        except OSError as exc:
            undone = _truncate(fd, size)
            what = "no space left on device" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
            raise TrailWriteError(
                f"{path}: could not append the {fields.get('stage')} {fields.get('action')} entry ({what}); "
                + ("the trail is unchanged. Free some space and rerun the stage."
                   if undone else f"the partial write could not be undone ({undone!r}); the next append "
                   "will record the torn line.")) from exc
        return entries[-1]
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def last_lines(fd: int, size: int, window: int = TAIL_WINDOW) -> bytes:
    """What `plan_append` needs of a trail of `size` bytes: its last complete line, when that line is
    an entry the next one can link to and the file ends with a newline (the common case: one or two
    reads from the end, whatever the trail's length: tests/unit/test_trail_recovery.py::
    test_append_reads_only_the_last_entry); otherwise (a torn or odd last line, whose recovery entry
    names its line number) the whole file."""
    while True:
        start = max(0, size - window)
        data = os.pread(fd, size - start, start)
        if start > 0:  # the window's first line may be cut: keep what follows its first newline
            cut = data.find(b"\n")
            data = data[cut + 1:] if cut >= 0 else b""
        lines, tail = split_lines(data)
        last = next((raw for raw in reversed(lines) if raw.strip()), None)
        if start == 0 or tail:
            return data if start == 0 else _whole(fd)
        if last is not None:
            value = _parse(last, 0)
            return last + b"\n" if "_unparsable" not in value and _linkable(value) else _whole(fd)
        window *= 4


def _whole(fd: int) -> bytes:
    with open(fd, "rb", closefd=False) as f:
        f.seek(0)
        return f.read()


def _truncate(fd: int, size: int) -> bool:
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    except OSError:
        return False
    return True
