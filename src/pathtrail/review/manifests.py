"""The manifests part of `pathtrail verify`'s card check: each cohort manifest the card names,
re-hashed wherever it lives (inside `data.data_root` or elsewhere in the repository; outside the
repository only when params.yaml names it). A manifest edited after the run (labels flipped, rows
added) is a problem naming the manifest. Tested in tests/unit/test_verify_manifests.py.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from pathtrail.card.public import OUTSIDE, public_path
from pathtrail.card.values import get
from pathtrail.config.loading import ParamsError, read_params
from pathtrail.core.files import repo_path
from pathtrail.core.hashing import sha256_path


def manifest_problems(card: dict[str, Any], root: Path) -> list[str]:
    """Each cohort manifest the card names still has the sha256 the card recorded, wherever it lives
    (inside `data.data_root` or not). A manifest outside the repository is re-hashed only when
    params.yaml names it (the card shows its redacted name) and it is a regular file."""
    out = []
    found = get(card, "provenance.manifests")
    for cohort, m in sorted(found.items()) if isinstance(found, dict) else []:
        if not isinstance(m, dict) or not isinstance(m.get("path"), str) or not isinstance(m.get("sha256"), str):
            continue
        rel, sha, field = m["path"], m["sha256"], f"card field provenance.manifests.{cohort}"
        if _outside(root, rel):
            path, refused = _named_by_params(root, str(cohort), rel), None
            if path is None:
                continue  # not in this repository, and params.yaml does not name it: not checkable here
        else:
            path, refused = repo_path(root, rel, field)
        if refused or path is None:
            out.append(str(refused))
        elif (now := sha256_path(path) if path.exists() else None) != sha:
            out.append(f"{field}: the manifest {rel} " + ("is missing" if now is None else f"has sha256 {now[:12]}…")
                       + f", but the card recorded {sha[:12]}… for it: the cohort's rows or labels changed after "
                       "the run. Rerun `dvc repro` (validate and every stage after it), or restore the manifest")
    return out


def _outside(root: Path, rel: str) -> bool:
    if rel.startswith(OUTSIDE) or Path(rel).is_absolute():
        return True
    base = root.resolve()
    try:
        target = (base / rel).resolve()
    except (OSError, RuntimeError):
        return False  # repo_path names it
    return target != base and base not in target.parents


def _named_by_params(root: Path, cohort: str, shown: str) -> Path | None:
    try:
        value = get(read_params(root / "params.yaml"), f"data.{cohort}_manifest")
    except ParamsError:
        return None
    if not isinstance(value, str) or public_path(value, str(root.resolve())) != shown:
        return None
    path = Path(value) if Path(value).is_absolute() else root / value
    try:
        return path if stat.S_ISREG(os.stat(path).st_mode) else None
    except (OSError, ValueError):
        return None
