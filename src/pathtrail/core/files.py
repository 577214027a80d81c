"""Atomic, deterministic writes and the readers of what they wrote.

Every artifact goes through these helpers so that a crash never leaves a half-written file behind
and so that the same content always produces the same bytes (`pathtrail.core.hashing`'s canonical
JSON, fixed line endings).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from pathtrail.core.hashing import canonical_json


def write_bytes(data: bytes, path: str | Path) -> Path:
    """Write via a temporary file in the same folder, fsync, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_text(text: str, path: str | Path) -> Path:
    return write_bytes(text.encode("utf-8"), path)


def write_json(obj: Any, path: str | Path) -> Path:
    return write_text(canonical_json(obj), path)


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    return write_text(df.to_csv(index=False, lineterminator="\n"), path)


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a table this pipeline wrote (ids stay strings)."""
    return pd.read_csv(path, dtype={"patient_id": str, "slide_id": str, "site": str, "path": str})


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_outputs(*paths: str | Path) -> None:
    """Remove outputs of a failed run so that nothing partial is left behind."""
    for p in map(Path, paths):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()


def repo_path(root: str | Path, rel: Any, what: str) -> tuple[Path | None, str | None]:
    """`rel` (a path named by a card, trail or signature) resolved inside `root`, or a problem.

    Refused, with a sentence saying why: a non-string, an absolute path, a `..` escape or a
    symlink leading outside the repository, and anything that exists but is neither a regular
    file nor a folder (FIFOs, devices, sockets), so a reviewer's tool never blocks on or reads them.
    A path that does not exist is returned (callers report it as missing)."""
    if not isinstance(rel, str) or not rel or "\0" in rel:
        return None, f"{what}: {rel!r} is not a file path"
    if Path(rel).is_absolute():
        return None, f"{what}: {rel!r} is an absolute path; only paths inside the repository are read"
    base = Path(root).resolve()
    try:
        target = (base / rel).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        return None, f"{what}: {rel!r} cannot be resolved ({exc})"
    if target != base and base not in target.parents:
        return None, f"{what}: {rel!r} leads outside the repository; it was not read"
    if target.exists() and not (target.is_file() or target.is_dir()):
        return None, f"{what}: {rel!r} is not a regular file or folder; it was not read"
    return target, None
