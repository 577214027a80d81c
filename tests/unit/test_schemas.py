"""The pandera models: every failure in one lazy pass, with the rule ids validation relies on."""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
import pytest

from pathtrail.core.errors import PathTrailError
from pathtrail.data.schemas import (
    is_safe_path,
    label_tokens,
    manifest_schema,
    require_valid,
    validated_schema,
)

CLASSES = ("benign", "tumour")
SHA = "ab" * 32


def failures(schema: pa.DataFrameSchema, frame: pd.DataFrame) -> set[tuple]:
    with pytest.raises(pa.errors.SchemaErrors) as info:
        schema.validate(frame, lazy=True)
    cases = info.value.failure_cases
    return {(c.column, c.check, None if pd.isna(c.index) else int(c.index))
            for c in cases.itertuples(index=False)}


def manifest(**columns) -> pd.DataFrame:
    base = {"path": ["a/1.png", "a/2.png", "b/3.png"], "label": ["0", "tumour", "benign"],
            "patient_id": ["p1", "p1", "p2"], "slide_id": ["s1", "s1", "s2"],
            "site": ["x", "x", "y"]}
    base.update(columns)
    frame = pd.DataFrame(base, dtype="str")
    frame.index = pd.Index([2, 3, 4], name="line")
    return frame


def test_valid_manifest_with_extra_columns_passes():
    frame = manifest(scanner=["A", "B", None])
    assert manifest_schema(CLASSES).validate(frame, lazy=True) is not None


def test_manifest_failures_are_all_reported_with_lines():
    frame = manifest(path=["/abs.png", "a/../../x.png", "a\\b.png"], label=["2", "cat", None],
                     patient_id=["p1", None, "p2"])
    got = failures(manifest_schema(CLASSES), frame)
    assert got == {("path", "path_absolute", 2), ("path", "path_parent", 3),
                   ("path", "path_backslash", 4), ("label", "label_domain", 2),
                   ("label", "label_domain", 3), ("label", "not_nullable", 4),
                   ("patient_id", "not_nullable", 3)}


def test_manifest_duplicates_and_missing_columns():
    frame = manifest(path=["a.png", "b.png", "a.png"]).drop(columns=["site"])
    got = failures(manifest_schema(CLASSES), frame)
    assert ("path", "field_uniqueness", 2) in got and ("path", "field_uniqueness", 4) in got
    assert ("manifest", "column_in_dataframe", None) in got


@pytest.mark.parametrize("path, safe", [
    ("a/b.png", True), ("a..b.png", True), ("..a/b.png", True), ("/a.png", False),
    ("../a.png", False), ("a/../b.png", False), ("a/..", False), ("C:/a.png", False),
    ("a\\b.png", False), (None, False),
])
def test_is_safe_path(path, safe):
    assert bool(is_safe_path(pd.Series([path], dtype="str")).iloc[0]) is safe


def test_label_tokens_accept_index_or_name_and_names_win():
    assert label_tokens(["benign", "tumour"]) == {"0": 0, "1": 1, "benign": 0, "tumour": 1}
    assert label_tokens(["1", "0"]) == {"0": 1, "1": 0}


def validated(**columns) -> pd.DataFrame:
    base = {"path": ["a.png", "b.png"], "label": [0, 1], "patient_id": ["p1", "p2"],
            "slide_id": ["s1", "s2"], "site": ["x", "x"], "sha256": [SHA, SHA.upper()]}
    base.update(columns)
    return pd.DataFrame(base).astype({c: "str" for c in base if c != "label"})


def test_validated_schema_is_strict_and_ordered():
    schema = validated_schema(2, ["scanner"])
    table = validated(sha256=[SHA, SHA], scanner=["A", None])
    schema.validate(table)
    got = failures(schema, validated(label=[0, 2], scanner=["A", "B"]))
    assert ("label", "label_domain", 1) in got
    assert ("sha256", "str_matches('^[0-9a-f]{64}$')", 1) in got
    got = failures(validated_schema(2), validated(sha256=[SHA, SHA], other=["?", "?"]))
    assert ("validated_table", "column_in_schema", None) in got
    shuffled = validated(sha256=[SHA, SHA])[["label", "path", "patient_id", "slide_id", "site",
                                              "sha256"]]
    assert ("validated_table", "column_ordered", None) in failures(validated_schema(2), shuffled)


def test_require_valid_names_csv_lines():
    with pytest.raises(PathTrailError) as info:
        require_valid(validated_schema(2), validated(sha256=[SHA, "nope"]), "t.csv")
    text = str(info.value)
    assert "t.csv" in text and "line 3, column 'sha256'" in text and "fix:" in text
