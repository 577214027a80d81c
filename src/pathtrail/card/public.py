"""What a published card may say about local paths: nothing absolute, nothing outside the repository.

`public_path("/home/ann/repo/data/x.csv", "/home/ann/repo")` is `data/x.csv`; a path outside the
repository becomes `<outside the repository>/x.csv`; `~/…` likewise. `redact(tree, root)` applies
that to every string value (and mapping key) that is an absolute path, so a card's params, manifests
and inputs never name a user's home, a mount point or a hospital share.
"""

from __future__ import annotations

import os
import re
from pathlib import PurePosixPath
from typing import Any

OUTSIDE = "<outside the repository>"
_ABSOLUTE = re.compile(r"^(/|~[/\\]|~$|[A-Za-z]:[\\/]|\\\\)")


def is_absolute(text: str) -> bool:
    return bool(_ABSOLUTE.match(text))


def public_path(text: str, root: str) -> str:
    if not is_absolute(text):
        return text
    norm = os.path.normpath(os.path.expanduser(text)) if not re.match(r"^[A-Za-z]:|\\\\", text) else text
    base = os.path.normpath(root)
    if norm == base:
        return "."
    if norm.startswith(base.rstrip("/") + "/"):
        return PurePosixPath(os.path.relpath(norm, base)).as_posix()
    name = re.split(r"[\\/]", text.rstrip("/\\"))[-1] or "…"
    return f"{OUTSIDE}/{name}"


def redact(tree: Any, root: str) -> Any:
    if isinstance(tree, dict):
        return {(public_path(k, root) if isinstance(k, str) else k): redact(v, root) for k, v in tree.items()}
    if isinstance(tree, list):
        return [redact(v, root) for v in tree]
    if isinstance(tree, str):
        return public_path(tree, root)
    return tree
