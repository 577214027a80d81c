"""The one canonical JSON form and sha256 helper: params hashes, audit entries and artifacts.

`canonical_json(obj)` is the form every JSON artifact is written in (sorted keys, two-space indent,
UTF-8, NaN/inf as null, trailing newline); `canonical_json(obj, compact=True)` the same content
without whitespace, which `digest` hashes. Params hashes (`params_sha256` in the trail, the card and
the model metadata), audit entry hashes and the resume fingerprint are all `digest(...)`.
The digest of plain ASCII, finite JSON data is the sha256 of `json.dumps(obj, sort_keys=True,
separators=(",", ":"))` (tests/unit/test_hashing.py), so hashes recorded before this module
existed still verify; non-ASCII text is hashed as UTF-8, not as ASCII escapes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import time
from pathlib import Path
from typing import Any

CHUNK = 1 << 20
RACY_S = 2.0
_CACHE: dict[tuple[Any, ...], str] = {}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _stat_key(st: os.stat_result, path: str | Path) -> tuple[Any, ...]:
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes, through the process's stat-keyed cache.

    The cache key is (real path, size, mtime_ns, ctime_ns, inode, device), so any write or
    replacement of the file misses it. As in git's "racy" rule, a hash is only cached once the
    file's mtime is more than RACY_S seconds old: an edit inside the filesystem's timestamp
    granularity cannot hide behind an unchanged stat."""
    before = os.stat(path)
    key = _stat_key(before, path)
    if (hit := _CACHE.get(key)) is not None:
        return hit
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    value = h.hexdigest()
    if time.time_ns() - before.st_mtime_ns > RACY_S * 1e9 and _stat_key(os.stat(path), path) == key:
        _CACHE[key] = value
    return value


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
