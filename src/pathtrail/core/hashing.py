"""The one canonical JSON form and sha256 helper: params hashes, audit entries and artifacts.

`canonical_json(obj)` is the form every JSON artifact is written in (sorted keys, two-space indent,
UTF-8, NaN/inf as null, trailing newline); `canonical_json(obj, compact=True)` the same content
without whitespace, which `digest` hashes. Params hashes (`params_sha256` in the trail, the card and
the model metadata), audit entry hashes and the resume fingerprint are all `digest(...)`.
The digest of plain ASCII, finite JSON data is the sha256 of `json.dumps(obj, sort_keys=True,
separators=(",", ":"))` (tests/unit/test_hashing.py), so hashes recorded before this module
existed still verify; non-ASCII text is hashed as UTF-8, not as ASCII escapes.

Files are hashed once: `sha256_file` (and `sha256_path` for each file of a folder) goes through
`pathtrail.core.hash_cache`, a stat-keyed cache that every stage, the trail and `verify` share.

Hash statistics, for benchmarks (a stable interface): with `PATHTRAIL_HASH_STATS=<file>` in the
environment, every Python process that imported this module appends one JSON line to `<file>` when it
exits (a single `O_APPEND` write, so concurrent processes never interleave), with the keys
`pid`, `module` (`__main__`'s module name, e.g. `stages.normalize`, or null), `argv` (the first four
arguments), `cache` (`$PATHTRAIL_HASH_CACHE` or `default`), and the counters `bytes_read` and
`files_read` (file bytes read to hash them), `memory_hits` and `db_hits` (files whose digest came from
this process's dict or from the shared database, unread) and `bytes_skipped` (the sizes of those). A
run's total is the sum of the lines. `PATHTRAIL_HASH_CACHE=off` turns the shared cache off (each
process then reads every file it hashes once), `PATHTRAIL_HASH_CACHE=<file>` puts the database there.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from pathlib import Path
from typing import Any

from pathtrail.core import hash_cache


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes, read only when no process of this repository has hashed the file
    with its current stat (`pathtrail.core.hash_cache`: key, racy rule, where the cache lives)."""
    return hash_cache.sha256_file(path)


def sha256_path(path: str | Path) -> str:
    """sha256 of a file, or of a directory as the hash of its sorted (relative path, file hash) list.

    Inside a directory nothing is followed or opened except regular files: a symlink contributes
    its target text (`path\0symlink:target`), an empty folder `path/\0folder`, a FIFO, socket or
    device `path\0special`. A folder holding only regular files hashes exactly as it did before
    those lines existed; adding a symlink, an empty folder or a FIFO anywhere changes the hash."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    if p.is_dir():
        h = hashlib.sha256()
        for rel, line in sorted(_tree_lines(p)):
            h.update(f"{'/'.join(rel)}{line}\n".encode())
        return h.hexdigest()
    raise FileNotFoundError(f"cannot hash {p}: no such file or directory")


def _tree_lines(root: Path) -> list[tuple[tuple[str, ...], str]]:
    """(relative path parts, what follows the path) for every entry under `root`, links unfollowed."""
    out: list[tuple[tuple[str, ...], str]] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        rel = here.relative_to(root).parts
        if not dirs and not files and rel:
            out.append((rel, "/\0folder"))
        for name in [*files, *(d for d in dirs if (here / d).is_symlink())]:
            f = here / name
            st = os.lstat(f)
            if stat.S_ISLNK(st.st_mode):
                out.append(((*rel, name), f"\0symlink:{os.readlink(f)}"))
            elif stat.S_ISREG(st.st_mode):
                out.append(((*rel, name), f"\0{sha256_file(f)}"))
            else:
                out.append(((*rel, name), "\0special"))
    return out


def canonical_json(obj: Any, *, compact: bool = False) -> str:
    """JSON with sorted keys, no NaN/inf (turned into null), UTF-8 text: stable across runs.

    Default: the artifact form (indent 2, trailing newline). `compact=True`: no whitespace at all,
    the form `digest` hashes (what `json.dumps(..., separators=(",", ":"))` writes).
    """
    value = json_ready(obj)
    if compact:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False, default=str)
    return json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def digest(obj: Any) -> str:
    """sha256 of `obj`'s compact canonical JSON (UTF-8): the hash of a params section or an entry."""
    return sha256_bytes(canonical_json(obj, compact=True).encode("utf-8"))


def json_ready(obj: Any) -> Any:
    """What `canonical_json` and `digest` see: NaN/inf as None, keys as strings, tuples as lists,
    numpy/torch scalars as Python numbers. Write an object through this before hashing its JSON
    elsewhere, so the text and the hash describe the same value."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return json_ready(obj.item())
    return obj


def loads_unique(text: str | bytes) -> Any:
    """`json.loads`, refusing an object that names a key twice (ValueError): parsers disagree on
    which value counts, so a signed or reviewed file must not be ambiguous."""
    return json.loads(text, object_pairs_hook=_unique_keys)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for k, v in pairs:
        if k in seen:
            raise ValueError(f"key {k[:40]!r} appears twice")
        seen[k] = v
    return seen
