"""Patient-grouped, label-stratified train/val/test split of a validated table.

All patches of a patient land in one split (patches of one patient are not independent: a split by
patch leaks the patient's tissue, stain and scanner into the test set). The unit is in fact the
connected component of rows linked by a shared patient_id, slide_id or sha256 (`split_groups`): a
slide listed under two patients, or one image filed under two patients, puts both patients in one
split, so no patient, slide or image content crosses splits (`crossing_values` counts those that
do, from the split tables themselves; `require_disjoint` refuses a split where any does). A group
is named by its smallest patient_id, so without such links the groups are the patients and the
split is the one a patient-only grouping gives. Within that constraint the
class proportions are kept as equal as possible with scikit-learn's `StratifiedGroupKFold`, in two
steps: the test split is one of k_test = round(1 / test_fraction) folds of all patients, the val
split one of k_val = round((1 - test_fraction) / val_fraction) folds of the rest. The fractions are
therefore met to the nearest 1/k (0.2 and 0.2 exactly, in patients); the achieved ones are recorded.
The folds' shuffling is seeded from (seed, step), so a split depends only on the table's content,
the seed and the fractions, not on row order.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from pathtrail.core.errors import PathTrailError

SPLITS = ("train", "val", "test")
GROUP_KEYS = ("patient_id", "slide_id", "sha256")  # rows sharing any of these share a split
_TEST_STEP, _VAL_STEP = 0, 1  # purpose tags of the keyed fold seeds


class SplitError(PathTrailError, ValueError):
    """The table cannot be split as asked; the message says why and what to change."""


def split_by_patient(table: pd.DataFrame, val_fraction: float, test_fraction: float,
                     seed: int, classes: Sequence[str] | None = None) -> dict[str, pd.DataFrame]:
    """{"train", "val", "test"} -> rows of `table` (same columns, sorted by path).

    `table` needs the columns path, label (class index) and patient_id; slide_id and sha256, where
    present, link rows too (see `split_groups`). Raises SplitError when a class has patches from
    fewer than three patient groups, or when the folds leave a split without a class or empty.
    `classes` (names by index) only makes the messages readable.
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise SplitError(f"fractions val={val_fraction}, test={test_fraction} must be in (0, 1) "
                         "and sum to less than 1")
    table = table.sort_values("path", ignore_index=True)
    names = _namer(classes)
    groups = split_groups(table)
    _require_patients_per_class(table, groups, names)
    k_test = max(2, round(1 / test_fraction))
    k_val = max(2, round((1 - test_fraction) / val_fraction))
    (rest, rest_groups), (test, _) = _one_fold(table, groups, k_test,
                                               _fold_seed(seed, _TEST_STEP), "test")
    (train, _), (val, _) = _one_fold(rest, rest_groups, k_val, _fold_seed(seed, _VAL_STEP), "val")
    splits = {"train": train, "val": val, "test": test}
    for name, part in splits.items():
        missing = sorted(set(table["label"]) - set(part["label"]))
        if missing:
            raise SplitError(
                f"the {name} split gets no patient with class "
                f"{', '.join(names(i) for i in missing)}"
                f" (seed {seed}, val_fraction {val_fraction}, test_fraction {test_fraction}); add "
                "patients of that class, or change data.split.seed or the fractions")
    return {name: part.sort_values("path", ignore_index=True) for name, part in splits.items()}


def _fold_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


Part = tuple[pd.DataFrame, pd.Series]  # rows and their group labels, aligned


def _one_fold(table: pd.DataFrame, groups: pd.Series, k: int, seed: int,
              what: str) -> tuple[Part, Part]:
    """(rest, fold 0) of a k-fold group-wise, label-stratified partition of `table`."""
    n_groups = groups.nunique()
    if n_groups < k:
        raise SplitError(f"only {n_groups} {_unit(table, groups)} are left for the {what} split, "
                         f"which needs at least {k} (1 / its fraction); add patients or raise its "
                         "fraction")
    folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "least populated class has fewer members than n_splits"
        warnings.simplefilter("ignore", UserWarning)
        keep, fold = next(folds.split(np.zeros(len(table)), table["label"].to_numpy(),
                                      groups.to_numpy()))

    def part(rows: np.ndarray) -> Part:
        return table.iloc[rows].reset_index(drop=True), groups.iloc[rows].reset_index(drop=True)

    return part(keep), part(fold)


def _unit(table: pd.DataFrame, groups: pd.Series) -> str:
    """What a group is, in messages: patients, unless some groups hold several."""
    if groups.nunique() == table["patient_id"].nunique():
        return "patients"
    return "patient groups (patients linked by a shared slide or identical image count as one)"


