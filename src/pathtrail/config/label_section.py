"""Label modes (`data.label_mode`): binary (the default), multiclass, multilabel.

- **binary**: one `label` column, `data.classes` names its two values (the demo's benign/tumour).
- **multilabel**: one 0/1 column per label, named in `data.label_columns`; the model has one
  output per label (sigmoid, BCE-with-logits), and evaluate reports each label, then macro and
  micro summaries. The `label` column stays required: the split stratifies on it and the cohort
  minimums count it (for data without one, write whether any finding is present).
- **multiclass**: one `label` column holding one of three or more `data.classes`; softmax and
  class-weighted cross-entropy; the decision is the most probable class; evaluate reports the
  K-class metrics (accuracy, confusion, Brier, top-label ECE) and each class one-vs-rest, with
  macro and micro summaries, as for labels (`evaluation.multilabel`).

The names in `data.label_columns` are user strings: they are escaped wherever they are shown
(card Markdown, CSV headers); what can never be a column name is refused here.
"""

from __future__ import annotations

from typing import Any

from pathtrail.config.loading import ParamsError

LABEL_MODES = ("binary", "multiclass", "multilabel")
# columns a label may not shadow: the manifest's own, and those the validated table and store add
RESERVED_COLUMNS = ("path", "label", "patient_id", "slide_id", "site", "sha256", "shard", "offset")
MAX_LABELS = 64
MAX_NAME_CHARS = 64


def check_labels(data: Any) -> None:
    """The `data.label_mode` / `data.label_columns` rules, each error naming the key and the fix."""
    mode, columns = data.label_mode, list(data.label_columns)
    if mode in ("binary", "multiclass"):
        if columns:
            raise ParamsError(f"'data.label_columns' is {columns!r} but data.label_mode is {mode}: set "
                              "data.label_mode=multilabel, or data.label_columns=[]")
        n = len(data.classes)
        if mode == "binary" and n != 2:
            raise ParamsError(f"'data.classes' lists {n} classes but data.label_mode is binary (two classes): "
                              "set data.label_mode=multiclass for more than two")
        if mode == "multiclass" and n < 3:
            raise ParamsError(f"'data.classes' lists {n} classes but data.label_mode is multiclass: list three "
                              "or more (the `label` column holds one of them), or use data.label_mode=binary")
        if mode == "multiclass":  # they head CSV columns (prob_<class>) and fill the decision column
            _check_names("data.classes", list(data.classes))
        return
    if not columns:
        raise ParamsError("'data.label_columns' is empty but data.label_mode is multilabel: list the "
                          "manifest's 0/1 label columns, e.g. data.label_columns=[necrosis,mitosis]")
    if len(columns) > MAX_LABELS:
        raise ParamsError(f"'data.label_columns' lists {len(columns)} labels; at most {MAX_LABELS}")
    _check_names("data.label_columns", columns)
    for name in columns:
        if name in RESERVED_COLUMNS:
            raise ParamsError(f"'data.label_columns' has {name!r}, a column the pipeline uses itself: "
                              f"rename that manifest column (reserved: {', '.join(RESERVED_COLUMNS)})")
    if len(set(columns)) != len(columns):
        raise ParamsError(f"'data.label_columns' has duplicates: {columns!r}")


def _check_names(key: str, names: list[Any]) -> None:
    for name in names:
        if not isinstance(name, str) or not name or name != name.strip():
            raise ParamsError(f"'{key}' has the name {name!r}: names are non-empty "
                              "strings without spaces around them")
        if len(name) > MAX_NAME_CHARS or any(not ch.isprintable() for ch in name):
            raise ParamsError(f"'{key}' has the name {name!r}: at most {MAX_NAME_CHARS} "
                              "printable characters (no control characters or line breaks)")


def is_multiclass(data: Any) -> bool:
    return getattr(data, "label_mode", "binary") == "multiclass"


def is_multilabel(data: Any) -> bool:
    return getattr(data, "label_mode", "binary") == "multilabel"


def output_names(data: Any) -> list[str]:
    """What the model's outputs mean: the label columns (multilabel) or the classes (binary)."""
    return list(data.label_columns) if is_multilabel(data) else list(data.classes)


def label_columns_of(data: Any) -> tuple[str, ...]:
    """The manifest columns validate checks as 0/1 labels (none unless multilabel)."""
    return tuple(data.label_columns) if is_multilabel(data) else ()


def without_default_labels(data: Any) -> Any:
    """The `data` params section as hashes see it: the label keys left out at their defaults
    (binary, no columns), so a binary run hashes as it did before label modes existed."""
    if isinstance(data, dict) and data.get("label_mode", "binary") == "binary" \
            and not data.get("label_columns"):
        return {k: v for k, v in data.items() if k not in ("label_mode", "label_columns")}
    return data
