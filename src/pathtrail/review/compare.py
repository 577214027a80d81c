"""How far apart two versions of an artifact are: the largest |Δ| over the numbers both hold.

`pathtrail reproduce` uses this for artifacts whose hashes differ. `numeric_delta(expected,
reproduced, name)` reads both files by the kind `name` ends in (`.csv`, `.json`, `.pt` state dicts
loaded with `torch.load(weights_only=True)`, `.npy` without pickles) and walks them side by side:
numbers (and array elements, as float64) give `max_abs`, anything else that differs (a text cell,
a key, a shape) is listed in `notes`. Any other kind of file has no Δ. `folder_changes` does the same
for two folders given as {relative path: hash} maps. Tested in tests/unit/test_reproduce.py against
hand-computed differences.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

NUMERIC_SUFFIXES = (".csv", ".json", ".pt", ".npy")
MAX_NOTES = 3


@dataclass(frozen=True)
class Delta:
    """`max_abs`: the largest |Δ| over numeric values found in both (None: none compared);
    `notes`: the first few non-numeric differences; `n_notes`: how many there were in all."""

    max_abs: float | None = None
    notes: tuple[str, ...] = ()
    n_notes: int = 0

    def describe(self) -> str:
        parts = [] if self.max_abs is None else [f"max |Δ| {self.max_abs:.3g}"]
        if self.notes:
            more = f" and {self.n_notes - len(self.notes)} more" if self.n_notes > len(self.notes) else ""
            parts.append("; ".join(self.notes) + more)
        return "; ".join(parts)


@dataclass
class _Walk:
    max_abs: float | None = None
    notes: list[str] = field(default_factory=list)

    def number(self, a: float, b: float, where: str) -> None:
        if math.isnan(a) != math.isnan(b):
            self.notes.append(f"{where}: {a} vs {b}")
        else:
            self.largest(0.0 if a == b or math.isnan(a) else abs(a - b))

    def largest(self, d: float) -> None:
        self.max_abs = d if self.max_abs is None else max(self.max_abs, d)

    def delta(self) -> Delta:
        return Delta(self.max_abs, tuple(self.notes[:MAX_NOTES]), len(self.notes))


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool | np.bool_)


def _walk(a: Any, b: Any, where: str, out: _Walk) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            key = f"{where}.{k}" if where else str(k)
            if k not in a or k not in b:
                out.notes.append(f"{key}: only in the {'reproduced' if k in b else 'expected'} file")
            else:
                _walk(a[k], b[k], key, out)
    elif isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            out.notes.append(f"{where or 'top level'}: {len(a)} vs {len(b)} items")
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            _walk(x, y, f"{where}[{i}]", out)
    elif isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        _arrays(a, b, where, out)
    elif _is_number(a) and _is_number(b):
        out.number(float(a), float(b), where or "value")
    elif a != b or type(a) is not type(b):
        out.notes.append(f"{where or 'value'}: {_short(a)} vs {_short(b)}")


def _arrays(a: np.ndarray, b: np.ndarray, where: str, out: _Walk) -> None:
    name = where or "array"
    if a.shape != b.shape:
        out.notes.append(f"{name}: shape {a.shape} vs {b.shape}")
    elif a.dtype.kind in "biuf" and b.dtype.kind in "biuf":
        if a.size:
            x, y = a.astype(np.float64), b.astype(np.float64)
            nan = np.isnan(x) | np.isnan(y)
            if np.any(np.isnan(x) != np.isnan(y)):
                out.notes.append(f"{name}: NaN in one file only")
            with np.errstate(invalid="ignore"):  # inf - inf where both are the same infinity
                out.largest(float(np.max(np.where(nan | (x == y), 0.0, np.abs(x - y)))))
        else:
            out.largest(0.0)
    elif not np.array_equal(a, b):
        out.notes.append(f"{name}: {a.dtype} values differ")


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def values_delta(expected: Any, reproduced: Any) -> Delta:
    """The Δ between two already-loaded values (JSON-like trees, numpy arrays as leaves)."""
    out = _Walk()
    _walk(expected, reproduced, "", out)
    return out.delta()


def csv_values(text: str) -> list[list[Any]]:
    """Rows of cells, each a float when it reads as one (the header stays text)."""
    rows = []
    for row in csv.reader(io.StringIO(text)):
        cells: list[Any] = []
        for cell in row:
            try:
                cells.append(float(cell))
            except ValueError:
                cells.append(cell)
        rows.append(cells)
    return rows


def _tensor_tree(obj: Any) -> Any:
    """A `torch.load(weights_only=True)` result with every tensor as a numpy array."""
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        return t.to(torch.float64).numpy() if t.is_floating_point() or t.dtype == torch.bfloat16 else t.numpy()
    if isinstance(obj, dict):
        return {k: _tensor_tree(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_tensor_tree(v) for v in obj]
    return obj


def load_values(path: Path, name: str) -> Any:
    """The numeric content of `path`, read as the kind `name` ends in; ValueError when unreadable."""
    suffix = Path(name).suffix.lower()
    try:
        if suffix == ".json":
            return json.loads(path.read_text(encoding="utf-8"))
        if suffix == ".csv":
            return csv_values(path.read_text(encoding="utf-8"))
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".pt":
            import torch

            return _tensor_tree(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:  # any unreadable file (corrupt, pickled, wrong kind) has no Δ
        raise ValueError(f"{name}: not readable as {suffix[1:]} ({type(exc).__name__})") from exc
    raise ValueError(f"{name}: not a numeric file")


def numeric_delta(expected: Path, reproduced: Path, name: str) -> Delta | None:
    """The Δ between two files of the kind `name` ends in; None for a kind without numbers."""
    if Path(name).suffix.lower() not in NUMERIC_SUFFIXES:
        return None
    try:
        return values_delta(load_values(expected, name), load_values(reproduced, name))
    except ValueError as exc:
        return Delta(None, (str(exc),), 1)


@dataclass(frozen=True)
class FolderChanges:
    """Files of two folders compared by hash: which differ, which are only on one side."""

    differ: tuple[str, ...]
    only_expected: tuple[str, ...]
    only_reproduced: tuple[str, ...]
    total: int

    def describe(self) -> str:
        parts = [f"{len(self.differ)} of {self.total} files differ"] if self.differ else []
        if self.only_expected:
            parts.append(f"{len(self.only_expected)} missing (e.g. {self.only_expected[0]})")
        if self.only_reproduced:
            parts.append(f"{len(self.only_reproduced)} new (e.g. {self.only_reproduced[0]})")
        return "; ".join(parts) or "same files"


def folder_changes(expected: dict[str, str], reproduced: dict[str, str]) -> FolderChanges:
    """Compare two {relative path: hash} listings of a folder."""
    both = sorted(set(expected) & set(reproduced))
    return FolderChanges(
        differ=tuple(p for p in both if expected[p] != reproduced[p]),
        only_expected=tuple(sorted(set(expected) - set(reproduced))),
        only_reproduced=tuple(sorted(set(reproduced) - set(expected))),
        total=len(set(expected) | set(reproduced)),
    )


def merge(deltas: list[Delta]) -> Delta:
    """One Δ for several files: the largest |Δ|, their notes together."""
    found = [d.max_abs for d in deltas if d.max_abs is not None]
    notes = [n for d in deltas for n in d.notes]
    return Delta(max(found) if found else None, tuple(notes[:MAX_NOTES]), sum(d.n_notes for d in deltas))
