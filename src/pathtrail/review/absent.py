"""A workspace without its DVC-tracked outputs (a fresh clone): one line that says what to run.

On a fresh clone git brings the card, the trail, dvc.lock and the small outputs DVC leaves to git
(`cache: false` metrics), but none of the outputs DVC caches (data, store, weights, predictions).
Every check would then list each of them as missing; instead `verify` prints one line first, naming
`dvc pull` when a DVC remote is configured (`dvc remote list`) and `make repro` otherwise, and
folds the problems about those missing files into a count. The exit status stays non-zero.
Tested in tests/unit/test_verify_fresh_clone.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

MISSING_WORDS = ("missing", "deleted since dvc.lock", "not in cache since dvc.lock")
_TOKEN = re.compile(r"[\w./-]+")
_REMOTE_URL = re.compile(r"^remote\.(.+)\.url=")


def cached_outputs(root: Path, lock: dict[str, Any]) -> list[str]:
    """The outputs dvc.lock records that git does not track (so only DVC brings them)."""
    outs = sorted({str(o["path"]) for body in lock["stages"].values() for o in body["outs"]})
    if not outs:
        return []
    try:
        done = subprocess.run(["git", "ls-files", "-z", "--", *outs], cwd=root, capture_output=True,
                              text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return outs
    if done.returncode != 0:
        return outs  # not a git repository: every output is DVC's to bring
    tracked = [t for t in done.stdout.split("\0") if t]
    return [o for o in outs if not any(t == o or t.startswith(o.rstrip("/") + "/") for t in tracked)]


def dvc_remotes(root: Path) -> tuple[list[str], str | None]:
    """(remote names, the default remote) as DVC sees them: what `dvc remote list` shows, read from
    `dvc config --list` (one `key=value` a line; `remote list` wraps long URLs into extra lines).
    Only names are kept, never URLs, which may hold credentials."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    try:
        done = subprocess.run([sys.executable, "-m", "dvc", "config", "--list"], cwd=root, env=env,
                              capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return [], None
    lines = done.stdout.splitlines() if done.returncode == 0 else []
    names = sorted({m.group(1) for ln in lines if (m := _REMOTE_URL.match(ln))})
    default = next((ln.split("=", 1)[1].strip() for ln in lines if ln.startswith("core.remote=")), None)
    return names, default if default in names else None


def absent_outputs(root: Path, lock: dict[str, Any]) -> list[str]:
    """The DVC-cached outputs when not one of them is in the workspace; else an empty list."""
    cached = cached_outputs(root, lock)
    if not cached or any(os.path.lexists(root / o) for o in cached):
        return []
    return cached


def hint(root: Path, absent: list[str], folded: int) -> str:
    """The one line: what is missing, what to run, and how many problems it stands for."""
    remotes, default = dvc_remotes(root)
    shown = ", ".join(absent[:3]) + (f" and {len(absent) - 3} more" if len(absent) > 3 else "")
    if default or len(remotes) == 1:
        todo = f"run `dvc pull` to fetch them from the DVC remote '{default or remotes[0]}' (or `make repro` to rebuild them)"
    elif remotes:
        todo = (f"run `dvc pull -r NAME` to fetch them from one of the DVC remotes ({', '.join(remotes)}; none "
                "is the default) (or `make repro` to rebuild them)")
    else:
        todo = "run `make repro` to rebuild them (no DVC remote is configured to `dvc pull` them from)"
    return (f"None of the {len(absent)} outputs that DVC tracks is here ({shown}; a fresh clone?): {todo}, "
            f"then run `pathtrail verify` again. {folded} problem{'s' if folded != 1 else ''} about these "
            f"missing files {'are' if folded != 1 else 'is'} not listed below.")


def about_absent(problem: str, absent: list[str]) -> bool:
    """Whether a problem says that one of `absent` (or a file inside one) is missing."""
    if not any(w in problem for w in MISSING_WORDS):
        return False
    tokens = [t.rstrip(".") for t in _TOKEN.findall(problem)]
    return any(t == a or t.startswith(a.rstrip("/") + "/") for t in tokens for a in absent)
