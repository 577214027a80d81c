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
