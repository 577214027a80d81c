"""Where the expected bytes of an artifact come from when `pathtrail reproduce` measures a Δ.

The card holds hashes, not files. A file is read from the user's working tree when its sha256 is
the card's, else from the user's DVC cache by the md5 the card's `provenance.dvc_lock` records
(`files/md5/ab/cdef…`, DVC 3's layout); a folder's expected file list is its `.dir` object there.
Nothing is written and nothing is taken on trust: a file is used only when its hash is the
expected one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from pathtrail.core.files import repo_path
from pathtrail.core.hashing import sha256_file
from pathtrail.review.compare import folder_changes, merge, numeric_delta


def cache_object(cache: Path, md5: str) -> Path:
    return cache / "files" / "md5" / md5[:2] / md5[2:]


def listing(cache: Path, md5: str) -> dict[str, str] | None:
    """{relative path: md5} of a folder from its `.dir` object, or None when it is not there."""
    try:
        entries = json.loads(cache_object(cache, md5).read_text(encoding="utf-8"))
        return {str(e["relpath"]): str(e["md5"]) for e in entries}
    except (OSError, ValueError, TypeError, KeyError):
        return None


def md5_listing(folder: Path) -> dict[str, str]:
    """{relative path: md5} of the regular files under `folder` (DVC's per-file md5)."""
    out = {}
    for here, _, files in os.walk(folder):
        for name in files:
            path = Path(here) / name
            if path.is_file() and not path.is_symlink():
                out[path.relative_to(folder).as_posix()] = hashlib.md5(
                    path.read_bytes(), usedforsecurity=False).hexdigest()
    return out


@dataclass(frozen=True)
class Expected:
    root: Path  # the user's repository
    cache: Path  # the user's DVC cache folder
    lock_md5: dict[str, str]  # output path -> md5, from the card's provenance.dvc_lock

    def object(self, md5: str) -> Path | None:
        path = cache_object(self.cache, md5)
        return path if path.is_file() else None

    def file(self, rel: str, sha256: str) -> Path | None:
        """A file with the expected bytes of `rel`, or None when there is none here."""
        here, _ = repo_path(self.root, rel, "card artifact")  # never outside the repository
        if here is not None and here.is_file() and sha256_file(here) == sha256:
            return here
        md5 = self.lock_md5.get(rel)
        obj = self.object(md5) if md5 and not md5.endswith(".dir") else None
        return obj if obj is not None and sha256_file(obj) == sha256 else None

    def folder_detail(self, expected_md5: str, reproduced: Path) -> str:
        """Which files of a reproduced folder differ, and the largest |Δ| over the numeric ones."""
        before = listing(self.cache, expected_md5)
        if before is None:
            return "no listing of the expected folder in your DVC cache to compare with"
        changes = folder_changes(before, md5_listing(reproduced))
        deltas = []
        for rel in changes.differ:
            obj = self.object(before[rel])
            d = numeric_delta(obj, reproduced / rel, rel) if obj is not None else None
            if d is not None:
                deltas.append(d)
        return "; ".join(p for p in (changes.describe(), merge(deltas).describe() if deltas else "") if p)
