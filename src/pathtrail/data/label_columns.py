"""The 0/1 label columns of multi-label manifests (`data.label_mode: multilabel`).

`validate` checks them with a pandera schema built from `data.label_columns` (lazy: every bad cell
at once), next to the manifest schema: a listed column missing from the header, an empty cell or a
value other than 0 / 1 is an error naming the line, the column and the fix; a label without a
positive (or without a negative) patch in a cohort is a warning (its metrics are undefined there).
The validated tables keep the columns (extra columns are kept); `label_matrix` reads them back
as the (N, L) array training and evaluation use, checked again (a hand-edited table fails there).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa

from pathtrail.core.errors import PathTrailError
from pathtrail.core.text import printable

BINARY_VALUES = ("0", "1")


def label_schema(columns: Sequence[str]) -> pa.DataFrameSchema:
    """Each label column: present, no empty cell, values "0" or "1" (cells are read as text)."""
    return pa.DataFrameSchema(
        {name: pa.Column(str, nullable=False, required=True,
                         checks=[pa.Check.isin(BINARY_VALUES, error="label_binary")])
         for name in columns},
        name="label_columns", strict=False, coerce=False)


def label_column_problems(frame: pd.DataFrame, scope: Any, columns: Sequence[str]) -> None:
    """Add to `scope` (a `pathtrail.data.manifests.Scope`) every problem of the label columns."""
    if not columns:
        return
    missing = [c for c in columns if c not in frame.columns]
    for name in missing:
        close = difflib.get_close_matches(name, [str(c) for c in frame.columns], 1)
        hint = (f"rename column '{printable(close[0])}' to '{printable(name)}'" if close else
                "add one 0/1 column per label of data.label_columns to the manifest, or correct "
                "data.label_columns")
        scope.add("error", "label_column_missing", f"label column '{printable(name)}' (data.label_columns) "
                  "is missing", hint, line=1, column=name)
    present = [c for c in columns if c in frame.columns]
    try:
        label_schema(present).validate(frame[present], lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        paths = frame["path"].to_dict() if "path" in frame else {}
        for column, check, value, index in zip(cases["column"], cases["check"], cases["failure_case"],
                                               cases["index"], strict=True):
            line = index if pd.notna(index) else None  # the manifest frame is indexed by CSV line
            shown = "empty" if value is None or (isinstance(value, float) and np.isnan(value)) \
                else f"'{printable(str(value))}'"
            scope.add("error", "label_not_binary", f"label column '{printable(str(column))}' holds "
                      f"{shown}, not 0 or 1", "write 1 where the finding is present and 0 where it "
                      "is absent, on every row", line=line, column=str(column),
                      file=paths.get(index) if pd.notna(index) else None)
        return
    for name in present:
        values = set(frame[name].dropna().unique())
        if len(frame) and len(values) < 2:
            scope.add("warning", "label_one_value", f"label '{printable(name)}' is "
                      f"{next(iter(values), '?')} on every row of this cohort", "its AUROC and AUPRC are "
                      "undefined here; add patches of the other value if you can", column=name)


def labels_report(columns: Sequence[str]) -> dict[str, Any]:
    """The validation report's record of the label columns (nothing in binary mode)."""
    return {"label_columns": list(columns)} if columns else {}


def label_matrix(table: pd.DataFrame, columns: Sequence[str], what: str = "table") -> np.ndarray:
    """The (N, L) float32 0/1 label array of a validated / split table, checked."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise PathTrailError(f"{what} has no label column(s) {', '.join(map(repr, missing))} of "
                             "data.label_columns: rerun `dvc repro` from validate with these params")
    values = table[list(columns)].to_numpy()
    try:
        matrix = values.astype(np.float64)
    except (TypeError, ValueError):
        matrix = np.full(values.shape, np.nan)
    if not np.isin(matrix, (0.0, 1.0)).all():
        raise PathTrailError(f"{what}: the label columns hold values other than 0 and 1; regenerate it "
                             "with the validate stage instead of editing it")
    return matrix.astype(np.float32)