def _require_patients_per_class(table: pd.DataFrame, groups: pd.Series, names: Any) -> None:
    per_class = groups.groupby(table["label"].to_numpy()).nunique()
    short = {int(label): int(n) for label, n in per_class.items() if n < len(SPLITS)}
    if short:
        listed = ", ".join(f"'{names(label)}' ({n})" for label, n in sorted(short.items()))
        raise SplitError(f"too few patients per class for a patient-level train/val/test split: "
                         f"{listed}; each class needs patches from at least {len(SPLITS)} "
                         f"{_unit(table, groups)} (one per split). Add patients of these classes.")


def split_groups(table: pd.DataFrame, keys: Sequence[str] = GROUP_KEYS) -> pd.Series:
    """Per row of `table`, its group: rows sharing a value of any of `keys` are one group.

    The rows of one patient are always one group; each other key present in `table` (empty cells
    link nothing) joins the patients that share one of its values. The groups are the connected
    components (union-find over patients, only over the values that link two, so it stays fast
    for 10^5 rows); each is named by its smallest patient_id, so the names, and hence the split,
    do not depend on row order.
    """
    patients = table["patient_id"].astype(str)
    parent = {p: p for p in patients.unique()}

    def root(p: str) -> str:
        while parent[p] != p:
            parent[p] = parent[parent[p]]  # path halving
            p = parent[p]
        return p

    for key in (k for k in keys if k in table and k != "patient_id"):
        pairs = pd.DataFrame({"value": table[key], "patient": patients}).dropna().drop_duplicates()
        shared = pairs[pairs.duplicated("value", keep=False)]  # values under two or more patients
        for _, members in shared.groupby("value", sort=False)["patient"]:
            first, *others = members
            for other in others:
                a, b = root(first), root(other)
                parent[max(a, b)] = min(a, b)  # a root is its component's smallest patient_id
    roots = {p: root(p) for p in parent}
    return pd.Series(patients.map(roots).to_numpy(), index=table.index, name="group")


def crossing_values(splits: dict[str, pd.DataFrame],
                    keys: Sequence[str] = GROUP_KEYS) -> dict[str, list[str]]:
    """For each key, the values (sorted) found in more than one split: all empty when disjoint.

    Computed from the split tables alone, so it checks the result, not the grouping that made it.
    A key missing from every table gets an empty list.
    """
    out = {}
    for key in keys:
        seen = pd.Series([v for part in splits.values() if key in part
                          for v in part[key].dropna().astype(str).unique()], dtype="str")
        counts = seen.value_counts()
        out[key] = sorted(counts.index[counts > 1])
    return out


def require_disjoint(splits: dict[str, pd.DataFrame]) -> dict[str, int]:
    """{key: 0} for every key of `GROUP_KEYS`; SplitError naming values that cross splits."""
    crossing = crossing_values(splits)
    if any(crossing.values()):
        listed = "; ".join(f"{len(v)} {key} value(s), e.g. '{v[0]}'"
                           for key, v in crossing.items() if v)
        raise SplitError(f"the split is not disjoint: {listed} occur in more than one split; "
                         "this is a defect of the split, please report it")
    return {key: len(v) for key, v in crossing.items()}


def _namer(classes: Sequence[str] | None) -> Any:
    known = list(classes or [])
    return lambda i: known[int(i)] if 0 <= int(i) < len(known) else str(i)


def grouping_summary(table: pd.DataFrame, splits: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """What the split grouped by, and the proof that it held: per key, the number of its values
    found in more than one split (`crossing_values` on the split tables; 0 each for a valid split).
    """
    groups = split_groups(table)
    patients = table["patient_id"].groupby(groups.to_numpy()).nunique()
    return {"keys": list(GROUP_KEYS), "groups": int(groups.nunique()),
            "groups_with_several_patients": int((patients > 1).sum()),
            "crossing_splits": {k: len(v) for k, v in crossing_values(splits).items()}}


def split_summary(splits: dict[str, pd.DataFrame], classes: Sequence[str]) -> dict[str, Any]:
    """Counts of patches, patients and slides per split, per class and per site, and achieved fractions."""
    total_patches = sum(len(t) for t in splits.values())
    total_patients = sum(t["patient_id"].nunique() for t in splits.values())
    out = {}
    for name, part in splits.items():
        by_class = {c: {"patches": int((part["label"] == i).sum()),
                        "patients": int(part.loc[part["label"] == i, "patient_id"].nunique())}
                    for i, c in enumerate(classes)}
        out[name] = {
            "patches": len(part),
            "patients": int(part["patient_id"].nunique()),
            "slides": int(part["slide_id"].nunique()) if "slide_id" in part else None,
            "fraction_of_patches": round(len(part) / total_patches, 4) if total_patches else None,
            "fraction_of_patients": round(part["patient_id"].nunique() / total_patients, 4)
            if total_patients else None,
            "classes": by_class,
        }
        if "site" in part:
            out[name]["sites"] = {str(site): {"patches": len(rows), "patients": int(rows["patient_id"].nunique())}
                                  for site, rows in part.groupby("site", sort=True)}
    return out
