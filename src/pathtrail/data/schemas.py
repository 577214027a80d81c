"""pandera models of the data tables: the manifests users write and the validated tables we write.

Both are checked with `lazy=True` so that every problem is reported at once. Every custom check's
`error` is a stable rule id (e.g. ``path_absolute``): `pathtrail.data.validation` turns failures into
messages with the CSV line, column, rule and a hint. Checks are vectorized (one call per table, not
per row), so validating 20,000 rows costs milliseconds.

The label domain depends on `data.classes`, so the label check is added by
`manifest_schema(classes)` and `validated_schema(n_classes, extra_columns)`: validate with those,
not with the bare models.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from pathtrail.core.errors import PathTrailError

REQUIRED_COLUMNS = ("path", "label", "patient_id", "slide_id", "site")
VALIDATED_COLUMNS = (*REQUIRED_COLUMNS, "sha256")
SHA256_PATTERN = r"^[0-9a-f]{64}$"


def is_absolute(path: pd.Series) -> pd.Series:
    r"""POSIX root, Windows drive (`C:`) or UNC/backslash root (`\\server`)."""
    return path.str.match(r"^(?:/|\\|[A-Za-z]:)").astype(bool)


def has_parent_ref(path: pd.Series) -> pd.Series:
    """A `..` component, which could climb out of the data root."""
    return path.str.contains(r"(?:^|[/\\])\.\.(?:[/\\]|$)", regex=True).astype(bool)


def has_backslash(path: pd.Series) -> pd.Series:
    return path.str.contains("\\", regex=False).astype(bool)


def is_safe_path(path: pd.Series) -> pd.Series:
    """Non-null relative paths that stay below the root textually (symlinks are checked on disk)."""
    text = path.fillna("/")
    return ~(is_absolute(text) | has_parent_ref(text) | has_backslash(text))


class _RelativePaths(pa.DataFrameModel):
    """The path rules both tables share: relative, and no '..' (subclasses declare `path`)."""

    path: Series[str]

    @pa.check("path", error="path_absolute")
    def _relative(cls, path: Series[str]) -> Series[bool]:
        return ~is_absolute(path)

    @pa.check("path", error="path_parent")
    def _no_parent(cls, path: Series[str]) -> Series[bool]:
        return ~has_parent_ref(path)


class ManifestModel(_RelativePaths):
    """A cohort manifest as read: every cell a whitespace-stripped string, empty cells null.

    Not strict: extra columns (scanner, stain date, ...) are allowed, kept and reported.
    """

    path: Series[str] = pa.Field(nullable=False, unique=True)
    label: Series[str] = pa.Field(nullable=False)
    patient_id: Series[str] = pa.Field(nullable=False)
    slide_id: Series[str] = pa.Field(nullable=False)
    site: Series[str] = pa.Field(nullable=False)

    class Config:
        name = "manifest"
        strict = False
        coerce = False

    @pa.check("path", error="path_backslash")
    def _forward_slashes(cls, path: Series[str]) -> Series[bool]:
        return ~has_backslash(path)


class ValidatedModel(_RelativePaths):
    """A validated table (`data/validated/*.csv`, and the split tables, which share its columns).

    path is relative to the data root; label is the class index; sha256 is the file's content hash.
    Extra manifest columns follow these six (see `validated_schema`).
    """

    path: Series[str] = pa.Field(nullable=False, unique=True)
    label: Series[int] = pa.Field(nullable=False, ge=0)
    patient_id: Series[str] = pa.Field(nullable=False, str_length={"min_value": 1})
    slide_id: Series[str] = pa.Field(nullable=False, str_length={"min_value": 1})
    site: Series[str] = pa.Field(nullable=False, str_length={"min_value": 1})
    sha256: Series[str] = pa.Field(nullable=False, str_matches=SHA256_PATTERN)

    class Config:
        name = "validated_table"
        strict = True
        ordered = True
        coerce = False


def label_tokens(classes: Sequence[str]) -> dict[str, int]:
    """Accepted label spellings -> class index: the index as text, or the class name.

    A class name wins over an index spelled the same way (only matters for classes named by digits).
    """
    tokens = {str(i): i for i in range(len(classes))}
    tokens.update({name: i for i, name in enumerate(classes)})
    return tokens


def manifest_schema(classes: Sequence[str]) -> pa.DataFrameSchema:
    """`ManifestModel` with the label domain of these classes."""
    schema = ManifestModel.to_schema()
    allowed = sorted(label_tokens(classes))
    return schema.update_column("label", checks=[pa.Check.isin(allowed, error="label_domain")])


def validated_schema(n_classes: int, extra_columns: Sequence[str] = ()) -> pa.DataFrameSchema:
    """`ValidatedModel` for `n_classes` classes (strict, ordered), these extra columns last."""
    schema = ValidatedModel.to_schema()
    label = schema.columns["label"]
    schema = schema.update_column(
        "label", checks=[*label.checks, pa.Check.lt(n_classes, error="label_domain")])
    extras = {name: pa.Column(None, nullable=True, required=True) for name in extra_columns}
    return schema.add_columns(extras) if extras else schema


def require_valid(schema: pa.DataFrameSchema, table: pd.DataFrame, what: str,
                  limit: int = 50) -> pd.DataFrame:
    """`schema.validate(table, lazy=True)`, or a PathTrailError listing the failures by CSV line.

    For tables read from a CSV with a default index: line = index + 2 (the header is line 1).
    """
    try:
        return schema.validate(table, lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
    lines = []
    for case in cases.head(limit).itertuples(index=False):
        where = f"line {int(case.index) + 2}, " if pd.notna(case.index) else ""
        lines.append(f"  {where}column '{case.column}': fails {case.check} "
                     f"(value {case.failure_case!r})")
    more = [f"  ... and {len(cases) - limit} more"] if len(cases) > limit else []
    raise PathTrailError("\n".join([f"{what}: not a valid {schema.name} ({len(cases)} problems):",
                                    *lines, *more, ("fix: regenerate it with the validate stage "
                                    "(it writes this table) instead of editing it")]))
